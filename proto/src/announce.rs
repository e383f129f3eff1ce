//! The announcement: a server telling the LAN where it is, which CA it holds, and its groups.
//!
//! ```text
//!  body field        size
//!  ca certificate    2 (length) + n, DER, at most MAX_CA_CERTIFICATE_LEN
//!  server address    1 (length) + n, "HOST:PORT"
//!  part, parts       1 + 1           this datagram is part `part` (from 0) of `parts`
//!  groups            1 (count) + count × (1 (length) + n)
//! ```
//!
//! The CA certificate travels whole so that even a client that has pinned nothing yet can check
//! that the announcement was signed by the key of the CA whose fingerprint it shows; a client
//! that has pinned a CA also checks that the fingerprint is the pinned one. A group list too long
//! for one datagram is split by [`Announcement::split`] into parts that share everything else.

use crate::datagram::{DecodeError, EncodeError, HEADER_LEN, MAX_DATAGRAM_LEN, SIGNATURE_LEN};
use crate::names::{GroupName, ServerAddress};
use crate::wire::{Reader, put_short_bytes};

/// Largest CA certificate an announcement may carry, in bytes. gshare's own P-256 CA
/// certificate is around 400 bytes; this leaves room for a longer subject.
pub const MAX_CA_CERTIFICATE_LEN: usize = 800;

/// One part of a server's announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The server's CA certificate, DER. Its SHA-256 is the fingerprint members pin, and its key
    /// signs this datagram.
    pub ca_certificate: Vec<u8>,
    /// Where members open TLS sessions.
    pub server: ServerAddress,
    /// Index of this part, from 0.
    pub part: u8,
    /// How many parts the group list was split into, at least 1.
    pub parts: u8,
    /// The groups listed in this part.
    pub groups: Vec<GroupName>,
}

impl Announcement {
    /// Splits `groups` over as few announcements as fit in [`MAX_DATAGRAM_LEN`] each.
    pub fn split(
        ca_certificate: &[u8],
        server: &ServerAddress,
        groups: &[GroupName],
    ) -> Result<Vec<Announcement>, EncodeError> {
        if ca_certificate.len() > MAX_CA_CERTIFICATE_LEN {
            return Err(EncodeError::FieldTooLong { field: "CA certificate", len: ca_certificate.len() });
        }
        let fixed = HEADER_LEN + 2 + ca_certificate.len() + 1 + server.as_str().len() + 2 + 1 + SIGNATURE_LEN;
        let room = MAX_DATAGRAM_LEN.saturating_sub(fixed);
        let mut chunks: Vec<Vec<GroupName>> = vec![Vec::new()];
        let mut used = 0;
        for group in groups {
            let cost = 1 + group.as_str().len();
            if cost > room {
                return Err(EncodeError::TooLarge(fixed + cost));
            }
            // `chunks` starts non-empty and only grows, so `last_mut` always finds a chunk.
            let full = used + cost > room || chunks.last().is_some_and(|chunk| chunk.len() == usize::from(u8::MAX));
            if full {
                chunks.push(Vec::new());
                used = 0;
            }
            if let Some(chunk) = chunks.last_mut() {
                chunk.push(group.clone());
            }
            used += cost;
        }
        let parts = u8::try_from(chunks.len())
            .map_err(|_| EncodeError::FieldTooLong { field: "group list", len: groups.len() })?;
        Ok(chunks
            .into_iter()
            .enumerate()
            .map(|(part, groups)| Announcement {
                ca_certificate: ca_certificate.to_vec(),
                server: server.clone(),
                part: part as u8, // part < parts <= 255
                parts,
                groups,
            })
            .collect())
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let certificate_len = u16::try_from(self.ca_certificate.len())
            .ok()
            .filter(|&len| usize::from(len) <= MAX_CA_CERTIFICATE_LEN)
            .ok_or(EncodeError::FieldTooLong { field: "CA certificate", len: self.ca_certificate.len() })?;
        let group_count = u8::try_from(self.groups.len())
            .map_err(|_| EncodeError::FieldTooLong { field: "group list", len: self.groups.len() })?;
        out.extend_from_slice(&certificate_len.to_be_bytes());
        out.extend_from_slice(&self.ca_certificate);
        put_short_bytes(out, self.server.as_str().as_bytes());
        out.push(self.part);
        out.push(self.parts);
        out.push(group_count);
        for group in &self.groups {
            put_short_bytes(out, group.as_str().as_bytes());
        }
        Ok(())
    }

    pub(crate) fn decode_body(mut reader: Reader<'_>) -> Result<Self, DecodeError> {
        let certificate_len = usize::from(reader.u16()?);
        if certificate_len > MAX_CA_CERTIFICATE_LEN {
            return Err(DecodeError::invalid("CA certificate", format!("{certificate_len} bytes")));
        }
        let ca_certificate = reader.take(certificate_len)?.to_vec();
        let server = std::str::from_utf8(reader.short_bytes()?)
            .map_err(|_| DecodeError::invalid("server address", "not UTF-8"))
            .and_then(|text| ServerAddress::new(text).map_err(|e| DecodeError::invalid("server address", e)))?;
        let part = reader.u8()?;
        let parts = reader.u8()?;
        if parts == 0 || part >= parts {
            return Err(DecodeError::invalid("part number", format!("{part} of {parts}")));
        }
        let group_count = reader.u8()?;
        // Each group takes at least two bytes, so a count the rest cannot hold is a lie.
        if usize::from(group_count) * 2 > reader.remaining() {
            return Err(DecodeError::Truncated);
        }
        let mut groups = Vec::with_capacity(usize::from(group_count));
        for _ in 0..group_count {
            let name = std::str::from_utf8(reader.short_bytes()?)
                .map_err(|_| DecodeError::invalid("group name", "not UTF-8"))?;
            groups.push(GroupName::new(name).map_err(|e| DecodeError::invalid("group name", e))?);
        }
        reader.finish()?;
        Ok(Announcement { ca_certificate, server, part, parts, groups })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datagram::{Datagram, Message, Nonce, Signature, Signer, SigningFailed, UnixMillis, decode};

    struct ZeroSigner;
    impl Signer for ZeroSigner {
        fn sign(&self, _: &[u8]) -> Result<Signature, SigningFailed> {
            Ok([0; SIGNATURE_LEN])
        }
    }

    fn groups(count: usize, len: usize) -> Vec<GroupName> {
        (0..count).map(|i| GroupName::new(&format!("g{i:0>width$}", width = len - 1)).unwrap()).collect()
    }

    #[test]
    fn a_short_list_fits_one_part() {
        let server = ServerAddress::new("127.0.0.1:7443").unwrap();
        let parts = Announcement::split(&[1; 400], &server, &groups(2, 10)).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!((parts[0].part, parts[0].parts, parts[0].groups.len()), (0, 1, 2));
    }

    #[test]
    fn a_long_list_is_split_and_every_part_fits() {
        let server = ServerAddress::new("gshare.example.org:7443").unwrap();
        let all = groups(100, 64);
        let parts = Announcement::split(&[1; 450], &server, &all).unwrap();
        assert!(parts.len() > 1);
        let mut seen = Vec::new();
        for (index, part) in parts.iter().enumerate() {
            assert_eq!((usize::from(part.part), usize::from(part.parts)), (index, parts.len()));
            let datagram = Datagram {
                timestamp: UnixMillis(0),
                nonce: Nonce([0; 16]),
                message: Message::Announcement(part.clone()),
            };
            let bytes = datagram.encode(Some(&ZeroSigner)).unwrap();
            assert!(bytes.len() <= MAX_DATAGRAM_LEN);
            assert_eq!(decode(&bytes).unwrap().datagram, datagram);
            seen.extend(part.groups.iter().cloned());
        }
        assert_eq!(seen, all);
    }

    #[test]
    fn an_oversized_certificate_is_refused() {
        let server = ServerAddress::new("127.0.0.1:7443").unwrap();
        assert!(Announcement::split(&vec![0; MAX_CA_CERTIFICATE_LEN + 1], &server, &[]).is_err());
    }

    #[test]
    fn bad_part_numbers_are_refused() {
        let server = ServerAddress::new("127.0.0.1:7443").unwrap();
        for (part, parts) in [(0, 0), (1, 1), (5, 2)] {
            let announcement =
                Announcement { ca_certificate: vec![1], server: server.clone(), part, parts, groups: vec![] };
            let datagram = Datagram {
                timestamp: UnixMillis(0),
                nonce: Nonce([0; 16]),
                message: Message::Announcement(announcement),
            };
            let bytes = datagram.encode(Some(&ZeroSigner)).unwrap();
            assert!(matches!(decode(&bytes), Err(DecodeError::InvalidField { field: "part number", .. })));
        }
    }
}
