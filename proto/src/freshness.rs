//! Freshness: refusing stale, future-dated and replayed signed datagrams.
//!
//! A datagram is fresh when its timestamp lies within `window` of the receiver's clock, in
//! either direction (so hosts whose clocks disagree by less than the window still talk), and its
//! nonce has not been seen while it was fresh. A nonce is remembered until its datagram would be
//! stale anyway, so the cache holds at most one window's worth of accepted datagrams, and never
//! more than `capacity`: when full it refuses new datagrams rather than forget old nonces, since
//! forgetting would let a replay through.
//!
//! Only datagrams whose signature verified should be [recorded](ReplayGuard::record), so nobody
//! without a signing key can fill the cache.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use crate::datagram::{Nonce, UnixMillis};

/// Why a datagram is not fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Its timestamp is older than the window: a late copy, or the sender's clock is behind.
    #[error("stale: sent {age_ms} ms ago")]
    Stale { age_ms: u64 },
    /// Its timestamp is further ahead than the window: the sender's clock is ahead.
    #[error("future-dated: sent {ahead_ms} ms in the future")]
    FutureDated { ahead_ms: u64 },
    /// The same nonce was accepted before: a replayed copy.
    #[error("replayed")]
    Replayed,
    /// Too many fresh datagrams to remember; refused rather than risk accepting a replay.
    #[error("replay cache full")]
    CacheFull,
}

/// Remembers the nonces of recently accepted datagrams.
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    capacity: usize,
    seen: HashSet<Nonce>,
    /// The same nonces ordered by when they may be forgotten.
    expiries: BTreeSet<(u64, Nonce)>,
}

impl ReplayGuard {
    /// `window`: how far a timestamp may be from now; `capacity`: most nonces remembered.
    pub fn new(window: Duration, capacity: usize) -> Self {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        Self { window_ms, capacity, seen: HashSet::new(), expiries: BTreeSet::new() }
    }

    /// Checks only the timestamp. Cheap, so receivers call it before verifying a signature.
    pub fn check_time(&self, timestamp: UnixMillis, now: UnixMillis) -> Result<(), Rejection> {
        if timestamp.0 > now.0 {
            let ahead_ms = timestamp.0 - now.0;
            if ahead_ms > self.window_ms {
                return Err(Rejection::FutureDated { ahead_ms });
            }
        } else {
            let age_ms = now.0 - timestamp.0;
            if age_ms > self.window_ms {
                return Err(Rejection::Stale { age_ms });
            }
        }
        Ok(())
    }

    /// Accepts a datagram whose signature verified, remembering its nonce; refuses it if it is
    /// not fresh or was accepted before.
    pub fn record(&mut self, timestamp: UnixMillis, nonce: Nonce, now: UnixMillis) -> Result<(), Rejection> {
        self.forget_expired(now);
        self.check_time(timestamp, now)?;
        if self.seen.contains(&nonce) {
            return Err(Rejection::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(Rejection::CacheFull);
        }
        // Once past timestamp + window the datagram fails `check_time`, so it can be forgotten.
        let expiry = timestamp.0.saturating_add(self.window_ms);
        self.seen.insert(nonce);
        self.expiries.insert((expiry, nonce));
        Ok(())
    }

    /// How many nonces are remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn forget_expired(&mut self, now: UnixMillis) {
        while let Some(&(expiry, nonce)) = self.expiries.first() {
            if expiry >= now.0 {
                break;
            }
            self.expiries.pop_first();
            self.seen.remove(&nonce);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(30);
    const T0: u64 = 1_800_000_000_000;

    fn nonce(n: u8) -> Nonce {
        Nonce([n; 16])
    }

    #[test]
    fn accepts_fresh_and_refuses_replays() {
        let mut guard = ReplayGuard::new(WINDOW, 100);
        assert_eq!(guard.record(UnixMillis(T0), nonce(1), UnixMillis(T0)), Ok(()));
        assert_eq!(guard.record(UnixMillis(T0), nonce(1), UnixMillis(T0 + 10)), Err(Rejection::Replayed));
        assert_eq!(guard.record(UnixMillis(T0), nonce(2), UnixMillis(T0 + 10)), Ok(()));
    }

    #[test]
    fn refuses_stale_and_future_dated() {
        let mut guard = ReplayGuard::new(WINDOW, 100);
        let now = UnixMillis(T0);
        assert_eq!(guard.record(UnixMillis(T0 - 30_000), nonce(1), now), Ok(()), "exactly at the edge is fresh");
        assert_eq!(guard.record(UnixMillis(T0 - 30_001), nonce(2), now), Err(Rejection::Stale { age_ms: 30_001 }));
        assert_eq!(guard.record(UnixMillis(T0 + 30_000), nonce(3), now), Ok(()));
        assert_eq!(
            guard.record(UnixMillis(T0 + 30_001), nonce(4), now),
            Err(Rejection::FutureDated { ahead_ms: 30_001 })
        );
        assert_eq!(guard.check_time(UnixMillis(0), now), Err(Rejection::Stale { age_ms: T0 }));
        assert!(guard.check_time(UnixMillis(u64::MAX), now).is_err());
    }

    #[test]
    fn a_replay_is_refused_for_as_long_as_the_original_would_be_fresh() {
        let mut guard = ReplayGuard::new(WINDOW, 100);
        let sent = UnixMillis(T0 + 20_000); // future-dated but within the window
        assert_eq!(guard.record(sent, nonce(9), UnixMillis(T0)), Ok(()));
        // Just before the original turns stale the replay is still caught by the cache...
        assert_eq!(guard.record(sent, nonce(9), UnixMillis(T0 + 50_000)), Err(Rejection::Replayed));
        // ...and after that by the clock, once the cache has forgotten it.
        assert_eq!(guard.record(sent, nonce(9), UnixMillis(T0 + 50_001)), Err(Rejection::Stale { age_ms: 30_001 }));
        assert!(guard.is_empty());
    }

    #[test]
    fn memory_is_bounded_and_expired_nonces_are_forgotten() {
        let mut guard = ReplayGuard::new(WINDOW, 3);
        for n in 0..3 {
            assert_eq!(guard.record(UnixMillis(T0), nonce(n), UnixMillis(T0)), Ok(()));
        }
        assert_eq!(guard.record(UnixMillis(T0), nonce(3), UnixMillis(T0)), Err(Rejection::CacheFull));
        assert_eq!(guard.len(), 3);
        let later = UnixMillis(T0 + 30_001);
        assert_eq!(guard.record(later, nonce(3), later), Ok(()));
        assert_eq!(guard.len(), 1);
    }
}
