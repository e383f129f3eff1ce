//! The fingerprint that pins a gshare server's CA: SHA-256 over the CA certificate's DER bytes,
//! the same value `openssl x509 -noout -fingerprint -sha256` prints.
//!
//! Its text form is `SHA256:` followed by 64 lowercase hex digits. Parsing also accepts
//! uppercase, a missing prefix, and the colon-separated pairs that openssl prints, because
//! people paste fingerprints from wherever they found them.

use std::fmt;
use std::str::FromStr;

/// SHA-256 of a CA certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

/// Why a fingerprint did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a fingerprint is SHA256: followed by 64 hex digits (got {0} hex digits)")]
pub struct FingerprintError(usize);

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let hex = match text.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &text[7..],
            _ => text,
        };
        let digits: Vec<u8> = hex.bytes().filter(|&b| b != b':').collect();
        if digits.len() != 64 {
            return Err(FingerprintError(digits.len()));
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let high = hex_value(pair[0]).ok_or(FingerprintError(digits.len()))?;
            let low = hex_value(pair[1]).ok_or(FingerprintError(digits.len()))?;
            *byte = high << 4 | low;
        }
        Ok(Self(out))
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SHA256:")?;
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_lenient_parsing() {
        let fingerprint = Fingerprint(std::array::from_fn(|i| i as u8 * 7));
        let text = fingerprint.to_string();
        assert!(text.starts_with("SHA256:") && text.len() == 7 + 64);
        assert_eq!(text.parse::<Fingerprint>(), Ok(fingerprint));
        assert_eq!(text[7..].to_uppercase().parse::<Fingerprint>(), Ok(fingerprint));
        let openssl: Vec<String> = fingerprint.0.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(format!("sha256:{}", openssl.join(":")).parse::<Fingerprint>(), Ok(fingerprint));
    }

    #[test]
    fn refuses_wrong_lengths_and_non_hex() {
        assert!("SHA256:abcd".parse::<Fingerprint>().is_err());
        assert!(format!("SHA256:{}", "g".repeat(64)).parse::<Fingerprint>().is_err());
        assert!(format!("SHA256:{}", "é".repeat(32)).parse::<Fingerprint>().is_err());
        assert!("".parse::<Fingerprint>().is_err());
    }
}
