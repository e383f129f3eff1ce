//! gshare's wire formats and protocol state, as pure functions over bytes.
//!
//! Nothing here opens a socket or reads a clock: callers pass the bytes they received and the
//! time it is now, and get typed values or typed errors back. That keeps every decoder easy to
//! test exhaustively (round trips, "never panics", fuzzing) and keeps the server and client free
//! to choose their own IO.
//!
//! # Message flow
//!
//! ```text
//!  client                                  server
//!    │  ListRequest (unsigned: nonce only)    │
//!    │ ─────────── multicast ───────────────▶ │  rate-limited
//!    │                                        │
//!    │  Announcement 1/n .. n/n (signed: CA   │
//!    │  certificate, TLS address, groups)     │
//!    │ ◀────────── multicast ──────────────── │  also every announce interval
//!    │                                        │
//!    │  EnrollRequest (user, password, CSR)   │
//!    │ ═══════════ TLS 1.3 ═════════════════▶ │  password checked (argon2id)
//!    │  EnrollAccepted (certificate, CA)      │
//!    │ ◀═══════════════════════════════════   │  or Refused (reason)
//!    │                                        │
//!    │  JoinRequest / LeaveRequest (signed by │
//!    │  the member's key)                     │
//!    │ ─────────── multicast ───────────────▶ │  checked against the state store
//!    │  MembershipReply (signed by the CA)    │
//!    │ ◀────────── unicast ────────────────── │
//! ```
//!
//! Every datagram carries a version, its kind, a timestamp and a random nonce; every datagram
//! that states a fact is signed, and receivers run it through a [`ReplayGuard`] after checking
//! the signature.
//!
//! # Layout
//!
//! - [`names`]: newtypes for the names that cross a trust boundary (`GroupName`, `ServerAddress`).
//! - [`fingerprint`]: the SHA-256 fingerprint of a CA certificate and its `SHA256:hex` text form.
//! - [`datagram`]: the multicast envelope (header, body, signature) and its encoder and decoder.
//! - [`announce`]: the announcement body and how a group list is split over datagrams.
//! - [`membership`]: signed join and leave requests, and the server's signed replies.
//! - [`frame`]: the framing of messages inside TLS sessions (enrollment, later file transfer).
//! - [`freshness`]: the staleness window and replay cache, driven by an injected clock.
//! - [`swarm`]: files in pieces, bitfields, and a member's piece scheduler (which piece to ask
//!   for, from whom), driven by events and an injected clock.

pub mod announce;
pub mod chain;
pub mod datagram;
pub mod fingerprint;
pub mod frame;
pub mod freshness;
pub mod membership;
pub mod names;
pub mod swarm;
mod wire;

pub use announce::Announcement;
pub use datagram::{
    Datagram, DecodeError, Decoded, EncodeError, MAX_DATAGRAM_LEN, Message, Nonce, SIGNATURE_LEN, Signature, Signer,
    SigningFailed, UnixMillis,
};
pub use fingerprint::Fingerprint;
pub use freshness::{Rejection, ReplayGuard};
pub use names::{FileName, GroupName, RelativePath, ServerAddress, UserName};
