//! Accounting for datagrams a receiver drops: counted by reason, logged at most once a second.
//!
//! A flood of garbage must not flood the log too, but an operator must still see that it is
//! happening and why; so the first drop is logged at once and later ones are summarized.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How often at most a dropped datagram is logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Not a well-formed gshare datagram.
    Malformed,
    /// A kind that must be signed came without a signature.
    Unsigned,
    /// The signature does not verify.
    BadSignature,
    /// Signed by a CA other than the pinned one.
    OtherCa,
    /// Older than the freshness window.
    Stale,
    /// Further in the future than the freshness window.
    FutureDated,
    /// A copy of a datagram already accepted.
    Replayed,
    /// Too many fresh datagrams to remember nonces for.
    ReplayCacheFull,
    /// The sender sent more requests than its share.
    OverRate,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::Malformed,
        DropReason::Unsigned,
        DropReason::BadSignature,
        DropReason::OtherCa,
        DropReason::Stale,
        DropReason::FutureDated,
        DropReason::Replayed,
        DropReason::ReplayCacheFull,
        DropReason::OverRate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Unsigned => "unsigned",
            DropReason::BadSignature => "bad signature",
            DropReason::OtherCa => "from another CA",
            DropReason::Stale => "stale",
            DropReason::FutureDated => "future-dated",
            DropReason::Replayed => "replayed",
            DropReason::ReplayCacheFull => "replay cache full",
            DropReason::OverRate => "over the sender's rate",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<gshare_proto::Rejection> for DropReason {
    fn from(rejection: gshare_proto::Rejection) -> Self {
        match rejection {
            gshare_proto::Rejection::Stale { .. } => DropReason::Stale,
            gshare_proto::Rejection::FutureDated { .. } => DropReason::FutureDated,
            gshare_proto::Rejection::Replayed => DropReason::Replayed,
            gshare_proto::Rejection::CacheFull => DropReason::ReplayCacheFull,
        }
    }
}

/// Counts dropped datagrams and logs them without flooding the log.
#[derive(Debug, Default)]
pub struct DropCounter {
    counts: [u64; DropReason::ALL.len()],
    last_logged: Option<Instant>,
    /// Drops not logged since the last line, by reason: the next line names them, so that a
    /// flood whose every logged line happens to be one reason still shows what it was.
    unlogged: [u64; DropReason::ALL.len()],
}

impl DropCounter {
    /// Counts one drop; logs it unless another was logged less than [`LOG_INTERVAL`] before `now`.
    pub fn record(&mut self, reason: DropReason, from: SocketAddr, detail: &dyn fmt::Display, now: Instant) {
        self.counts[reason as usize] += 1;
        let due = self.last_logged.is_none_or(|last| now.duration_since(last) >= LOG_INTERVAL);
        if due {
            let unlogged = summary(&self.unlogged);
            let unlogged = if unlogged.is_empty() { "none".to_owned() } else { unlogged };
            tracing::warn!(%from, reason = reason.as_str(), unlogged_since_last = %unlogged, "dropped datagram: {detail}");
            self.last_logged = Some(now);
            self.unlogged = [0; DropReason::ALL.len()];
        } else {
            self.unlogged[reason as usize] += 1;
        }
    }

    /// Counts a dropped datagram without logging it: for commands that report drops to the
    /// person in a sentence of their own (`groups`, `enroll`).
    pub fn count_only(&mut self, reason: DropReason) {
        self.counts[reason as usize] += 1;
    }

    pub fn count(&self, reason: DropReason) -> u64 {
        self.counts[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Non-zero counts by reason, e.g. `2 replayed, 1 bad signature`; empty when nothing dropped.
    pub fn summary(&self) -> String {
        summary(&self.counts)
    }
}

/// Non-zero `counts` (indexed by [`DropReason`]) as `2 replayed, 1 bad signature`.
fn summary(counts: &[u64; DropReason::ALL.len()]) -> String {
    DropReason::ALL
        .iter()
        .filter(|&&reason| counts[reason as usize] > 0)
        .map(|&reason| format!("{} {}", counts[reason as usize], reason))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_drop_and_logs_at_most_once_a_second() {
        let mut counter = DropCounter::default();
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let start = Instant::now();
        for i in 0..10 {
            counter.record(DropReason::Malformed, from, &"x", start + Duration::from_millis(i));
        }
        assert_eq!(summary(&counter.unlogged), "9 malformed");
        counter.record(DropReason::Replayed, from, &"x", start + LOG_INTERVAL);
        assert_eq!(summary(&counter.unlogged), "");
        assert_eq!(counter.total(), 11);
        assert_eq!(counter.summary(), "10 malformed, 1 replayed");
    }
}
