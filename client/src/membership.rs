//! Joining and leaving groups: a request signed with the member's key, multicast to the server,
//! and the server's signed reply, matched to our request by its nonce.
//!
//! Each attempt is a new datagram with its own nonce and timestamp (the server drops a re-sent
//! copy as a replay), so if a reply is lost the next attempt still gets one. A reply counts only
//! if it is fresh, signed by the pinned CA, and answers one of our requests.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::{Instant, timeout_at};

use gshare_certs::VerifyingKey;
use gshare_common::multicast::ReceiveBuffer;
use gshare_common::{MulticastChannel, unix_now};
use gshare_proto::datagram::{self, NONCE_LEN};
use gshare_proto::membership::{MembershipRequest, Outcome};
use gshare_proto::{Datagram, GroupName, Message, Nonce, ReplayGuard};

use crate::home::ClientSettings;
use crate::identity::Enrollment;

/// Attempts before giving up.
pub const ATTEMPTS: u32 = 3;
/// How long each attempt waits for the reply.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// Join or leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Join,
    Leave,
}

impl Direction {
    pub fn verb(self) -> &'static str {
        match self {
            Direction::Join => "join",
            Direction::Leave => "leave",
        }
    }
}

/// Why no answer was had.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(
        "no reply from the server to {attempts} {verb} requests on {multicast}; is it running, and is this member enrolled with it?"
    )]
    NoReply { attempts: u32, verb: &'static str, multicast: String },
    #[error(transparent)]
    Transport(#[from] gshare_common::TransportError),
    #[error("multicast: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Certificate(#[from] gshare_certs::CertError),
    #[error("cannot encode the request: {0}")]
    Encode(#[from] gshare_proto::EncodeError),
}

/// Asks the server to let this member join or leave `group`, and returns its verified answer.
pub async fn request(
    settings: &ClientSettings,
    enrollment: &Enrollment,
    direction: Direction,
    group: &GroupName,
) -> Result<Outcome, MembershipError> {
    let signer = enrollment.signer()?;
    let ca_key = VerifyingKey::from_certificate(&enrollment.ca_der)?;
    let channel = MulticastChannel::open(&settings.multicast)?;
    let mut guard = ReplayGuard::new(settings.multicast.max_age(), 1024);
    let mut ours = HashSet::new();
    let mut buffer: ReceiveBuffer = [0; datagram::MAX_DATAGRAM_LEN + 1];
    for _ in 0..ATTEMPTS {
        let nonce = Nonce(gshare_certs::random_bytes::<NONCE_LEN>()?);
        let request = MembershipRequest { certificate: enrollment.certificate_fingerprint(), group: group.clone() };
        let message = match direction {
            Direction::Join => Message::JoinRequest(request),
            Direction::Leave => Message::LeaveRequest(request),
        };
        let bytes = Datagram { timestamp: unix_now(), nonce, message }.encode(Some(&signer))?;
        channel.send_to_group(&bytes).await?;
        ours.insert(nonce);
        let deadline = Instant::now() + ATTEMPT_TIMEOUT;
        while let Ok(received) = timeout_at(deadline, channel.receive(&mut buffer)).await {
            let (len, from) = received?;
            let Ok(decoded) = datagram::decode(&buffer[..len]) else { continue };
            let Message::MembershipReply(reply) = decoded.datagram.message else { continue };
            let (timestamp, reply_nonce) = (decoded.datagram.timestamp, decoded.datagram.nonce);
            let signed = decoded.signature.is_some_and(|signature| ca_key.verify(decoded.signed_bytes, &signature));
            if !signed || !ours.contains(&reply.request_nonce) || reply.group != *group {
                tracing::debug!(%from, "ignored a membership reply that is not a verified answer to us");
                continue;
            }
            if let Err(rejection) = guard.record(timestamp, reply_nonce, unix_now()) {
                tracing::debug!(%from, %rejection, "ignored a membership reply");
                continue;
            }
            if reply.outcome == Outcome::Accepted
                && let Err(error) = remember(&settings.home, direction, group)
            {
                tracing::debug!(%error, "cannot note the membership for `status`");
            }
            return Ok(reply.outcome);
        }
    }
    Err(MembershipError::NoReply {
        attempts: ATTEMPTS,
        verb: direction.verb(),
        multicast: settings.multicast.describe(),
    })
}

/// The file in the client's home listing the groups this member joined, one per line, for
/// `status`. The server's record is the one that counts; this is the member's note of it.
pub const JOINED_FILE: &str = "joined";

/// The groups this member noted as joined.
pub fn joined(home: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(home.join(JOINED_FILE))
        .map(|text| text.lines().filter(|line| !line.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

fn remember(home: &std::path::Path, direction: Direction, group: &GroupName) -> std::io::Result<()> {
    let mut groups = joined(home);
    groups.retain(|g| g != group.as_str());
    if direction == Direction::Join {
        groups.push(group.as_str().to_owned());
    }
    groups.sort();
    let text: String = groups.iter().map(|g| format!("{g}\n")).collect();
    gshare_common::files::atomic_write(&home.join(JOINED_FILE), text.as_bytes(), 0o644)
}
