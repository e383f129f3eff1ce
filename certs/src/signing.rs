//! Signatures on multicast datagrams: ECDSA P-256 with SHA-256, in the fixed 64-byte `r || s`
//! form so that every signature has the same length on the wire.
//!
//! The signing key is the PKCS#8 key stored beside a certificate; the verifying key is taken
//! from the certificate itself, so a receiver who trusts a certificate (by its pinned
//! fingerprint, or because its CA issued it) can check a datagram with nothing else.

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::CertError;
use gshare_proto::{Signature, Signer, SigningFailed};

/// Signs datagrams with an ECDSA P-256 private key.
pub struct DatagramSigner {
    key: EcdsaKeyPair,
    random: SystemRandom,
}

impl std::fmt::Debug for DatagramSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramSigner").finish_non_exhaustive()
    }
}

impl DatagramSigner {
    /// Loads a PKCS#8 DER ECDSA P-256 private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CertError> {
        let random = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &random)
            .map_err(|e| CertError::BadKey(e.to_string()))?;
        Ok(Self { key, random })
    }

    /// The uncompressed public point, as found in the matching certificate.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }
}

impl Signer for DatagramSigner {
    fn sign(&self, message: &[u8]) -> Result<Signature, SigningFailed> {
        let signature = self.key.sign(&self.random, message).map_err(|_| SigningFailed)?;
        signature.as_ref().try_into().map_err(|_| SigningFailed)
    }
}

/// The public key of a certificate, for checking signatures made with its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    /// Uncompressed SEC1 point.
    point: Vec<u8>,
}

impl VerifyingKey {
    /// Takes the public key out of a DER certificate; only ECDSA P-256 keys are accepted.
    pub fn from_certificate(certificate_der: &[u8]) -> Result<Self, CertError> {
        let (rest, certificate) =
            X509Certificate::from_der(certificate_der).map_err(|e| CertError::BadCertificate(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertError::BadCertificate("trailing bytes after the certificate".into()));
        }
        let public_key = certificate.public_key();
        let curve = public_key.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        if public_key.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
            return Err(CertError::BadCertificate("the key is not ECDSA P-256".into()));
        }
        Ok(Self { point: public_key.subject_public_key.data.to_vec() })
    }

    /// Whether `signature` (fixed `r || s` form) is this key's signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &self.point).verify(message, signature).is_ok()
    }

    /// Whether `signature` (ASN.1 DER form, as in certificates) is this key's signature.
    pub(crate) fn verify_asn1(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &self.point).verify(message, signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateAuthority;
    use time::OffsetDateTime;

    #[test]
    fn signatures_verify_only_with_the_matching_certificate_and_message() {
        let ca = CertificateAuthority::generate("a", OffsetDateTime::now_utc()).unwrap();
        let other = CertificateAuthority::generate("b", OffsetDateTime::now_utc()).unwrap();
        let signature = ca.signer().sign(b"hello").unwrap();
        let key = VerifyingKey::from_certificate(ca.certificate_der()).unwrap();
        assert!(key.verify(b"hello", &signature));
        assert!(!key.verify(b"hellp", &signature));
        let mut tampered = signature;
        tampered[10] ^= 1;
        assert!(!key.verify(b"hello", &tampered));
        assert!(!VerifyingKey::from_certificate(other.certificate_der()).unwrap().verify(b"hello", &signature));
        assert_eq!(key.point, ca.signer().public_key());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(VerifyingKey::from_certificate(b"").is_err());
        assert!(VerifyingKey::from_certificate(&[0x30, 0x82, 0xff, 0xff]).is_err());
        let ca = CertificateAuthority::generate("a", OffsetDateTime::now_utc()).unwrap();
        let mut with_trailer = ca.certificate_der().to_vec();
        with_trailer.push(0);
        assert!(VerifyingKey::from_certificate(&with_trailer).is_err());
    }
}
