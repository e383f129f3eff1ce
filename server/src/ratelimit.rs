//! Slowing down password guessing: failed enrollments are counted per user name and per source
//! address; after a few, further attempts from that user name or address are refused at once,
//! without a password check, for a delay that doubles with each further failure.
//!
//! Refusing without checking also keeps a flood of guesses from tying up the argon2 pool. The
//! table is bounded; when full, the entry seen longest ago is forgotten. Time is passed in, so
//! tests need no sleeps.

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
    User(UserName),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    blocked_until: Option<Instant>,
    last_failure: Instant,
}

/// Failure counts and delays.
#[derive(Debug)]
pub struct FailureLimiter {
    entries: HashMap<Subject, Entry>,
    capacity: usize,
}

impl FailureLimiter {
    pub fn new(capacity: usize) -> Self {
        Self { entries: HashMap::new(), capacity }
    }

    /// `Err(wait)` if an attempt by any of `subjects` must be refused now.
    pub fn check(&self, subjects: &[Subject], now: Instant) -> Result<(), Duration> {
        let wait = subjects
            .iter()
            .filter_map(|subject| self.entries.get(subject)?.blocked_until)
            .filter(|&until| until > now)
            .map(|until| until - now)
            .max();
        wait.map_or(Ok(()), Err)
    }

    pub fn record_failure(&mut self, subjects: &[Subject], now: Instant) {
        self.entries.retain(|_, entry| now.duration_since(entry.last_failure) < FORGET_AFTER);
        for subject in subjects {
            if !self.entries.contains_key(subject) && self.entries.len() >= self.capacity {
                if let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.last_failure).map(|(s, _)| s.clone()) {
                    self.entries.remove(&oldest);
                }
            }
            let entry = self.entries.entry(subject.clone()).or_insert(Entry {
                failures: 0,
                blocked_until: None,
                last_failure: now,
            });
            entry.failures = entry.failures.saturating_add(1);
            entry.last_failure = now;
            if entry.failures >= FREE_FAILURES {
                let doublings = (entry.failures - FREE_FAILURES).min(16);
                let delay = FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY);
                entry.blocked_until = Some(now + delay);
            }
        }
    }

    /// A success clears the user's count (not the address's: one right password among many
    /// guesses from one address should not wipe the record of the guesses).
    pub fn record_success(&mut self, user: &UserName) {
        self.entries.remove(&Subject::User(user.clone()));
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
    fn success_clears_the_user_and_memory_is_bounded() {
        let mut limiter = FailureLimiter::new(4);
        let now = Instant::now();
        let alice = subjects("alice", [10, 0, 0, 1]);
        for _ in 0..FREE_FAILURES {
            limiter.record_failure(&alice, now);
        }
        limiter.record_success(&"alice".parse().unwrap());
        assert!(limiter.check(&subjects("alice", [10, 0, 0, 9]), now).is_ok());
        assert!(limiter.check(&alice, now).is_err(), "the address keeps its record");
        for i in 0..50u8 {
            limiter.record_failure(&subjects(&format!("u{i}"), [10, 1, 0, i]), now);
        }
        assert!(limiter.entries.len() <= 4);
        assert!(limiter.entries.values().all(|entry| entry.failures <= FREE_FAILURES + 1));
        limiter.record_failure(&alice, now + FORGET_AFTER * 2);
        assert!(
            limiter.entries.values().all(|entry| entry.last_failure == now + FORGET_AFTER * 2 || entry.failures == 1)
        );
    }
}
