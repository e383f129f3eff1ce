//! The multicast envelope: every datagram gshare sends over UDP.
//!
//! ```text
//!  offset  size  field
//!       0     2  magic "GS"
//!       2     1  version (1)
//!       3     1  kind (1 list request, 2 announcement, 3 join request, 4 leave request,
//!                5 membership reply)
//!       4     8  timestamp, milliseconds since the Unix epoch
//!      12    16  nonce, random
//!      28     2  body length
//!      30     n  body (depends on kind)
//!    30+n    64  signature (ECDSA P-256, r || s) over bytes 0..30+n; absent for list requests
//! ```
//!
//! A datagram is at most [`MAX_DATAGRAM_LEN`] bytes so that it never fragments. The decoder
//! checks every length against what was received and rejects trailing bytes; it verifies no
//! signature itself (that needs keys, see the `certs` crate) but hands back exactly which bytes
//! were signed.

use crate::announce::Announcement;
use crate::membership::{MembershipReply, MembershipRequest};
use crate::wire::Reader;

/// Hard size limit of a datagram, in bytes: below any Ethernet or VPN MTU, so nothing fragments.
pub const MAX_DATAGRAM_LEN: usize = 1200;
/// Length of a signature: ECDSA P-256 in fixed `r || s` form.
pub const SIGNATURE_LEN: usize = 64;
/// Length of a nonce, in bytes.
pub const NONCE_LEN: usize = 16;

const MAGIC: [u8; 2] = *b"GS";
const VERSION: u8 = 1;
pub(crate) const HEADER_LEN: usize = 2 + 1 + 1 + 8 + NONCE_LEN + 2;

/// A point in time as milliseconds since the Unix epoch, as carried on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub u64);

/// Random bytes that make each datagram unique, so that a copy can be recognised as a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nonce(pub [u8; NONCE_LEN]);

/// A signature over a datagram's header and body.
pub type Signature = [u8; SIGNATURE_LEN];

/// Signing failed inside the crypto library (it reports no detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signing failed")]
pub struct SigningFailed;

/// Something that can sign datagrams: the server's CA key, later a member's key.
pub trait Signer {
    fn sign(&self, message: &[u8]) -> Result<Signature, SigningFailed>;
}

/// What a datagram says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// "Please announce yourself." Sent by clients that may not be enrolled yet, so unsigned;
    /// the server answers with a rate-limited announcement and nothing else.
    ListRequest,
    /// The server's address, CA and groups (one part of them).
    Announcement(Announcement),
    /// A member asks to join a group; signed with the member's key.
    JoinRequest(MembershipRequest),
    /// A member asks to leave a group; signed with the member's key.
    LeaveRequest(MembershipRequest),
    /// The server's answer to a join or leave request; signed with the CA key.
    MembershipReply(MembershipReply),
}

impl Message {
    fn kind(&self) -> u8 {
        match self {
            Message::ListRequest => 1,
            Message::Announcement(_) => 2,
            Message::JoinRequest(_) => 3,
            Message::LeaveRequest(_) => 4,
            Message::MembershipReply(_) => 5,
        }
    }

    /// Whether datagrams of this kind must carry a signature.
    pub fn is_signed(&self) -> bool {
        !matches!(self, Message::ListRequest)
    }
}

/// A whole datagram: header fields and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub timestamp: UnixMillis,
    pub nonce: Nonce,
    pub message: Message,
}

/// A decoded datagram together with what its signature covers. The signature is not verified.
#[derive(Debug)]
pub struct Decoded<'a> {
    pub datagram: Datagram,
    /// The bytes the signature covers (header and body).
    pub signed_bytes: &'a [u8],
    /// Present exactly when the message kind is a signed one.
    pub signature: Option<Signature>,
}

/// Why received bytes are not a datagram we accept. Each of these is dropped and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`MAX_DATAGRAM_LEN`]; no gshare peer sends that.
    #[error("datagram of {0} bytes exceeds the {MAX_DATAGRAM_LEN}-byte limit")]
    TooLarge(usize),
    /// A field runs past the end of the datagram.
    #[error("datagram is truncated")]
    Truncated,
    /// A kind that must be signed arrived without a signature.
    #[error("datagram is not signed")]
    Unsigned,
    /// Not a gshare datagram at all.
    #[error("bad magic bytes")]
    BadMagic,
    /// A gshare datagram from a version we do not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// A message kind this version does not know.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// Bytes left over after the last field.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// A field holds a value the protocol does not allow.
    #[error("invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
}

impl DecodeError {
    pub(crate) fn invalid(field: &'static str, reason: impl ToString) -> Self {
        DecodeError::InvalidField { field, reason: reason.to_string() }
    }
}

/// Why a datagram could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded datagram would exceed [`MAX_DATAGRAM_LEN`]; split the content.
    #[error("encoded datagram of {0} bytes exceeds the {MAX_DATAGRAM_LEN}-byte limit")]
    TooLarge(usize),
    /// A field exceeds its own limit.
    #[error("{field} is too long: {len} bytes")]
    FieldTooLong { field: &'static str, len: usize },
    /// A signed message kind was encoded without a signer.
    #[error("this message must be signed, but no signer was given")]
    MissingSigner,
    #[error(transparent)]
    Signing(#[from] SigningFailed),
}

impl Datagram {
    /// Encodes the datagram, signing it with `signer` when its kind requires a signature.
    pub fn encode(&self, signer: Option<&dyn Signer>) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(MAX_DATAGRAM_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.message.kind());
        out.extend_from_slice(&self.timestamp.0.to_be_bytes());
        out.extend_from_slice(&self.nonce.0);
        out.extend_from_slice(&[0, 0]); // body length, patched below
        match &self.message {
            Message::ListRequest => {}
            Message::Announcement(announcement) => announcement.encode_body(&mut out)?,
            Message::JoinRequest(request) | Message::LeaveRequest(request) => request.encode_body(&mut out),
            Message::MembershipReply(reply) => reply.encode_body(&mut out)?,
        }
        let body_len = out.len() - HEADER_LEN;
        let body_len16 = u16::try_from(body_len).map_err(|_| EncodeError::TooLarge(out.len()))?;
        out[HEADER_LEN - 2..HEADER_LEN].copy_from_slice(&body_len16.to_be_bytes());
        if self.message.is_signed() {
            let signer = signer.ok_or(EncodeError::MissingSigner)?;
            let signature = signer.sign(&out)?;
            out.extend_from_slice(&signature);
        }
        if out.len() > MAX_DATAGRAM_LEN {
            return Err(EncodeError::TooLarge(out.len()));
        }
        Ok(out)
    }
}

/// Decodes one received datagram. Never panics, never allocates more than the input's size.
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    if bytes.len() > MAX_DATAGRAM_LEN {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let mut reader = Reader::new(bytes);
    if reader.array::<2>()? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = reader.u8()?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let kind = reader.u8()?;
    let timestamp = UnixMillis(reader.u64()?);
    let nonce = Nonce(reader.array()?);
    let body_len = usize::from(reader.u16()?);
    let body = reader.take(body_len)?;
    let signed_bytes = &bytes[..HEADER_LEN + body_len];
    let message = match kind {
        1 => {
            Reader::new(body).finish()?;
            Message::ListRequest
        }
        2 => Message::Announcement(Announcement::decode_body(Reader::new(body))?),
        3 => Message::JoinRequest(MembershipRequest::decode_body(Reader::new(body))?),
        4 => Message::LeaveRequest(MembershipRequest::decode_body(Reader::new(body))?),
        5 => Message::MembershipReply(MembershipReply::decode_body(Reader::new(body))?),
        other => return Err(DecodeError::UnknownKind(other)),
    };
    let signature = match (message.is_signed(), reader.remaining()) {
        (false, _) => None,
        (true, 0) => return Err(DecodeError::Unsigned),
        (true, _) => Some(reader.array::<SIGNATURE_LEN>()?),
    };
    reader.finish()?;
    Ok(Decoded { datagram: Datagram { timestamp, nonce, message }, signed_bytes, signature })
}

/// Encodes the list request a client multicasts to ask servers to announce themselves.
pub fn list_request(timestamp: UnixMillis, nonce: Nonce) -> Vec<u8> {
    // A list request has an empty body and no signature, so it cannot exceed any limit.
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(Message::ListRequest.kind());
    out.extend_from_slice(&timestamp.0.to_be_bytes());
    out.extend_from_slice(&nonce.0);
    out.extend_from_slice(&[0, 0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{GroupName, ServerAddress};
    use proptest::prelude::*;

    /// Signs with a fixed pattern derived from the message, so tests can check what was signed.
    struct FakeSigner;
    impl Signer for FakeSigner {
        fn sign(&self, message: &[u8]) -> Result<Signature, SigningFailed> {
            let mut signature = [0u8; SIGNATURE_LEN];
            signature[0] = message.len() as u8;
            signature[1] = message.iter().fold(0u8, |a, b| a.wrapping_add(*b));
            Ok(signature)
        }
    }

    fn announcement(groups: &[&str]) -> Announcement {
        Announcement {
            ca_certificate: vec![0x30; 400],
            server: ServerAddress::new("127.0.0.1:7443").unwrap(),
            part: 0,
            parts: 1,
            groups: groups.iter().map(|g| GroupName::new(g).unwrap()).collect(),
        }
    }

    fn datagram(message: Message) -> Datagram {
        Datagram { timestamp: UnixMillis(1_700_000_000_123), nonce: Nonce([7; NONCE_LEN]), message }
    }

    /// Writes one datagram of every kind into the fuzz target's seed corpus. Run by hand after
    /// adding a kind: `cargo test -p gshare-proto write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/seeds/datagram; run by hand"]
    fn write_fuzz_seeds() {
        use crate::membership::{MembershipReply, MembershipRequest, Outcome};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/datagram");
        std::fs::create_dir_all(&dir).unwrap();
        let request = MembershipRequest {
            certificate: crate::Fingerprint([3; 32]),
            group: GroupName::new("Developers").unwrap(),
        };
        let reply = MembershipReply {
            request_nonce: Nonce([4; NONCE_LEN]),
            group: GroupName::new("Developers").unwrap(),
            outcome: Outcome::Accepted,
        };
        let messages = [
            Message::ListRequest,
            Message::Announcement(announcement(&["Developers", "Designers"])),
            Message::JoinRequest(request.clone()),
            Message::LeaveRequest(request),
            Message::MembershipReply(reply),
        ];
        for message in messages {
            let kind = message.kind();
            let bytes = datagram(message).encode(Some(&FakeSigner)).unwrap();
            std::fs::write(dir.join(format!("{kind:02}")), bytes).unwrap();
        }
    }

    #[test]
    fn list_request_round_trip() {
        let bytes = list_request(UnixMillis(5), Nonce([1; NONCE_LEN]));
        assert_eq!(bytes, datagram_with(UnixMillis(5), Nonce([1; NONCE_LEN])).encode(None).unwrap());
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.datagram.message, Message::ListRequest);
        assert_eq!(decoded.signature, None);
    }

    fn datagram_with(timestamp: UnixMillis, nonce: Nonce) -> Datagram {
        Datagram { timestamp, nonce, message: Message::ListRequest }
    }

    #[test]
    fn signed_announcement_round_trip() {
        let original = datagram(Message::Announcement(announcement(&["Developers", "Designers"])));
        let bytes = original.encode(Some(&FakeSigner)).unwrap();
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.datagram, original);
        assert_eq!(decoded.signed_bytes, &bytes[..bytes.len() - SIGNATURE_LEN]);
        assert_eq!(decoded.signature, Some(FakeSigner.sign(decoded.signed_bytes).unwrap()));
    }

    #[test]
    fn signed_kinds_need_a_signer() {
        let unsigned = datagram(Message::Announcement(announcement(&[])));
        assert_eq!(unsigned.encode(None), Err(EncodeError::MissingSigner));
    }

    #[test]
    fn refusals() {
        let good = datagram(Message::Announcement(announcement(&["Developers"]))).encode(Some(&FakeSigner)).unwrap();
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::Truncated);
        assert_eq!(decode(&vec![0; MAX_DATAGRAM_LEN + 1]).unwrap_err(), DecodeError::TooLarge(MAX_DATAGRAM_LEN + 1));
        assert_eq!(decode(b"XX").unwrap_err(), DecodeError::BadMagic);
        let mut wrong_version = good.clone();
        wrong_version[2] = 9;
        assert_eq!(decode(&wrong_version).unwrap_err(), DecodeError::UnsupportedVersion(9));
        let mut unknown_kind = good.clone();
        unknown_kind[3] = 200;
        assert_eq!(decode(&unknown_kind).unwrap_err(), DecodeError::UnknownKind(200));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing).unwrap_err(), DecodeError::TrailingBytes(1));
        assert_eq!(decode(&good[..good.len() - SIGNATURE_LEN]).unwrap_err(), DecodeError::Unsigned);
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "prefix of {cut} bytes was accepted");
        }
        let mut list_with_body = list_request(UnixMillis(1), Nonce([0; NONCE_LEN]));
        list_with_body[HEADER_LEN - 1] = 1;
        list_with_body.push(0);
        assert_eq!(decode(&list_with_body).unwrap_err(), DecodeError::TrailingBytes(1));
    }

    fn group_name() -> impl Strategy<Value = GroupName> {
        "[A-Za-z0-9][A-Za-z0-9._-]{0,63}".prop_map(|s| GroupName::new(&s).unwrap())
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decoding_mutated_valid_datagrams_never_panics(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = datagram(Message::Announcement(announcement(&["Developers", "Designers"])))
                .encode(Some(&FakeSigner)).unwrap();
            for (index, value) in flips {
                let at = index.index(bytes.len());
                bytes[at] = value;
            }
            let _ = decode(&bytes);
        }

        #[test]
        fn membership_round_trips(
            timestamp in any::<u64>(),
            nonce in any::<[u8; NONCE_LEN]>(),
            certificate in any::<[u8; 32]>(),
            group in group_name(),
            code in 0u8..=6,
            message in "[ -~]{0,200}",
        ) {
            use crate::membership::{Outcome, RefusalCode, RefusalMessage};
            let request = MembershipRequest { certificate: crate::Fingerprint(certificate), group: group.clone() };
            let outcome = match code {
                0 => Outcome::Accepted,
                _ => Outcome::Refused {
                    code: [RefusalCode::NotAllowed, RefusalCode::UnknownGroup, RefusalCode::UnknownCertificate,
                           RefusalCode::Revoked, RefusalCode::Expired, RefusalCode::Internal][usize::from(code) - 1],
                    message: RefusalMessage::new(&message),
                },
            };
            let reply = MembershipReply { request_nonce: Nonce(nonce), group, outcome };
            for message in [Message::JoinRequest(request.clone()), Message::LeaveRequest(request), Message::MembershipReply(reply)] {
                let original = Datagram { timestamp: UnixMillis(timestamp), nonce: Nonce(nonce), message };
                let bytes = original.encode(Some(&FakeSigner)).unwrap();
                prop_assert!(bytes.len() <= MAX_DATAGRAM_LEN);
                prop_assert_eq!(decode(&bytes).unwrap().datagram, original);
            }
        }

        #[test]
        fn announcement_round_trip(
            timestamp in any::<u64>(),
            nonce in any::<[u8; NONCE_LEN]>(),
            certificate in proptest::collection::vec(any::<u8>(), 1..600),
            groups in proptest::collection::vec(group_name(), 0..6),
            port in 1u16..,
        ) {
            let parts = 3;
            let original = Datagram {
                timestamp: UnixMillis(timestamp),
                nonce: Nonce(nonce),
                message: Message::Announcement(Announcement {
                    ca_certificate: certificate,
                    server: ServerAddress::new(&format!("gshare.example.org:{port}")).unwrap(),
                    part: 2,
                    parts,
                    groups,
                }),
            };
            let bytes = original.encode(Some(&FakeSigner)).unwrap();
            prop_assert!(bytes.len() <= MAX_DATAGRAM_LEN);
            prop_assert_eq!(decode(&bytes).unwrap().datagram, original);
        }
    }
}
