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
/// The DNS name in every member certificate: what members verify when one connects to another
/// (the fingerprint then says which member it is).
pub const MEMBER_NAME: &str = "gshare-member";

/// How long a new CA certificate is valid.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a server certificate is valid.
pub const SERVER_VALIDITY: std::time::Duration = std::time::Duration::from_secs(825 * 86_400);
/// How far back `not_before` is set, so that a member whose clock is a little behind still
/// accepts a certificate issued a moment ago.
const BACKDATE: Duration = Duration::hours(1);

/// A certificate with its private key, as PEM text ready to be written to files.
#[derive(Clone)]
pub struct IssuedIdentity {
    pub certificate_pem: String,
    pub key_pem: String,
}

/// A member certificate the CA issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub der: Vec<u8>,
    /// The serial number, lowercase hex.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// A CA certificate and its key, able to issue certificates and sign datagrams.
pub struct CertificateAuthority {
    certificate_der: Vec<u8>,
    certificate_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    signer: DatagramSigner,
}

impl std::fmt::Debug for IssuedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("IssuedIdentity").field("certificate_pem", &self.certificate_pem).finish_non_exhaustive()
    }
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
    /// Valid for `validity` from now.
    pub fn issue_server_identity(
        &self,
        hosts: &[String],
        validity: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedIdentity, CertError> {
        let validity = Duration::try_from(validity).map_err(|_| CertError::BadRequest("validity too long".into()))?;
        let key = KeyPair::generate()?;
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
        let (mut params, _) = leaf_params(SERVER_NAME, &[ExtendedKeyUsagePurpose::ServerAuth], validity, now)?;
        params.subject_alt_names = names;
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedIdentity { certificate_pem: certificate.pem(), key_pem: key.serialize_pem() })
    }

    /// Issues a member's client certificate for the key in `csr_der`.
    ///
    /// Only the public key is taken from the request (after its signature proves the requester
    /// holds the private key); every other field is set here: CN = `user`, a random serial,
    /// client and server authentication (for the name `gshare-member`), not a CA, valid from now for `validity`. A CSR that asks to
    /// be a CA, or for other names or usages, still gets exactly this leaf certificate.
    pub fn issue_member_certificate(
        &self,
        user: &str,
        csr_der: &[u8],
        validity: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, CertError> {
        let public_key = requested_public_key(csr_der)?;
        let validity = Duration::try_from(validity).map_err(|_| CertError::BadRequest("validity too long".into()))?;
        // A member connects to the server and to other members (client authentication) and
        // accepts other members' connections (server authentication, for the name every
        // member shares; which member it is, is its fingerprint).
        let usages = [ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        let (mut params, serial) = leaf_params(user, &usages, validity, now)?;
        params.subject_alt_names = vec![SanType::DnsName(MEMBER_NAME.try_into()?)];
        let certificate = params.signed_by(&public_key, &self.issuer)?;
        Ok(IssuedCertificate {
            der: certificate.der().to_vec(),
            serial: hex(&serial.to_bytes()),
            not_before: params.not_before,
            not_after: params.not_after,
        })
    }

    /// Checks that a stored identity (certificate and key PEM) was issued by this CA and that
    /// the key belongs to the certificate.
    pub fn check_issued_identity(&self, identity: &IssuedIdentity) -> Result<(), CertError> {
        let der = pem_certificate_der(&identity.certificate_pem)?;
        check_member_certificate(&self.certificate_der, &der, &identity.key_pem)
    }
}

/// The fields every leaf certificate this CA issues shares: CN `common_name`, a random serial
/// (also returned), valid from an hour ago until `validity` from now, not a CA, digital
/// signatures only for `usage`, and the authority key identifier.
fn leaf_params(
    common_name: &str,
    usages: &[ExtendedKeyUsagePurpose],
    validity: Duration,
    now: OffsetDateTime,
) -> Result<(CertificateParams, SerialNumber), CertError> {
    let serial = random_serial()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.serial_number = Some(serial.clone());
    // Backdated against clocks a little behind ours, by a tenth of the validity at most, so
    // that a member's renewal point (a share of the whole span) falls after its issue.
    params.not_before = now - BACKDATE.min(validity / 10);
    params.not_after = now + validity;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages.to_vec();
    params.use_authority_key_identifier_extension = true;
    Ok((params, serial))
}

/// The public key of a certificate signing request whose signature verifies. Nothing else of
/// the request is read (rcgen's own CSR parser refuses requests with extensions it does not
/// model, such as basic constraints, and we would ignore them anyway).
fn requested_public_key(csr_der: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, CertError> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    let bad = |reason: &str| CertError::BadRequest(reason.to_owned());
    let (rest, request) = X509CertificationRequest::from_der(csr_der).map_err(|e| bad(&e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the request"));
    }
    request.verify_signature().map_err(|_| bad("its signature does not verify"))?;
    let info = &request.certification_request_info.subject_pki;
    let curve = info.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if info.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(bad("the key must be ECDSA P-256"));
    }
    rcgen::SubjectPublicKeyInfo::from_der(info.raw).map_err(|e| bad(&e.to_string()))
}

/// A new ECDSA P-256 key for a member and a certificate signing request for `user`.
/// Returns the key as PKCS#8 PEM and the request as DER.
pub fn member_key_and_request(user: &str) -> Result<(String, Vec<u8>), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, user);
    params.distinguished_name = name;
    let request = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), request.der().to_vec()))
}

/// Checks that `certificate_der` was issued by the CA in `ca_der` for the key in `key_pem`
/// (a member's certificate, or the server's own).
pub fn check_member_certificate(ca_der: &[u8], certificate_der: &[u8], key_pem: &str) -> Result<(), CertError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::BadKey(e.to_string()))?;
    let (_, parsed) =
        X509Certificate::from_der(certificate_der).map_err(|e| CertError::BadCertificate(e.to_string()))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(CertError::KeyMismatch);
    }
    let ca_key = VerifyingKey::from_certificate(ca_der)?;
    if !ca_key.verify_asn1(parsed.tbs_certificate.as_ref(), &parsed.signature_value.data) {
        return Err(CertError::NotIssuedByCa);
    }
    Ok(())
}

/// Whether a member certificate may accept other members' connections (server
/// authentication, for [`MEMBER_NAME`]): certificates issued before swarm delivery may not.
pub fn can_serve(certificate_der: &[u8]) -> bool {
    let Ok((_, parsed)) = X509Certificate::from_der(certificate_der) else { return false };
    let server_auth = parsed.extended_key_usage().ok().flatten().is_some_and(|usage| usage.value.server_auth);
    let named = parsed.subject_alternative_name().ok().flatten().is_some_and(|names| {
        names
            .value
            .general_names
            .iter()
            .any(|name| matches!(name, x509_parser::extensions::GeneralName::DNSName(n) if *n == MEMBER_NAME))
    });
    server_auth && named
}

/// When a certificate becomes valid and when it expires.
pub fn validity(certificate_der: &[u8]) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    let (_, parsed) =
        X509Certificate::from_der(certificate_der).map_err(|e| CertError::BadCertificate(e.to_string()))?;
    let validity = parsed.validity();
    Ok((validity.not_before.to_datetime(), validity.not_after.to_datetime()))
}

/// The common name of a certificate's subject: for a member certificate, the user name.
pub fn common_name(certificate_der: &[u8]) -> Result<String, CertError> {
    let (_, parsed) =
        X509Certificate::from_der(certificate_der).map_err(|e| CertError::BadCertificate(e.to_string()))?;
    let name = parsed.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok());
    name.map(str::to_owned).ok_or_else(|| CertError::BadCertificate("no common name".into()))
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

    /// Writes a member's request, as `enroll` makes it, into the fuzz target's seed corpus.
    /// Run by hand: `cargo test -p gshare-certs write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/seeds/csr; run by hand"]
    fn write_fuzz_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/csr");
        std::fs::create_dir_all(&dir).unwrap();
        let (_, csr) = member_key_and_request("alice").unwrap();
        std::fs::write(dir.join("member"), csr).unwrap();
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
    fn a_member_certificate_takes_only_the_key_from_the_request() {
        let ca = CertificateAuthority::generate("test", now()).unwrap();
        // A request that asks to be a CA, for a server name, under another user's name.
        let key = KeyPair::generate().unwrap();
        let mut greedy = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        greedy.distinguished_name.push(DnType::CommonName, "root");
        // rcgen will not put basic constraints in a request, so add CA:TRUE by hand.
        greedy
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x03, 0x01, 0x01, 0xff]));
        greedy.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        greedy.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let csr = greedy.serialize_request(&key).unwrap();
        let (_, parsed_request) =
            x509_parser::certification_request::X509CertificationRequest::from_der(csr.der()).unwrap();
        let asks_to_be_ca = parsed_request.requested_extensions().unwrap().any(|extension| {
            matches!(extension, x509_parser::extensions::ParsedExtension::BasicConstraints(constraints) if constraints.ca)
        });
        assert!(asks_to_be_ca, "the request must really ask to be a CA");
        let validity = std::time::Duration::from_secs(365 * 86_400);
        let issued = ca.issue_member_certificate("alice", csr.der(), validity, now()).unwrap();
        let (_, parsed) = X509Certificate::from_der(&issued.der).unwrap();
        assert!(!parsed.is_ca());
        assert_eq!(parsed.subject().to_string(), "CN=alice");
        // The request's own names are ignored; every member carries the one shared name.
        let names = &parsed.subject_alternative_name().unwrap().unwrap().value.general_names;
        assert_eq!(format!("{names:?}"), format!("{:?}", [x509_parser::extensions::GeneralName::DNSName(MEMBER_NAME)]));
        let usage = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(usage.client_auth && usage.server_auth && !usage.code_signing);
        assert!(!parsed.key_usage().unwrap().unwrap().value.key_cert_sign());
        assert_eq!(issued.serial.len(), 32);
        let days = (issued.not_after - issued.not_before).whole_days();
        assert!((365..=366).contains(&days), "{days}");
        check_member_certificate(ca.certificate_der(), &issued.der, &key.serialize_pem()).unwrap();
        assert!(can_serve(&issued.der));
        assert!(!can_serve(ca.certificate_der()), "the CA certificate is no member's");
    }

    #[test]
    fn a_request_with_a_bad_signature_or_key_type_is_refused() {
        let ca = CertificateAuthority::generate("test", now()).unwrap();
        let (_, mut csr) = member_key_and_request("alice").unwrap();
        let last = csr.len() - 1;
        csr[last] ^= 1;
        let validity = std::time::Duration::from_secs(86_400);
        assert!(matches!(ca.issue_member_certificate("alice", &csr, validity, now()), Err(CertError::BadRequest(_))));
        assert!(matches!(
            ca.issue_member_certificate("alice", b"junk", validity, now()),
            Err(CertError::BadRequest(_))
        ));
        let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let request = CertificateParams::default().serialize_request(&ed25519).unwrap();
        assert!(matches!(
            ca.issue_member_certificate("alice", request.der(), validity, now()),
            Err(CertError::BadRequest(_))
        ));
    }

    #[test]
    fn the_server_certificate_is_a_leaf_issued_by_the_ca() {
        let ca = CertificateAuthority::generate("test", now()).unwrap();
        let other = CertificateAuthority::generate("other", now()).unwrap();
        let identity = ca
            .issue_server_identity(
                &["127.0.0.1".into(), "0.0.0.0".into(), "gshare.example.org".into()],
                SERVER_VALIDITY,
                now(),
            )
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
