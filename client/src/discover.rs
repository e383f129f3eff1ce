//! Finding servers: multicast a list request, gather announcements for a while, and keep only
//! those that verify.
//!
//! An announcement is shown only if its timestamp is fresh, it was signed by the key of the CA
//! certificate it carries, that certificate is the pinned one (when one is pinned), and it is
//! not a replay of one already taken. Everything else is dropped and counted, and the counts are
//! reported so that a person notices when something on the network is forging or replaying.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{Instant, sleep_until, timeout_at};

use gshare_certs::VerifyingKey;
use gshare_common::multicast::ReceiveBuffer;
use gshare_common::{DropCounter, DropReason, MulticastChannel, MulticastSettings, TransportError, unix_now};
use gshare_proto::datagram::{self, NONCE_LEN};
use gshare_proto::{Announcement, DecodeError, Fingerprint, GroupName, Message, Nonce, ReplayGuard, ServerAddress};

/// Most nonces a client remembers; far above what a few seconds of announcements need.
const REPLAY_CACHE_CAPACITY: usize = 4096;

/// What `groups` found.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Servers that answered, in the order first heard.
    pub servers: Vec<FoundServer>,
    /// Datagrams dropped, by reason.
    pub drops: DropCounter,
    /// Servers heard announcing a CA other than the pinned one: what they claim (address, CA).
    pub other_cas: Vec<(ServerAddress, Fingerprint)>,
}

/// One server, assembled from the parts of its announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundServer {
    pub fingerprint: Fingerprint,
    pub address: ServerAddress,
    /// Whether the fingerprint is the one pinned at enrollment.
    pub pinned: bool,
    /// Parts received, by index; complete when it holds `parts` entries.
    pub parts_received: BTreeMap<u8, Vec<GroupName>>,
    pub parts: u8,
}

impl FoundServer {
    /// The groups of every part received, in announcement order, without repeats.
    pub fn groups(&self) -> Vec<GroupName> {
        let mut groups: Vec<GroupName> = Vec::new();
        for group in self.parts_received.values().flatten() {
            if !groups.contains(group) {
                groups.push(group.clone());
            }
        }
        groups
    }

    pub fn is_complete(&self) -> bool {
        self.parts_received.len() == usize::from(self.parts)
    }
}

/// Why discovery could not run.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot send the list request to {group}")]
    Send { group: String, source: std::io::Error },
    #[error("multicast receive failed: {0}")]
    Receive(std::io::Error),
    #[error(transparent)]
    Random(#[from] gshare_certs::CertError),
}

/// Multicasts a list request (and once more halfway, in case one was lost), then gathers
/// announcements until `wait` has passed.
pub async fn discover(
    settings: &MulticastSettings,
    pinned: Option<Fingerprint>,
    wait: Duration,
    until: Until,
) -> Result<Discovery, DiscoverError> {
    let channel = MulticastChannel::open(settings)?;
    let mut collector = Collector::new(settings.max_age(), pinned);
    let mut deadline = Instant::now() + wait;
    let mut resend_at = Some(Instant::now() + wait / 2);
    send_list_request(&channel).await?;
    let mut buffer: ReceiveBuffer = [0; datagram::MAX_DATAGRAM_LEN + 1];
    loop {
        let resend_deadline = resend_at.unwrap_or(deadline);
        tokio::select! {
            () = sleep_until(resend_deadline), if resend_at.is_some() => {
                resend_at = None;
                send_list_request(&channel).await?;
            }
            received = timeout_at(deadline, channel.receive(&mut buffer)) => match received {
                Err(_elapsed) => break,
                Ok(Err(error)) => return Err(DiscoverError::Receive(error)),
                Ok(Ok((len, from))) => {
                    collector.handle(&buffer[..len], from, unix_now());
                    if until == Until::Complete && collector.all_complete() {
                        // A moment more, for other servers answering the same request and
                        // for copies already on their way.
                        deadline = deadline.min(Instant::now() + LINGER);
                    }
                }
            }
        }
    }
    Ok(collector.finish())
}

/// How long `Until::Complete` listens on once every server that answered is complete.
const LINGER: Duration = Duration::from_millis(300);

/// How long discovery listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The whole window: to learn of every server that answers (enrollment must not pick one
    /// of two without knowing of the other).
    Window,
    /// Until every server that answered has sent its whole announcement (and a moment
    /// more), or the window ends.
    Complete,
}

async fn send_list_request(channel: &MulticastChannel) -> Result<(), DiscoverError> {
    let nonce = Nonce(gshare_certs::random_bytes::<NONCE_LEN>()?);
    let request = datagram::list_request(unix_now(), nonce);
    channel
        .send_to_group(&request)
        .await
        .map_err(|source| DiscoverError::Send { group: channel.group().to_string(), source })
}

/// The verification and bookkeeping of discovery, apart from sockets and clocks.
#[derive(Debug)]
pub struct Collector {
    pinned: Option<Fingerprint>,
    guard: ReplayGuard,
    keys: HashMap<Fingerprint, VerifyingKey>,
    result: Discovery,
}

impl Collector {
    pub fn new(max_age: Duration, pinned: Option<Fingerprint>) -> Self {
        Self {
            pinned,
            guard: ReplayGuard::new(max_age, REPLAY_CACHE_CAPACITY),
            keys: HashMap::new(),
            result: Discovery::default(),
        }
    }

    /// Takes one received datagram; `now` is the wall clock in Unix milliseconds.
    pub fn handle(&mut self, bytes: &[u8], from: SocketAddr, now: gshare_proto::UnixMillis) {
        match self.verify(bytes, now) {
            Ok(Some(announcement)) => self.add(announcement),
            Ok(None) => {}
            Err((reason, detail)) => {
                tracing::debug!(%from, reason = reason.as_str(), "dropped datagram: {detail}");
                self.result.drops.count_only(reason);
            }
        }
    }

    /// The announcement in `bytes` if it verifies; `None` for datagrams that are not for us.
    fn verify(
        &mut self,
        bytes: &[u8],
        now: gshare_proto::UnixMillis,
    ) -> Result<Option<(Fingerprint, Announcement)>, (DropReason, String)> {
        let decoded = datagram::decode(bytes).map_err(|error| {
            let reason = if error == DecodeError::Unsigned { DropReason::Unsigned } else { DropReason::Malformed };
            (reason, error.to_string())
        })?;
        let Message::Announcement(announcement) = decoded.datagram.message else {
            return Ok(None); // list requests, ours and other clients'
        };
        let (timestamp, nonce) = (decoded.datagram.timestamp, decoded.datagram.nonce);
        self.guard.check_time(timestamp, now).map_err(|r| (r.into(), r.to_string()))?;
        let fingerprint = gshare_certs::fingerprint(&announcement.ca_certificate);
        if self.pinned.is_some_and(|pinned| pinned != fingerprint) {
            // Unverified (the CA is not ours to check against), but worth naming if no server
            // with the expected CA answers.
            let other = (announcement.server.clone(), fingerprint);
            if !self.result.other_cas.contains(&other) {
                self.result.other_cas.push(other);
            }
            return Err((DropReason::OtherCa, format!("announcement from CA {fingerprint}")));
        }
        let key = match self.keys.get(&fingerprint) {
            Some(key) => key,
            None => {
                let key = VerifyingKey::from_certificate(&announcement.ca_certificate)
                    .map_err(|e| (DropReason::Malformed, format!("announced CA certificate: {e}")))?;
                self.keys.entry(fingerprint).or_insert(key)
            }
        };
        // `decode` returns a signature for every signed kind, and announcements are signed.
        let signature = decoded.signature.ok_or((DropReason::Unsigned, "announcement without signature".into()))?;
        if !key.verify(decoded.signed_bytes, &signature) {
            return Err((DropReason::BadSignature, format!("announcement claiming CA {fingerprint}")));
        }
        self.guard.record(timestamp, nonce, now).map_err(|r| (r.into(), r.to_string()))?;
        Ok(Some((fingerprint, announcement)))
    }

    fn add(&mut self, (fingerprint, announcement): (Fingerprint, Announcement)) {
        let pinned = self.pinned == Some(fingerprint);
        let servers = &mut self.result.servers;
        let index = match servers.iter().position(|s| {
            s.fingerprint == fingerprint && s.address == announcement.server && s.parts == announcement.parts
        }) {
            Some(index) => index,
            None => {
                servers.push(FoundServer {
                    fingerprint,
                    address: announcement.server.clone(),
                    pinned,
                    parts_received: BTreeMap::new(),
                    parts: announcement.parts,
                });
                servers.len() - 1
            }
        };
        servers[index].parts_received.insert(announcement.part, announcement.groups);
    }

    /// Whether some server answered and every one that did has sent all its parts.
    pub fn all_complete(&self) -> bool {
        !self.result.servers.is_empty() && self.result.servers.iter().all(FoundServer::is_complete)
    }

    pub fn finish(self) -> Discovery {
        self.result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gshare_certs::CertificateAuthority;
    use gshare_proto::{Datagram, UnixMillis};
    use time::OffsetDateTime;

    const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

    fn from() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    fn announcement_bytes(ca: &CertificateAuthority, groups: &[&str], timestamp: UnixMillis, nonce: u8) -> Vec<u8> {
        let groups: Vec<GroupName> = groups.iter().map(|g| g.parse().unwrap()).collect();
        let server = ServerAddress::new("127.0.0.1:7443").unwrap();
        let part = Announcement::split(ca.certificate_der(), &server, &groups).unwrap().remove(0);
        Datagram { timestamp, nonce: Nonce([nonce; 16]), message: Message::Announcement(part) }
            .encode(Some(ca.signer()))
            .unwrap()
    }

    fn new_ca() -> CertificateAuthority {
        CertificateAuthority::generate("test", OffsetDateTime::now_utc()).unwrap()
    }

    #[test]
    fn a_verified_announcement_is_shown_once_and_its_replay_counted() {
        let ca = new_ca();
        let mut collector = Collector::new(Duration::from_secs(30), None);
        let bytes = announcement_bytes(&ca, &["Developers", "Designers"], NOW, 1);
        collector.handle(&bytes, from(), NOW);
        collector.handle(&bytes, from(), UnixMillis(NOW.0 + 5));
        let result = collector.finish();
        assert_eq!(result.servers.len(), 1);
        let server = &result.servers[0];
        assert_eq!(server.fingerprint, ca.fingerprint());
        assert!(!server.pinned && server.is_complete());
        assert_eq!(server.groups().iter().map(GroupName::as_str).collect::<Vec<_>>(), ["Developers", "Designers"]);
        assert_eq!(result.drops.count(DropReason::Replayed), 1);
    }

    #[test]
    fn stale_future_forged_and_foreign_announcements_are_dropped() {
        let ca = new_ca();
        let other = new_ca();
        let mut collector = Collector::new(Duration::from_secs(30), Some(ca.fingerprint()));
        collector.handle(&announcement_bytes(&ca, &["Old"], UnixMillis(NOW.0 - 31_000), 1), from(), NOW);
        collector.handle(&announcement_bytes(&ca, &["Ahead"], UnixMillis(NOW.0 + 31_000), 2), from(), NOW);
        collector.handle(&announcement_bytes(&other, &["Foreign"], NOW, 3), from(), NOW);
        // The pinned CA's certificate, but signed by another key.
        let mut forged = announcement_bytes(&ca, &["Forged"], NOW, 4);
        let signed_len = forged.len() - gshare_proto::SIGNATURE_LEN;
        let signature = gshare_proto::Signer::sign(other.signer(), &forged[..signed_len]).unwrap();
        forged[signed_len..].copy_from_slice(&signature);
        collector.handle(&forged, from(), NOW);
        collector.handle(b"garbage", from(), NOW);
        let result = collector.finish();
        assert!(result.servers.is_empty(), "{:?}", result.servers);
        assert_eq!(result.drops.summary(), "1 malformed, 1 bad signature, 1 from another CA, 1 stale, 1 future-dated");
    }

    #[test]
    fn a_pinned_announcement_is_marked_pinned() {
        let ca = new_ca();
        let mut collector = Collector::new(Duration::from_secs(30), Some(ca.fingerprint()));
        collector.handle(&announcement_bytes(&ca, &["Developers"], NOW, 1), from(), NOW);
        assert!(collector.finish().servers[0].pinned);
    }
}
