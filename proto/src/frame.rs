//! Frames: how messages are delimited inside a TLS session.
//!
//! ```text
//!  offset  size  field
//!       0     4  length of what follows (type + payload), at most MAX_FRAME_LEN
//!       4     1  frame type
//!       5     n  payload (depends on type)
//! ```
//!
//! [`decode`] tells "need more bytes" (`Ok(None)`) apart from "malformed" (`Err`), and checks
//! the declared length against [`MAX_FRAME_LEN`] before anything waits for the payload, so a
//! peer cannot make a receiver buffer more than that.

use std::fmt;

use crate::datagram::DecodeError;
use crate::names::{GroupName, UserName};
use crate::wire::{Reader, put_long_bytes, put_short_bytes};

/// Largest frame (type + payload), in bytes.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Largest certificate or certificate signing request carried in a frame, in bytes (DER).
pub const MAX_CERTIFICATE_LEN: usize = 4096;
/// Longest password, in bytes.
pub const MAX_PASSWORD_LEN: usize = 1024;
/// Longest refusal text, in bytes.
pub const MAX_REFUSAL_LEN: usize = 512;
/// Most bytes of file data in one frame. Large enough that framing costs nothing measurable,
/// small enough to bound each buffer.
pub const MAX_CHUNK_LEN: usize = 256 * 1024;
/// Most groups one session subscribes to.
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// Largest frame body a peer that has not authenticated may send: room for the largest
/// enrollment request or subscription, and no more.
pub const MAX_REQUEST_LEN: usize = 8 * 1024;

pub const LENGTH_PREFIX: usize = 4;

/// A message inside a TLS session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client → server: enroll `user`, proving it with `password`, for the key in `csr`.
    EnrollRequest { user: UserName, password: Password, csr: Vec<u8> },
    /// Server → client: the member's new certificate and the CA certificate, both DER.
    EnrollAccepted { certificate: Vec<u8>, ca_certificate: Vec<u8> },
    /// Either way: the request was refused, with a reason for a person to read.
    Refused { reason: Text },
    /// Member → server, first frame of a session: send me the files of these groups.
    Subscribe { groups: Vec<GroupName> },
    /// Server → member: the session is open; offers follow.
    Subscribed,
    /// Server → member: a file is waiting.
    Offer(Offer),
    /// Member → server: send the offered file from `offset` (0 for all of it; its size when
    /// the member already holds all of it).
    Resume { delivery: DeliveryId, offset: u64 },
    /// Member → server: this offer is refused (an unsafe name, for instance) and never will be
    /// accepted; do not offer it again.
    Decline { delivery: DeliveryId, reason: Text },
    /// Server → member: the next bytes of the file being sent.
    Data { delivery: DeliveryId, bytes: Vec<u8> },
    /// Member → server: the file is stored under its final name, verified.
    Ack { delivery: DeliveryId },
    /// Member → server: what arrived did not verify and was thrown away; offer it again.
    Failed { delivery: DeliveryId, reason: Text },
    /// Either way: are you there?
    Ping,
    /// Either way: yes.
    Pong,
    /// Server → member: stop taking this delivery and throw away what arrived of it (the
    /// member left the file's group, or may no longer be in it). Sent between data frames.
    Cancel { delivery: DeliveryId, reason: Text },
    /// Member → server, instead of `Resume`, `SwarmAccept`, `Ack` or `Failed`: it could not
    /// store the file for a reason of its own (its disk is full, its directory not writable).
    /// It keeps what it holds; the server records the reason, counts no attempt, and offers the
    /// file again after a while.
    CannotStore { delivery: DeliveryId, reason: Text },
    /// Member → server, first frame of a connection made with its (valid) certificate: issue
    /// me a new certificate for the key in this signing request. Answered with
    /// `EnrollAccepted` or `Refused`.
    RenewRequest { csr: Vec<u8> },
    /// Server → member, right after `Subscribed`: every delivery the server still owes this
    /// member in the groups subscribed (`complete`: the whole list; otherwise the first
    /// [`MAX_OWED`] of them). The member throws away temporary files of any other delivery it
    /// was receiving: the server dropped those while it was away.
    Owed { deliveries: Vec<DeliveryId>, complete: bool },
    /// Member → server, while a file arrives in pieces (at most about once a second): the
    /// bytes of it held so far, from anyone, for `status` and `send --wait`.
    Progress { delivery: DeliveryId, bytes: u64 },
    /// Server → member, instead of `Subscribed`: not now (the server is full, or this
    /// certificate has too many sessions open); try again later.
    Busy { reason: Text },

    // Swarm delivery: the file in pieces, from the server and from other members.
    /// Member → server, first frame of a session, instead of `Subscribe`: the same, from a
    /// member that can take files in pieces and pass them on. `peer_port` is where it accepts
    /// other members (on the address its session comes from), if it does.
    SubscribeSwarm { groups: Vec<GroupName>, peer_port: Option<u16> },
    /// Server → member: a file is waiting, to be taken in pieces of `piece_len` bytes (a whole
    /// number of SHA-256 blocks, see [`crate::chain`]).
    SwarmOffer { offer: Offer, piece_len: u32 },
    /// Member → server: send the offered file; `have` is a bitfield of the pieces already held
    /// (verified), most significant bit of the first byte for piece 0.
    SwarmAccept { delivery: DeliveryId, have: Vec<u8> },
    /// Server → member: the file's SHA-256 state at the end of pieces `first`, `first + 1`, ...,
    /// the last piece's being the file's SHA-256 ([`crate::chain`]). All of them arrive, in
    /// order, before the member takes a piece from anyone.
    PieceHashes { delivery: DeliveryId, first: u32, hashes: Vec<[u8; 32]> },
    /// Server → member: the members who may serve this member the file, and whom it may serve.
    /// Sent again whenever that changes; a member not in the latest list is refused.
    Peers { file: FileKey, peers: Vec<PeerInfo> },
    /// Member → server: send me a piece that no member has had yet.
    NextPiece { file: FileKey },
    /// Server → member: every piece has gone out once; take them from other members (or ask
    /// for a piece by number).
    NoNewPiece { file: FileKey },
    /// Either way: send me piece `piece`.
    PieceRequest { file: FileKey, piece: u32 },
    /// Either way: the bytes of piece `piece`.
    Piece { file: FileKey, piece: u32, bytes: Vec<u8> },
    /// Member → member: not served, and why (not named by the server for the file, say).
    PieceRefused { file: FileKey, piece: u32, reason: Text },
    /// Member → member: the pieces I hold of `file` (and that I am here for it).
    Bitfield { file: FileKey, have: Vec<u8> },
    /// Member → member: I now hold `piece` too.
    Have { file: FileKey, piece: u32 },
    /// Member → server, before its ack: where the file's bytes came from, and which members
    /// sent pieces that did not verify.
    SwarmDone { delivery: DeliveryId, from_server: u64, from_peers: u64, bad_peers: Vec<crate::Fingerprint> },
}

/// The server's number for one file to one member; stable across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeliveryId(pub u64);

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A file offered to a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub delivery: DeliveryId,
    pub group: GroupName,
    /// The name as sent, unchecked: the receiver parses it into a `RelativePath` (a file name,
    /// or a file's place inside a sent directory tree) and declines the offer if that fails, so
    /// that a bad name is refused and reported, not a broken frame. At most
    /// [`MAX_PATH_LEN`](crate::names::MAX_PATH_LEN) bytes.
    pub name: Vec<u8>,
    /// Bytes.
    pub size: u64,
    pub sha256: [u8; 32],
}

/// A file's SHA-256, which names it among members: pieces of the same bytes are the same
/// pieces, whichever delivery brought them.
pub type FileKey = [u8; 32];

/// A member the server names for a file: its certificate's fingerprint, and where it accepts
/// connections from other members (none if it does not listen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub certificate: crate::Fingerprint,
    pub address: Option<std::net::SocketAddr>,
}

/// Most piece hashes in one [`Frame::PieceHashes`] (half a MiB of hashes).
pub const MAX_HASHES_PER_FRAME: usize = 16 * 1024;
/// Most peers the server names in one [`Frame::Peers`].
pub const MAX_PEERS: usize = 4096;
/// Most deliveries one `Owed` frame lists (8 bytes each).
pub const MAX_OWED: usize = 64 * 1024;
/// Largest piece bitfield: one bit per piece, enough for a 4 TiB file at the piece size.
pub const MAX_BITFIELD_LEN: usize = 1 << 20 >> 1;

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The declared length exceeds [`MAX_FRAME_LEN`] (or is zero).
    #[error("frame length {0} is outside 1..={MAX_FRAME_LEN}")]
    BadLength(usize),
    /// A frame type this version does not know.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The payload does not parse.
    #[error("malformed frame: {0}")]
    Payload(#[from] DecodeError),
}

/// A password on its way to the server: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// 1 to [`MAX_PASSWORD_LEN`] bytes.
    pub fn new(text: String) -> Result<Self, DecodeError> {
        if text.is_empty() || text.len() > MAX_PASSWORD_LEN {
            return Err(DecodeError::invalid("password", format!("must be 1 to {MAX_PASSWORD_LEN} bytes")));
        }
        Ok(Self(text))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// Printable text from a peer, at most [`MAX_REFUSAL_LEN`] bytes: safe to print on a terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    /// Replaces anything but printable ASCII with `?` and cuts to the limit.
    pub fn new(text: &str) -> Self {
        Self(
            text.chars()
                .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
                .take(MAX_REFUSAL_LEN)
                .collect(),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Frame {
    fn frame_type(&self) -> u8 {
        match self {
            Frame::EnrollRequest { .. } => 1,
            Frame::EnrollAccepted { .. } => 2,
            Frame::Refused { .. } => 3,
            Frame::Subscribe { .. } => 4,
            Frame::Subscribed => 5,
            Frame::Offer(_) => 6,
            Frame::Resume { .. } => 7,
            Frame::Decline { .. } => 8,
            Frame::Data { .. } => 9,
            Frame::Ack { .. } => 10,
            Frame::Failed { .. } => 11,
            Frame::Ping => 12,
            Frame::Pong => 13,
            Frame::Cancel { .. } => 14,
            Frame::Busy { .. } => 15,
            Frame::SubscribeSwarm { .. } => 16,
            Frame::SwarmOffer { .. } => 17,
            Frame::SwarmAccept { .. } => 18,
            Frame::PieceHashes { .. } => 19,
            Frame::Peers { .. } => 20,
            Frame::NextPiece { .. } => 21,
            Frame::NoNewPiece { .. } => 22,
            Frame::PieceRequest { .. } => 23,
            Frame::Piece { .. } => 24,
            Frame::PieceRefused { .. } => 25,
            Frame::Bitfield { .. } => 26,
            Frame::Have { .. } => 27,
            Frame::SwarmDone { .. } => 28,
            Frame::CannotStore { .. } => 29,
            Frame::RenewRequest { .. } => 30,
            Frame::Owed { .. } => 31,
            Frame::Progress { .. } => 32,
        }
    }

    /// Encodes the frame with its length prefix. Every field is a bounded newtype or checked
    /// here, so the result always decodes.
    pub fn encode(&self) -> Result<Vec<u8>, crate::EncodeError> {
        let too_long = |field, len| crate::EncodeError::FieldTooLong { field, len };
        let mut out = vec![0; LENGTH_PREFIX];
        out.push(self.frame_type());
        match self {
            Frame::EnrollRequest { user, password, csr } => {
                if csr.len() > MAX_CERTIFICATE_LEN {
                    return Err(too_long("certificate signing request", csr.len()));
                }
                put_short_bytes(&mut out, user.as_str().as_bytes());
                put_long_bytes(&mut out, password.0.as_bytes());
                put_long_bytes(&mut out, csr);
            }
            Frame::Owed { deliveries, complete } => {
                if deliveries.len() > MAX_OWED {
                    return Err(too_long("owed deliveries", deliveries.len()));
                }
                out.push(u8::from(*complete));
                out.extend_from_slice(&(deliveries.len() as u32).to_be_bytes());
                for delivery in deliveries {
                    out.extend_from_slice(&delivery.0.to_be_bytes());
                }
            }
            Frame::RenewRequest { csr } => {
                if csr.len() > MAX_CERTIFICATE_LEN {
                    return Err(too_long("certificate signing request", csr.len()));
                }
                put_long_bytes(&mut out, csr);
            }
            Frame::EnrollAccepted { certificate, ca_certificate } => {
                for (field, der) in [("certificate", certificate), ("CA certificate", ca_certificate)] {
                    if der.len() > MAX_CERTIFICATE_LEN {
                        return Err(too_long(field, der.len()));
                    }
                    put_long_bytes(&mut out, der);
                }
            }
            Frame::Refused { reason } | Frame::Busy { reason } => put_long_bytes(&mut out, reason.0.as_bytes()),
            Frame::Subscribe { groups } => put_groups(&mut out, groups)?,
            Frame::SubscribeSwarm { groups, peer_port } => {
                put_groups(&mut out, groups)?;
                out.extend_from_slice(&peer_port.unwrap_or(0).to_be_bytes());
            }
            Frame::SwarmOffer { offer, piece_len } => {
                put_offer(&mut out, offer)?;
                out.extend_from_slice(&piece_len.to_be_bytes());
            }
            Frame::SwarmAccept { delivery, have } => {
                out.extend_from_slice(&delivery.0.to_be_bytes());
                put_bitfield(&mut out, have)?;
            }
            Frame::PieceHashes { delivery, first, hashes } => {
                if hashes.len() > MAX_HASHES_PER_FRAME {
                    return Err(too_long("piece hashes", hashes.len()));
                }
                out.extend_from_slice(&delivery.0.to_be_bytes());
                out.extend_from_slice(&first.to_be_bytes());
                out.extend_from_slice(&(hashes.len() as u32).to_be_bytes());
                for hash in hashes {
                    out.extend_from_slice(hash);
                }
            }
            Frame::Peers { file, peers } => {
                if peers.len() > MAX_PEERS {
                    return Err(too_long("peer list", peers.len()));
                }
                out.extend_from_slice(file);
                out.extend_from_slice(&(peers.len() as u16).to_be_bytes());
                for peer in peers {
                    out.extend_from_slice(&peer.certificate.0);
                    let address = peer.address.map(|a| a.to_string()).unwrap_or_default();
                    put_short_bytes(&mut out, address.as_bytes());
                }
            }
            Frame::NextPiece { file } | Frame::NoNewPiece { file } => out.extend_from_slice(file),
            Frame::PieceRequest { file, piece } | Frame::Have { file, piece } => {
                out.extend_from_slice(file);
                out.extend_from_slice(&piece.to_be_bytes());
            }
            Frame::Piece { file, piece, bytes } => {
                if bytes.len() > crate::swarm::MAX_PIECE_LEN {
                    return Err(too_long("piece", bytes.len()));
                }
                out.extend_from_slice(&piece_header(file, *piece, bytes.len())?[LENGTH_PREFIX + 1..]);
                out.extend_from_slice(bytes);
            }
            Frame::PieceRefused { file, piece, reason } => {
                out.extend_from_slice(file);
                out.extend_from_slice(&piece.to_be_bytes());
                put_long_bytes(&mut out, reason.0.as_bytes());
            }
            Frame::Bitfield { file, have } => {
                out.extend_from_slice(file);
                put_bitfield(&mut out, have)?;
            }
            Frame::SwarmDone { delivery, from_server, from_peers, bad_peers } => {
                if bad_peers.len() > MAX_PEERS {
                    return Err(too_long("peer list", bad_peers.len()));
                }
                out.extend_from_slice(&delivery.0.to_be_bytes());
                out.extend_from_slice(&from_server.to_be_bytes());
                out.extend_from_slice(&from_peers.to_be_bytes());
                out.extend_from_slice(&(bad_peers.len() as u16).to_be_bytes());
                for peer in bad_peers {
                    out.extend_from_slice(&peer.0);
                }
            }
            Frame::Subscribed | Frame::Ping | Frame::Pong => {}
            Frame::Offer(offer) => put_offer(&mut out, offer)?,
            Frame::Progress { delivery, bytes: offset } | Frame::Resume { delivery, offset } => {
                out.extend_from_slice(&delivery.0.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
            }
            Frame::Decline { delivery, reason }
            | Frame::Failed { delivery, reason }
            | Frame::Cancel { delivery, reason }
            | Frame::CannotStore { delivery, reason } => {
                out.extend_from_slice(&delivery.0.to_be_bytes());
                put_long_bytes(&mut out, reason.0.as_bytes());
            }
            Frame::Data { delivery, bytes } => {
                if bytes.len() > MAX_CHUNK_LEN {
                    return Err(too_long("data chunk", bytes.len()));
                }
                out.extend_from_slice(&delivery.0.to_be_bytes());
                out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            Frame::Ack { delivery } => out.extend_from_slice(&delivery.0.to_be_bytes()),
        }
        let len = u32::try_from(out.len() - LENGTH_PREFIX).map_err(|_| too_long("frame", out.len()))?;
        out[..LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
        Ok(out)
    }
}

fn put_groups(out: &mut Vec<u8>, groups: &[GroupName]) -> Result<(), crate::EncodeError> {
    let count = u8::try_from(groups.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_SUBSCRIPTIONS)
        .ok_or(crate::EncodeError::FieldTooLong { field: "group list", len: groups.len() })?;
    out.push(count);
    for group in groups {
        put_short_bytes(out, group.as_str().as_bytes());
    }
    Ok(())
}

fn put_offer(out: &mut Vec<u8>, offer: &Offer) -> Result<(), crate::EncodeError> {
    if offer.name.len() > crate::names::MAX_PATH_LEN {
        return Err(crate::EncodeError::FieldTooLong { field: "file name", len: offer.name.len() });
    }
    out.extend_from_slice(&offer.delivery.0.to_be_bytes());
    put_short_bytes(out, offer.group.as_str().as_bytes());
    put_long_bytes(out, &offer.name);
    out.extend_from_slice(&offer.size.to_be_bytes());
    out.extend_from_slice(&offer.sha256);
    Ok(())
}

fn put_bitfield(out: &mut Vec<u8>, have: &[u8]) -> Result<(), crate::EncodeError> {
    if have.len() > MAX_BITFIELD_LEN {
        return Err(crate::EncodeError::FieldTooLong { field: "bitfield", len: have.len() });
    }
    out.extend_from_slice(&(have.len() as u32).to_be_bytes());
    out.extend_from_slice(have);
    Ok(())
}

/// Length of a piece frame's header: prefix, type, file key, piece number, byte count.
pub const PIECE_HEADER_LEN: usize = LENGTH_PREFIX + 1 + 32 + 4 + 4;

/// The bytes that precede `len` bytes of a piece in a piece frame, for senders that write the
/// piece from their own buffer. The same layout [`Frame::encode`] produces.
pub fn piece_header(file: &FileKey, piece: u32, len: usize) -> Result<[u8; PIECE_HEADER_LEN], crate::EncodeError> {
    if len > crate::swarm::MAX_PIECE_LEN {
        return Err(crate::EncodeError::FieldTooLong { field: "piece", len });
    }
    let mut header = [0u8; PIECE_HEADER_LEN];
    header[..4].copy_from_slice(&((PIECE_HEADER_LEN - LENGTH_PREFIX + len) as u32).to_be_bytes());
    header[4] = 24;
    header[5..37].copy_from_slice(file);
    header[37..41].copy_from_slice(&piece.to_be_bytes());
    header[41..45].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(header)
}

/// The bytes that precede `len` bytes of file data in a data frame, for senders that write the
/// data from their own buffer. The same layout [`Frame::encode`] produces.
pub fn data_header(delivery: DeliveryId, len: usize) -> Result<[u8; 17], crate::EncodeError> {
    if len > MAX_CHUNK_LEN {
        return Err(crate::EncodeError::FieldTooLong { field: "data chunk", len });
    }
    let mut header = [0u8; 17];
    let frame_len = (1 + 8 + 4 + len) as u32; // at most 1 + 8 + 4 + MAX_CHUNK_LEN
    header[..4].copy_from_slice(&frame_len.to_be_bytes());
    header[4] = 9;
    header[5..13].copy_from_slice(&delivery.0.to_be_bytes());
    header[13..17].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(header)
}

/// The whole length (prefix included) of the frame that starts `buffer`, once its prefix is
/// there and valid: how many bytes a reader needs before [`decode`] can succeed.
pub fn declared_len(buffer: &[u8]) -> Option<usize> {
    let prefix = buffer.get(..LENGTH_PREFIX)?;
    let len = usize::try_from(u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]])).ok()?;
    (len > 0 && len <= MAX_FRAME_LEN).then_some(LENGTH_PREFIX + len)
}

/// Decodes one frame from the start of `buffer`: `Ok(None)` if more bytes are needed, else the
/// frame and how many bytes it took.
pub fn decode(buffer: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    decode_with(buffer, <[u8]>::to_vec)
}

/// [`decode`], with the bytes of a data frame copied out by `copy_data`: a receiver that keeps
/// spare buffers hands one out here instead of allocating for every chunk. `copy_data` is
/// called at most once, with a whole chunk of at most [`MAX_CHUNK_LEN`] bytes.
pub fn decode_with(
    buffer: &[u8],
    copy_data: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(prefix) = buffer.get(..LENGTH_PREFIX) else { return Ok(None) };
    let declared = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let len = usize::try_from(declared).unwrap_or(usize::MAX);
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(FrameError::BadLength(len));
    }
    let Some(body) = buffer.get(LENGTH_PREFIX..LENGTH_PREFIX + len) else { return Ok(None) };
    let mut reader = Reader::new(body);
    let frame = match reader.u8()? {
        1 => {
            let user = std::str::from_utf8(reader.short_bytes()?)
                .map_err(|_| DecodeError::invalid("user name", "not UTF-8"))
                .and_then(|name| UserName::new(name).map_err(|e| DecodeError::invalid("user name", e)))?;
            let password = std::str::from_utf8(reader.long_bytes("password", MAX_PASSWORD_LEN)?)
                .map_err(|_| DecodeError::invalid("password", "not UTF-8"))?;
            let password = Password::new(password.to_owned())?;
            let csr = reader.long_bytes("certificate signing request", MAX_CERTIFICATE_LEN)?.to_vec();
            Frame::EnrollRequest { user, password, csr }
        }
        2 => {
            let certificate = reader.long_bytes("certificate", MAX_CERTIFICATE_LEN)?.to_vec();
            let ca_certificate = reader.long_bytes("CA certificate", MAX_CERTIFICATE_LEN)?.to_vec();
            Frame::EnrollAccepted { certificate, ca_certificate }
        }
        3 => Frame::Refused { reason: read_text(&mut reader)? },
        32 => Frame::Progress { delivery: DeliveryId(reader.u64()?), bytes: reader.u64()? },
        31 => {
            let complete = match reader.u8()? {
                0 => false,
                1 => true,
                other => return Err(DecodeError::invalid("owed list flag", other.to_string()).into()),
            };
            let count = reader.u32()? as usize;
            if count > MAX_OWED {
                return Err(DecodeError::invalid("owed deliveries", format!("{count} deliveries")).into());
            }
            let mut deliveries = Vec::with_capacity(count.min(reader.remaining() / 8));
            for _ in 0..count {
                deliveries.push(DeliveryId(reader.u64()?));
            }
            Frame::Owed { deliveries, complete }
        }
        30 => {
            Frame::RenewRequest { csr: reader.long_bytes("certificate signing request", MAX_CERTIFICATE_LEN)?.to_vec() }
        }
        4 => Frame::Subscribe { groups: read_groups(&mut reader)? },
        5 => Frame::Subscribed,
        6 => Frame::Offer(read_offer(&mut reader)?),
        7 => Frame::Resume { delivery: DeliveryId(reader.u64()?), offset: reader.u64()? },
        8 => Frame::Decline { delivery: DeliveryId(reader.u64()?), reason: read_text(&mut reader)? },
        9 => {
            let delivery = DeliveryId(reader.u64()?);
            let len = u32::from_be_bytes(reader.array()?) as usize;
            if len > MAX_CHUNK_LEN {
                return Err(DecodeError::invalid("data chunk", format!("{len} bytes")).into());
            }
            Frame::Data { delivery, bytes: copy_data(reader.take(len)?) }
        }
        10 => Frame::Ack { delivery: DeliveryId(reader.u64()?) },
        11 => Frame::Failed { delivery: DeliveryId(reader.u64()?), reason: read_text(&mut reader)? },
        12 => Frame::Ping,
        13 => Frame::Pong,
        14 => Frame::Cancel { delivery: DeliveryId(reader.u64()?), reason: read_text(&mut reader)? },
        15 => Frame::Busy { reason: read_text(&mut reader)? },
        29 => Frame::CannotStore { delivery: DeliveryId(reader.u64()?), reason: read_text(&mut reader)? },
        16 => {
            let groups = read_groups(&mut reader)?;
            let port = reader.u16()?;
            Frame::SubscribeSwarm { groups, peer_port: (port != 0).then_some(port) }
        }
        17 => {
            let offer = read_offer(&mut reader)?;
            let piece_len = reader.u32()?;
            let whole_blocks = (piece_len as usize).is_multiple_of(crate::chain::BLOCK);
            if piece_len == 0 || piece_len as usize > crate::swarm::MAX_PIECE_LEN || !whole_blocks {
                return Err(DecodeError::invalid("piece length", format!("{piece_len} bytes")).into());
            }
            Frame::SwarmOffer { offer, piece_len }
        }
        18 => Frame::SwarmAccept { delivery: DeliveryId(reader.u64()?), have: read_bitfield(&mut reader)? },
        19 => {
            let delivery = DeliveryId(reader.u64()?);
            let first = reader.u32()?;
            let count = reader.u32()? as usize;
            if count > MAX_HASHES_PER_FRAME {
                return Err(DecodeError::invalid("piece hashes", format!("{count} hashes")).into());
            }
            let mut hashes = Vec::with_capacity(count.min(reader.remaining() / 32));
            for _ in 0..count {
                hashes.push(reader.array()?);
            }
            Frame::PieceHashes { delivery, first, hashes }
        }
        20 => {
            let file = reader.array()?;
            let count = usize::from(reader.u16()?);
            if count > MAX_PEERS {
                return Err(DecodeError::invalid("peer list", format!("{count} peers")).into());
            }
            let mut peers = Vec::with_capacity(count.min(reader.remaining() / 33));
            for _ in 0..count {
                let certificate = crate::Fingerprint(reader.array()?);
                let address = match reader.short_bytes()? {
                    [] => None,
                    text => Some(
                        std::str::from_utf8(text)
                            .ok()
                            .and_then(|text| text.parse().ok())
                            .ok_or(DecodeError::invalid("peer address", "not an IP address and port"))?,
                    ),
                };
                peers.push(PeerInfo { certificate, address });
            }
            Frame::Peers { file, peers }
        }
        21 => Frame::NextPiece { file: reader.array()? },
        22 => Frame::NoNewPiece { file: reader.array()? },
        23 => Frame::PieceRequest { file: reader.array()?, piece: reader.u32()? },
        24 => {
            let file = reader.array()?;
            let piece = reader.u32()?;
            let len = reader.u32()? as usize;
            if len > crate::swarm::MAX_PIECE_LEN {
                return Err(DecodeError::invalid("piece", format!("{len} bytes")).into());
            }
            Frame::Piece { file, piece, bytes: copy_data(reader.take(len)?) }
        }
        25 => Frame::PieceRefused { file: reader.array()?, piece: reader.u32()?, reason: read_text(&mut reader)? },
        26 => Frame::Bitfield { file: reader.array()?, have: read_bitfield(&mut reader)? },
        27 => Frame::Have { file: reader.array()?, piece: reader.u32()? },
        28 => {
            let delivery = DeliveryId(reader.u64()?);
            let from_server = reader.u64()?;
            let from_peers = reader.u64()?;
            let count = usize::from(reader.u16()?);
            if count > MAX_PEERS {
                return Err(DecodeError::invalid("peer list", format!("{count} peers")).into());
            }
            let mut bad_peers = Vec::with_capacity(count.min(reader.remaining() / 32));
            for _ in 0..count {
                bad_peers.push(crate::Fingerprint(reader.array()?));
            }
            Frame::SwarmDone { delivery, from_server, from_peers, bad_peers }
        }
        other => return Err(FrameError::UnknownType(other)),
    };
    reader.finish()?;
    Ok(Some((frame, LENGTH_PREFIX + len)))
}

fn read_groups(reader: &mut Reader<'_>) -> Result<Vec<GroupName>, DecodeError> {
    let count = usize::from(reader.u8()?);
    if count > MAX_SUBSCRIPTIONS {
        return Err(DecodeError::invalid("group list", format!("{count} groups")));
    }
    let mut groups = Vec::with_capacity(count);
    for _ in 0..count {
        let name =
            std::str::from_utf8(reader.short_bytes()?).map_err(|_| DecodeError::invalid("group name", "not UTF-8"))?;
        groups.push(GroupName::new(name).map_err(|e| DecodeError::invalid("group name", e))?);
    }
    Ok(groups)
}

fn read_offer(reader: &mut Reader<'_>) -> Result<Offer, DecodeError> {
    let delivery = DeliveryId(reader.u64()?);
    let group = std::str::from_utf8(reader.short_bytes()?)
        .map_err(|_| DecodeError::invalid("group name", "not UTF-8"))
        .and_then(|name| GroupName::new(name).map_err(|e| DecodeError::invalid("group name", e)))?;
    let name = reader.long_bytes("file name", crate::names::MAX_PATH_LEN)?.to_vec();
    let size = reader.u64()?;
    let sha256 = reader.array()?;
    Ok(Offer { delivery, group, name, size, sha256 })
}

fn read_bitfield(reader: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    let len = reader.u32()? as usize;
    if len > MAX_BITFIELD_LEN {
        return Err(DecodeError::invalid("bitfield", format!("{len} bytes")));
    }
    Ok(reader.take(len)?.to_vec())
}

fn read_text(reader: &mut Reader<'_>) -> Result<Text, DecodeError> {
    let text = reader.long_bytes("text", MAX_REFUSAL_LEN)?;
    if !text.iter().all(|&b| b.is_ascii_graphic() || b == b' ') {
        return Err(DecodeError::invalid("text", "not printable ASCII"));
    }
    Ok(Text(String::from_utf8_lossy(text).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enroll() -> Frame {
        Frame::EnrollRequest {
            user: UserName::new("alice").unwrap(),
            password: Password::new("correct horse".into()).unwrap(),
            csr: vec![0x30; 300],
        }
    }

    #[test]
    fn declared_len_is_known_once_a_valid_prefix_is_there() {
        let frame = Frame::Ping.encode().unwrap();
        assert_eq!(declared_len(&frame[..3]), None);
        assert_eq!(declared_len(&frame), Some(frame.len()));
        assert_eq!(declared_len(&[0, 0, 0, 0]), None, "zero length");
        assert_eq!(declared_len(&[0x7f, 0xff, 0xff, 0xff]), None, "beyond the maximum");
    }

    #[test]
    fn an_offer_names_a_path_of_up_to_4096_bytes() {
        let offer = |len: usize| {
            Frame::Offer(Offer {
                delivery: DeliveryId(1),
                group: "Developers".parse().unwrap(),
                name: vec![b'a'; len],
                size: 1,
                sha256: [0; 32],
            })
        };
        let longest = offer(crate::names::MAX_PATH_LEN);
        let bytes = longest.encode().unwrap();
        assert_eq!(decode(&bytes).unwrap(), Some((longest, bytes.len())));
        assert!(offer(crate::names::MAX_PATH_LEN + 1).encode().is_err());
    }

    /// One frame of every kind, with the fields at interesting sizes.
    fn samples() -> Vec<Frame> {
        vec![
            enroll(),
            Frame::EnrollAccepted { certificate: vec![1; 500], ca_certificate: vec![2; 400] },
            Frame::Refused { reason: Text::new("wrong user name or password") },
            Frame::Subscribe { groups: vec!["Developers".parse().unwrap(), "Designers".parse().unwrap()] },
            Frame::Subscribed,
            Frame::Offer(Offer {
                delivery: DeliveryId(7),
                group: "Developers".parse().unwrap(),
                name: b"../../etc/passwd".to_vec(),
                size: 1 << 40,
                sha256: [9; 32],
            }),
            Frame::Resume { delivery: DeliveryId(7), offset: 12345 },
            Frame::Decline { delivery: DeliveryId(7), reason: Text::new("unsafe name") },
            Frame::Data { delivery: DeliveryId(7), bytes: vec![0xab; MAX_CHUNK_LEN] },
            Frame::Ack { delivery: DeliveryId(7) },
            Frame::Failed { delivery: DeliveryId(7), reason: Text::new("hash mismatch") },
            Frame::Ping,
            Frame::Pong,
            Frame::Cancel { delivery: DeliveryId(7), reason: Text::new("left the group") },
            Frame::CannotStore { delivery: DeliveryId(7), reason: Text::new("no space left on the device") },
            Frame::RenewRequest { csr: vec![0x30; 300] },
            Frame::Owed { deliveries: vec![DeliveryId(3), DeliveryId(1 << 40)], complete: true },
            Frame::Owed { deliveries: vec![], complete: false },
            Frame::Progress { delivery: DeliveryId(7), bytes: 1 << 33 },
            Frame::Busy { reason: Text::new("server full") },
            Frame::SubscribeSwarm { groups: vec!["Developers".parse().unwrap()], peer_port: Some(7444) },
            Frame::SubscribeSwarm { groups: vec!["Developers".parse().unwrap()], peer_port: None },
            Frame::SwarmOffer {
                offer: Offer {
                    delivery: DeliveryId(7),
                    group: "Developers".parse().unwrap(),
                    // A path inside a sent tree, longer than one file name may be.
                    name: [&b"images/"[..], &[b'd'; 300], b"/big.iso"].concat(),
                    size: 1 << 30,
                    sha256: [3; 32],
                },
                piece_len: 512 * 1024,
            },
            Frame::SwarmAccept { delivery: DeliveryId(7), have: vec![0xf0, 0x01] },
            Frame::PieceHashes { delivery: DeliveryId(7), first: 16, hashes: vec![[1; 32], [2; 32]] },
            Frame::Peers {
                file: [4; 32],
                peers: vec![
                    PeerInfo {
                        certificate: crate::Fingerprint([5; 32]),
                        address: Some("192.0.2.3:7444".parse().unwrap()),
                    },
                    PeerInfo { certificate: crate::Fingerprint([6; 32]), address: None },
                ],
            },
            Frame::NextPiece { file: [4; 32] },
            Frame::NoNewPiece { file: [4; 32] },
            Frame::PieceRequest { file: [4; 32], piece: 9 },
            Frame::Piece { file: [4; 32], piece: 9, bytes: vec![0x5a; crate::swarm::MAX_PIECE_LEN] },
            Frame::PieceRefused { file: [4; 32], piece: 9, reason: Text::new("not named for this file") },
            Frame::Bitfield { file: [4; 32], have: vec![0xff; 64] },
            Frame::Have { file: [4; 32], piece: 10 },
            Frame::SwarmDone {
                delivery: DeliveryId(7),
                from_server: 1,
                from_peers: 2,
                bad_peers: vec![crate::Fingerprint([7; 32])],
            },
        ]
    }

    /// Writes one file per sample frame into the fuzz target's seed corpus. Run by hand after
    /// adding a frame kind: `cargo test -p gshare-proto write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/seeds/frame; run by hand"]
    fn write_fuzz_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/frame");
        std::fs::create_dir_all(&dir).unwrap();
        let small = [
            Frame::Data { delivery: DeliveryId(7), bytes: vec![0xab; 100] },
            Frame::Piece { file: [4; 32], piece: 9, bytes: vec![0x5a; 100] },
        ];
        // Frames above libFuzzer's default input size are left out; the small ones above stand
        // in for them.
        for frame in samples().into_iter().chain(small) {
            let bytes = frame.encode().unwrap();
            if bytes.len() > 4096 {
                continue;
            }
            std::fs::write(dir.join(format!("{:02}", bytes[4])), bytes).unwrap();
        }
    }

    #[test]
    fn round_trips_and_partial_input() {
        for frame in samples() {
            let bytes = frame.encode().unwrap();
            assert_eq!(decode(&bytes).unwrap(), Some((frame.clone(), bytes.len())));
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]).unwrap(), None, "a prefix of {cut} bytes needs more");
            }
            let mut two = bytes.clone();
            two.extend_from_slice(&bytes);
            assert_eq!(decode(&two).unwrap(), Some((frame, bytes.len())), "the second frame is left in the buffer");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(decode(&[0, 0, 0, 0]), Err(FrameError::BadLength(0)));
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff]), Err(FrameError::BadLength(0xffff_ffff)));
        assert_eq!(decode(&[0, 0, 0, 1, 99]), Err(FrameError::UnknownType(99)));
        // A declared length that does not match the fields.
        let mut bytes = enroll().encode().unwrap();
        bytes[3] += 1;
        bytes.push(0);
        assert!(matches!(decode(&bytes), Err(FrameError::Payload(DecodeError::TrailingBytes(1)))));
        let mut control = Frame::Refused { reason: Text::new("x") }.encode().unwrap();
        *control.last_mut().unwrap() = 0x1b;
        assert!(matches!(decode(&control), Err(FrameError::Payload(DecodeError::InvalidField { .. }))));
        // A data frame larger than a chunk, even if the frame length would allow it.
        let mut big = Frame::Data { delivery: DeliveryId(1), bytes: vec![0; 8] }.encode().unwrap();
        big[13..17].copy_from_slice(&((MAX_CHUNK_LEN + 1) as u32).to_be_bytes());
        assert!(matches!(decode(&big), Err(FrameError::Payload(DecodeError::InvalidField { .. }))));
        assert!(Frame::Data { delivery: DeliveryId(1), bytes: vec![0; MAX_CHUNK_LEN + 1] }.encode().is_err());
        let mut by_header = data_header(DeliveryId(3), 5).unwrap().to_vec();
        by_header.extend_from_slice(b"hello");
        assert_eq!(by_header, Frame::Data { delivery: DeliveryId(3), bytes: b"hello".to_vec() }.encode().unwrap());
        assert!(Password::new(String::new()).is_err());
        assert!(Password::new("x".repeat(MAX_PASSWORD_LEN + 1)).is_err());
        assert_eq!(format!("{:?}", Password::new("secret".into()).unwrap()), "Password(..)");
    }

    #[test]
    fn the_largest_requests_fit_a_strangers_limit() {
        let enroll = Frame::EnrollRequest {
            user: UserName::new(&"u".repeat(crate::names::MAX_USER_NAME_LEN)).unwrap(),
            password: Password::new("p".repeat(MAX_PASSWORD_LEN)).unwrap(),
            csr: vec![7; MAX_CERTIFICATE_LEN],
        };
        let groups = (0..MAX_SUBSCRIPTIONS)
            .map(|i| GroupName::new(&format!("G{i:0>width$}", width = crate::names::MAX_GROUP_NAME_LEN - 1)).unwrap())
            .collect();
        for frame in [enroll, Frame::Subscribe { groups }] {
            assert!(frame.encode().unwrap().len() <= MAX_REQUEST_LEN + LENGTH_PREFIX);
        }
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn enroll_request_round_trip(
            user in "[a-z0-9][a-z0-9._@-]{0,63}",
            password in "\\PC{1,100}",
            csr in proptest::collection::vec(any::<u8>(), 0..MAX_CERTIFICATE_LEN),
        ) {
            let frame = Frame::EnrollRequest {
                user: UserName::new(&user).unwrap(),
                password: Password::new(password).unwrap(),
                csr,
            };
            let bytes = frame.encode().unwrap();
            prop_assert_eq!(decode(&bytes).unwrap(), Some((frame, bytes.len())));
        }
    }
}
