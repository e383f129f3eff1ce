//! The server's certificate authority and the TLS certificate it issues to the server itself.
//!
//! rcgen's defaults are meant for tests, so every field that matters is set here: a random
//! 128-bit serial, an explicit validity (backdated an hour for clock skew), the key usages, and
//! basic constraints. The server certificate names [`SERVER_NAME`] as well as the addresses it
//! is reached at, and clients verify against that fixed name: trust comes from the pinned CA,
//! which issues exactly one server certificate, so an operator can change addresses without
//! reissuing anything.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::signing::{DatagramSigner, VerifyingKey};
use crate::{CertError, fingerprint, random_bytes};
use gshare_proto::Fingerprint;

/// The DNS name in every gshare server certificate, and the name clients verify.
pub const SERVER_NAME: &str = "gshare-server";

/// How long a new CA certificate is valid.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a server certificate is valid.
pub const SERVER_VALIDITY: Duration = Duration::days(825);
/// How far back `not_before` is set, so that a member whose clock is a little behind still
/// accepts a certificate issued a moment ago.
const BACKDATE: Duration = Duration::hours(1);

/// A certificate with its private key, as PEM text ready to be written to files.
#[derive(Debug)]
pub struct IssuedIdentity {
    pub certificate_pem: String,
    pub key_pem: String,
}

/// A CA certificate and its key, able to issue certificates and sign datagrams.
pub struct CertificateAuthority {
    certificate_der: Vec<u8>,
    certificate_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    signer: DatagramSigner,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CertificateAuthority").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a new CA with a fresh key. `label` distinguishes it in its subject name.
    pub fn generate(label: &str, now: OffsetDateTime) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let suffix: [u8; 4] = random_bytes()?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("gshare CA {label} {}", hex(&suffix)));
        params.distinguished_name = name;
        params.serial_number = Some(random_serial()?);
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let certificate = params.self_signed(&key)?;
        Self::from_pem(&certificate.pem(), &key.serialize_pem())
    }

    /// Loads a CA from PEM text, checking that the certificate is a CA and the key is its own.
    pub fn from_pem(certificate_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let certificate_der = pem_certificate_der(certificate_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::BadKey(e.to_string()))?;
        let (_, parsed) =
            X509Certificate::from_der(&certificate_der).map_err(|e| CertError::BadCertificate(e.to_string()))?;
        if !parsed.is_ca() {
            return Err(CertError::NotCa);
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CertError::KeyMismatch);
        }
        let signer = DatagramSigner::from_pkcs8_der(key.serialized_der())?;
        let issuer = Issuer::from_ca_cert_der(&certificate_der.clone().into(), key)?;
        Ok(Self {
            certificate_der,
            certificate_pem: certificate_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
            signer,
        })
    }

    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The CA's private key as PKCS#8 PEM, for storing with mode 0600.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.certificate_der)
    }

    /// Signs the server's datagrams.
    pub fn signer(&self) -> &DatagramSigner {
        &self.signer
    }

    /// Issues the server's TLS certificate with a new key, for [`SERVER_NAME`] and `hosts`
    /// (IP addresses or DNS names; wildcard addresses such as 0.0.0.0 are skipped).
    pub fn issue_server_identity(&self, hosts: &[String], now: OffsetDateTime) -> Result<IssuedIdentity, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, SERVER_NAME);
        params.distinguished_name = name;
        let mut names = vec![SanType::DnsName(SERVER_NAME.try_into()?)];
        for host in hosts {
            let san = match host.parse::<std::net::IpAddr>() {
                Ok(ip) if ip.is_unspecified() => continue,
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.clone().try_into()?),
            };
            if !names.contains(&san) {
                names.push(san);
            }
        }
        params.subject_alt_names = names;
        params.serial_number = Some(random_serial()?);
        params.not_before = now - BACKDATE;
        params.not_after = now + SERVER_VALIDITY;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedIdentity { certificate_pem: certificate.pem(), key_pem: key.serialize_pem() })
    }

    /// Checks that a stored identity (certificate and key PEM) was issued by this CA and that
    /// the key belongs to the certificate.
    pub fn check_issued_identity(&self, identity: &IssuedIdentity) -> Result<(), CertError> {
        let der = pem_certificate_der(&identity.certificate_pem)?;
        let key = KeyPair::from_pem(&identity.key_pem).map_err(|e| CertError::BadKey(e.to_string()))?;
        let (_, parsed) = X509Certificate::from_der(&der).map_err(|e| CertError::BadCertificate(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CertError::KeyMismatch);
        }
        let ca_key = VerifyingKey::from_certificate(&self.certificate_der)?;
        let signed_part = parsed.tbs_certificate.as_ref();
        if !ca_key.verify_asn1(signed_part, &parsed.signature_value.data) {
            return Err(CertError::NotIssuedByCa);
        }
        Ok(())
    }
}

/// Decodes the first certificate in PEM text.
pub fn pem_certificate_der(pem: &str) -> Result<Vec<u8>, CertError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|e| CertError::BadCertificate(e.to_string()))
}

fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes: [u8; 16] = random_bytes()?;
    // A positive integer without a leading zero byte, as RFC 5280 asks.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn a_generated_ca_reloads_with_the_same_fingerprint() {
        let ca = CertificateAuthority::generate("test", now()).unwrap();
        let reloaded = CertificateAuthority::from_pem(ca.certificate_pem(), ca.key_pem()).unwrap();
        assert_eq!(ca.fingerprint(), reloaded.fingerprint());
        assert!(ca.certificate_der().len() < gshare_proto::announce::MAX_CA_CERTIFICATE_LEN);
        let (_, parsed) = X509Certificate::from_der(ca.certificate_der()).unwrap();
        assert!(parsed.is_ca());
        assert_eq!(parsed.raw_serial().len(), 16);
        let validity = parsed.validity();
        assert!(validity.not_after.timestamp() - validity.not_before.timestamp() > 3600 * 24 * 3000);
    }

    #[test]
    fn a_key_from_another_ca_is_refused() {
        let ca = CertificateAuthority::generate("a", now()).unwrap();
        let other = CertificateAuthority::generate("b", now()).unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(ca.certificate_pem(), other.key_pem()),
            Err(CertError::KeyMismatch)
        ));
        assert!(matches!(CertificateAuthority::from_pem("garbage", ca.key_pem()), Err(CertError::BadCertificate(_))));
        assert!(matches!(CertificateAuthority::from_pem(ca.certificate_pem(), "garbage"), Err(CertError::BadKey(_))));
    }

    #[test]
    fn the_server_certificate_is_a_leaf_issued_by_the_ca() {
        let ca = CertificateAuthority::generate("test", now()).unwrap();
        let other = CertificateAuthority::generate("other", now()).unwrap();
        let identity = ca
            .issue_server_identity(&["127.0.0.1".into(), "0.0.0.0".into(), "gshare.example.org".into()], now())
            .unwrap();
        ca.check_issued_identity(&identity).unwrap();
        assert!(matches!(other.check_issued_identity(&identity), Err(CertError::NotIssuedByCa)));
        let der = pem_certificate_der(&identity.certificate_pem).unwrap();
        let (_, parsed) = X509Certificate::from_der(&der).unwrap();
        assert!(!parsed.is_ca());
        let names = format!("{:?}", parsed.subject_alternative_name().unwrap().unwrap().value.general_names);
        assert!(names.contains(SERVER_NAME) && names.contains("gshare.example.org"), "{names}");
        assert!(!names.contains("0.0.0.0"));
        let mismatched =
            IssuedIdentity { certificate_pem: identity.certificate_pem.clone(), key_pem: ca.key_pem().into() };
        assert!(matches!(ca.check_issued_identity(&mismatched), Err(CertError::KeyMismatch)));
    }
}
