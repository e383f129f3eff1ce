//! Bounds-checked reading and plain writing of the primitive fields every message is built from.
//!
//! All multi-byte integers are big-endian. Variable-length fields carry their length first and
//! the reader checks it against what is left before slicing, so a lying length is an error, not
//! a panic or an allocation.

use crate::datagram::DecodeError;

/// A cursor over a received byte slice that never reads past its end.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.bytes.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A field with a one-byte length prefix.
    pub(crate) fn short_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    /// A field with a two-byte length prefix, refused if longer than `max`.
    pub(crate) fn long_bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::invalid(field, format!("{len} bytes, the limit is {max}")));
        }
        self.take(len)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Fails unless every byte was consumed: trailing bytes mean the sender and we disagree.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes(self.bytes.len())) }
    }
}

/// Appends a field with a two-byte length prefix; callers guarantee `bytes.len() <= 65535`
/// because every such field has a smaller maximum checked before encoding.
pub(crate) fn put_long_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    debug_assert!(bytes.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Appends a field with a one-byte length prefix; callers guarantee `bytes.len() <= 255`
/// because every such field is a validated newtype with a smaller maximum.
pub(crate) fn put_short_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    debug_assert!(bytes.len() <= usize::from(u8::MAX));
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}
