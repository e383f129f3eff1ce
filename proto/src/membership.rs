//! Joining and leaving groups over multicast: the member's signed request and the server's
//! signed reply.
//!
//! ```text
//!  JoinRequest / LeaveRequest body (signed by the member's enrolled key)
//!    certificate   32   SHA-256 fingerprint of the member's certificate
//!    group          1 (length) + n
//!
//!  MembershipReply body (signed by the server's CA key, sent unicast to the requester)
//!    request nonce 16   the nonce of the request this answers
//!    group          1 (length) + n
//!    outcome        1   0 accepted, otherwise a refusal code
//!    message        1 (length) + n, printable ASCII, empty when accepted
//! ```
//!
//! The request names the certificate rather than carrying it: the server issued it and keeps
//! it, and looks it up to verify the signature and the member's standing. The reply echoes the
//! request's nonce so a client can tell its own answer from any other, or from a replay.

use crate::datagram::{DecodeError, EncodeError, NONCE_LEN, Nonce};
use crate::fingerprint::Fingerprint;
use crate::names::GroupName;
use crate::wire::{Reader, put_short_bytes};

/// Longest refusal message, in bytes.
pub const MAX_REFUSAL_MESSAGE_LEN: usize = 200;

/// A member asking to join or leave a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipRequest {
    /// Fingerprint of the member's certificate, whose key signed the request.
    pub certificate: Fingerprint,
    pub group: GroupName,
}

/// The server's answer to a [`MembershipRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipReply {
    /// The nonce of the request answered.
    pub request_nonce: Nonce,
    pub group: GroupName,
    pub outcome: Outcome,
}

/// Whether the request was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Refused { code: RefusalCode, message: RefusalMessage },
}

/// Why a membership request was refused, for programs; the message says it for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// The user may not join this group.
    NotAllowed = 1,
    /// The server has no such group.
    UnknownGroup = 2,
    /// The server did not issue this certificate.
    UnknownCertificate = 3,
    /// The certificate was revoked, or the user removed or disabled.
    Revoked = 4,
    /// The certificate has expired.
    Expired = 5,
    /// The server could not decide (for example its database failed).
    Internal = 6,
}

impl RefusalCode {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => RefusalCode::NotAllowed,
            2 => RefusalCode::UnknownGroup,
            3 => RefusalCode::UnknownCertificate,
            4 => RefusalCode::Revoked,
            5 => RefusalCode::Expired,
            6 => RefusalCode::Internal,
            _ => return None,
        })
    }
}

/// Printable ASCII text of at most [`MAX_REFUSAL_MESSAGE_LEN`] bytes: safe to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalMessage(String);

impl RefusalMessage {
    /// Keeps printable ASCII only, cut to the length limit: the server's own text always fits.
    pub fn new(text: &str) -> Self {
        let clean: String = text
            .chars()
            .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
            .take(MAX_REFUSAL_MESSAGE_LEN)
            .collect();
        Self(clean)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl MembershipRequest {
    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.certificate.0);
        put_short_bytes(out, self.group.as_str().as_bytes());
    }

    pub(crate) fn decode_body(mut reader: Reader<'_>) -> Result<Self, DecodeError> {
        let certificate = Fingerprint(reader.array()?);
        let group = decode_group(&mut reader)?;
        reader.finish()?;
        Ok(Self { certificate, group })
    }
}

impl MembershipReply {
    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.extend_from_slice(&self.request_nonce.0);
        put_short_bytes(out, self.group.as_str().as_bytes());
        match &self.outcome {
            Outcome::Accepted => {
                out.push(0);
                out.push(0);
            }
            Outcome::Refused { code, message } => {
                out.push(*code as u8);
                put_short_bytes(out, message.as_str().as_bytes());
            }
        }
        Ok(())
    }

    pub(crate) fn decode_body(mut reader: Reader<'_>) -> Result<Self, DecodeError> {
        let request_nonce = Nonce(reader.array::<NONCE_LEN>()?);
        let group = decode_group(&mut reader)?;
        let code = reader.u8()?;
        let message = reader.short_bytes()?;
        let outcome = match code {
            0 if message.is_empty() => Outcome::Accepted,
            0 => return Err(DecodeError::invalid("reply", "an acceptance carries no message")),
            code => {
                let code = RefusalCode::from_byte(code).ok_or_else(|| DecodeError::invalid("refusal code", code))?;
                let printable = message.len() <= MAX_REFUSAL_MESSAGE_LEN
                    && message.iter().all(|&b| b.is_ascii_graphic() || b == b' ');
                if !printable {
                    return Err(DecodeError::invalid("refusal message", "not printable ASCII"));
                }
                // Printable ASCII is valid UTF-8.
                Outcome::Refused { code, message: RefusalMessage(String::from_utf8_lossy(message).into_owned()) }
            }
        };
        reader.finish()?;
        Ok(Self { request_nonce, group, outcome })
    }
}

fn decode_group(reader: &mut Reader<'_>) -> Result<GroupName, DecodeError> {
    let name =
        std::str::from_utf8(reader.short_bytes()?).map_err(|_| DecodeError::invalid("group name", "not UTF-8"))?;
    GroupName::new(name).map_err(|e| DecodeError::invalid("group name", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_messages_are_made_printable_and_short() {
        let message = RefusalMessage::new("bad\u{1b}[31m\nname");
        assert_eq!(message.as_str(), "bad?[31m?name");
        assert_eq!(RefusalMessage::new(&"x".repeat(500)).as_str().len(), MAX_REFUSAL_MESSAGE_LEN);
    }
}
