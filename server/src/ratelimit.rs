//! Slowing down password guessing: enrollment attempts are counted per user name and per
//! source address; after a few failures, further attempts from that user name or address are
//! refused at once, without a password check, for a delay that doubles with each failure.
//!
//! An attempt counts as a failure from the moment it starts ([`FailureLimiter::begin`]) and is
//! taken back only when its password proves right ([`FailureLimiter::succeeded`]), so guesses
//! sent at the same moment cannot all pass before the first one fails. Refusing without
//! checking also keeps a flood of guesses from tying up the argon2 pool.
//!
//! Users and addresses are kept apart. Only user names that exist in the user store are
//! counted (an unknown name has no account to protect), so that table is bounded by the user
//! store and nobody's guesses can push a real user's record out. The address table is bounded;
//! when full, the address seen longest ago is forgotten. Time is passed in, so tests need no
//! sleeps.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use gshare_proto::UserName;

/// Failures allowed before delays begin.
pub const FREE_FAILURES: u32 = 3;
/// The first delay; each further failure doubles it.
pub const FIRST_DELAY: Duration = Duration::from_secs(5);
/// The longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// Entries are forgotten this long after their last failure.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Who is being limited.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A user name present in the user store.
    User(UserName),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
}

impl Entry {
    /// Until when attempts are refused, if they are.
    fn blocked_until(&self) -> Option<Instant> {
        let doublings = self.failures.checked_sub(FREE_FAILURES)?.min(16);
        Some(self.last_failure + FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY))
    }
}

/// Failure counts and delays.
#[derive(Debug)]
pub struct FailureLimiter {
    users: HashMap<UserName, Entry>,
    addresses: HashMap<IpAddr, Entry>,
    /// Most addresses remembered.
    capacity: usize,
}

impl FailureLimiter {
    pub fn new(capacity: usize) -> Self {
        Self { users: HashMap::new(), addresses: HashMap::new(), capacity }
    }

    fn entry(&self, subject: &Subject) -> Option<&Entry> {
        match subject {
            Subject::User(user) => self.users.get(user),
            Subject::Address(address) => self.addresses.get(address),
        }
    }

    /// `Err(wait)` if an attempt by any of `subjects` must be refused now.
    pub fn check(&self, subjects: &[Subject], now: Instant) -> Result<(), Duration> {
        let wait = subjects
            .iter()
            .filter_map(|subject| self.entry(subject)?.blocked_until())
            .filter(|&until| until > now)
            .map(|until| until - now)
            .max();
        wait.map_or(Ok(()), Err)
    }

    /// Starts an attempt: refused with the time to wait, or counted as a failure until
    /// [`FailureLimiter::succeeded`] takes it back. Check and count are one step, so attempts
    /// made at the same moment are counted one after another.
    pub fn begin(&mut self, subjects: &[Subject], now: Instant) -> Result<(), Duration> {
        self.check(subjects, now)?;
        self.record_failure(subjects, now);
        Ok(())
    }

    /// The attempt begun with `subjects` proved right: it is not a failure after all, and the
    /// user's earlier failures are forgiven (the address's are not: one right password among
    /// many guesses from one address must not wipe the record of the guesses).
    pub fn succeeded(&mut self, subjects: &[Subject]) {
        self.take_back(subjects);
        for subject in subjects {
            if let Subject::User(user) = subject {
                self.users.remove(user);
            }
        }
    }

    /// The attempt begun with `subjects` never reached a password check (the server was
    /// busy): it counts for nothing.
    pub fn take_back(&mut self, subjects: &[Subject]) {
        fn uncount<K: std::hash::Hash + Eq>(table: &mut HashMap<K, Entry>, key: &K) {
            if let Some(entry) = table.get_mut(key) {
                entry.failures = entry.failures.saturating_sub(1);
                if entry.failures == 0 {
                    table.remove(key);
                }
            }
        }
        for subject in subjects {
            match subject {
                Subject::User(user) => uncount(&mut self.users, user),
                Subject::Address(address) => uncount(&mut self.addresses, address),
            }
        }
    }

    pub fn record_failure(&mut self, subjects: &[Subject], now: Instant) {
        let fresh = |entry: &mut Entry| now.saturating_duration_since(entry.last_failure) < FORGET_AFTER;
        self.users.retain(|_, entry| fresh(entry));
        self.addresses.retain(|_, entry| fresh(entry));
        for subject in subjects {
            let entry = match subject {
                Subject::User(user) => {
                    self.users.entry(user.clone()).or_insert(Entry { failures: 0, last_failure: now })
                }
                Subject::Address(address) => {
                    if !self.addresses.contains_key(address) && self.addresses.len() >= self.capacity {
                        let oldest = self.addresses.iter().min_by_key(|(_, entry)| entry.last_failure).map(|(a, _)| *a);
                        if let Some(oldest) = oldest {
                            self.addresses.remove(&oldest);
                        }
                    }
                    self.addresses.entry(*address).or_insert(Entry { failures: 0, last_failure: now })
                }
            };
            entry.failures = entry.failures.saturating_add(1);
            entry.last_failure = now;
        }
    }
}
/// Senders remembered; when full, the one heard from longest ago is forgotten.
pub const SENDER_CAPACITY: usize = 4096;

/// A token bucket per sender address, for multicast requests: checked before any expensive
/// work (a database look-up, a signature check), so that one host flooding the group with
/// requests spends only its own share, and every other member's joins go through.
#[derive(Debug)]
pub struct SenderLimiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
    rate: f64,
    burst: f64,
    capacity: usize,
}

impl SenderLimiter {
    pub fn new(rate: f64, burst: f64, capacity: usize) -> Self {
        Self { buckets: HashMap::new(), rate, burst, capacity }
    }

    /// Whether a request from `sender` at `now` is within its rate; counts it if so.
    pub fn allow(&mut self, sender: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&sender) && self.buckets.len() >= self.capacity {
            let oldest = self.buckets.iter().min_by_key(|(_, (_, seen))| *seen).map(|(address, _)| *address);
            if let Some(oldest) = oldest {
                self.buckets.remove(&oldest);
            }
        }
        let (tokens, seen) = self.buckets.entry(sender).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*seen).as_secs_f64() * self.rate).min(self.burst);
        *seen = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subjects(user: &str, address: [u8; 4]) -> Vec<Subject> {
        vec![Subject::User(user.parse().unwrap()), Subject::Address(IpAddr::from(address))]
    }

    #[test]
    fn delays_begin_after_a_few_failures_and_double() {
        let mut limiter = FailureLimiter::new(100);
        let start = Instant::now();
        let alice = subjects("alice", [10, 0, 0, 1]);
        for _ in 0..FREE_FAILURES - 1 {
            limiter.record_failure(&alice, start);
            assert_eq!(limiter.check(&alice, start), Ok(()));
        }
        limiter.record_failure(&alice, start);
        assert_eq!(limiter.check(&alice, start), Err(FIRST_DELAY));
        assert_eq!(limiter.check(&alice, start + FIRST_DELAY), Ok(()));
        limiter.record_failure(&alice, start + FIRST_DELAY);
        assert_eq!(limiter.check(&alice, start + FIRST_DELAY), Err(FIRST_DELAY * 2));
        // The same address guessing another user is limited too, and so is the user from elsewhere.
        assert!(limiter.check(&subjects("bob", [10, 0, 0, 1]), start + FIRST_DELAY).is_err());
        assert!(limiter.check(&subjects("alice", [10, 0, 0, 2]), start + FIRST_DELAY).is_err());
        assert_eq!(limiter.check(&subjects("bob", [10, 0, 0, 2]), start + FIRST_DELAY), Ok(()));
    }

    #[test]
    fn password_guesses_are_checked_before_they_are_counted() {
        // Regression: attempts made at once all passed the check before the first failure was
        // recorded. Now each attempt counts from its start: only the free ones get through.
        let mut limiter = FailureLimiter::new(100);
        let now = Instant::now();
        let admitted = (0..200u8).filter(|i| limiter.begin(&subjects("alice", [10, 0, 1, *i]), now).is_ok()).count();
        assert_eq!(admitted, FREE_FAILURES as usize);
    }

    #[test]
    fn a_right_password_takes_back_its_own_count_only() {
        let mut limiter = FailureLimiter::new(100);
        let now = Instant::now();
        let alice = subjects("alice", [10, 0, 0, 1]);
        // Ten people behind one address enroll one after another, all with the right password.
        for i in 0..10u8 {
            let person = subjects(&format!("user{i}"), [10, 0, 0, 1]);
            limiter.begin(&person, now).unwrap();
            limiter.succeeded(&person);
        }
        assert!(limiter.check(&alice, now).is_ok(), "right passwords never add up to a delay");
        for _ in 0..FREE_FAILURES {
            limiter.begin(&alice, now).unwrap();
        }
        assert!(limiter.check(&alice, now).is_err());
        // After the delay, the right password.
        let later = now + FIRST_DELAY;
        limiter.begin(&alice, later).unwrap();
        limiter.succeeded(&alice);
        assert!(limiter.check(&subjects("alice", [10, 0, 0, 9]), later).is_ok(), "the user is forgiven");
        assert!(limiter.check(&subjects("bob", [10, 0, 0, 1]), later).is_err(), "the address keeps its guesses");
    }

    #[test]
    fn one_sender_gets_its_burst_then_its_rate_and_others_are_untouched() {
        let mut limiter = SenderLimiter::new(10.0, 20.0, 100);
        let start = Instant::now();
        let flooder = IpAddr::from([192, 0, 2, 3]);
        let allowed = (0..20_000).filter(|_| limiter.allow(flooder, start)).count();
        assert_eq!(allowed, 20);
        let a_second_later = start + Duration::from_secs(1);
        let allowed = (0..1000).filter(|_| limiter.allow(flooder, a_second_later)).count();
        assert_eq!(allowed, 10);
        assert!(limiter.allow(IpAddr::from([192, 0, 2, 2]), a_second_later), "an honest member is not held up");
        let mut small = SenderLimiter::new(10.0, 20.0, 2);
        for i in 0..10u8 {
            small.allow(IpAddr::from([10, 0, 0, i]), start);
        }
        assert!(small.buckets.len() <= 2, "memory is bounded");
    }

    #[test]
    fn junk_failures_from_many_addresses_evict_a_users_entry() {
        // Regression: failures for unknown names from many addresses filled the one table and
        // pushed out a real user's record, which reset their delay.
        let mut limiter = FailureLimiter::new(4);
        let now = Instant::now();
        let alice = subjects("alice", [10, 0, 0, 1]);
        for _ in 0..FREE_FAILURES {
            limiter.begin(&alice, now).unwrap();
        }
        for i in 0..50u8 {
            // Unknown names are not subjects; only the address counts.
            let _ = limiter.begin(&[Subject::Address(IpAddr::from([10, 1, 0, i]))], now);
        }
        assert!(limiter.addresses.len() <= 4, "the address table stays bounded");
        assert!(limiter.check(&subjects("alice", [10, 9, 9, 9]), now).is_err(), "alice is still limited");
        limiter.record_failure(&alice, now + FORGET_AFTER * 2);
        assert_eq!(limiter.users[&"alice".parse::<UserName>().unwrap()].failures, 1, "old failures are forgotten");
    }
}
