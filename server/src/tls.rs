//! The server's TLS configuration: TLS 1.3 only, ring as the one crypto provider, the server
//! certificate sent with its CA, ALPN `gshare/3`, and client certificates verified against the
//! CA when offered. Enrollment connections have no client certificate yet, so one is optional
//! at the handshake; every request that needs a member checks for it afterwards, and checks the
//! state store (revocation, user standing) before anything else happens.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use gshare_certs::IssuedIdentity;
use rustls::sign::CertifiedKey;

use crate::identity::ServerIdentity;

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct TlsSetupError(String);

pub(crate) fn server_config(
    identity: &ServerIdentity,
    certificate: Arc<CurrentCertificate>,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let error = |e: &dyn std::fmt::Display| TlsSetupError(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = CertificateDer::from(identity.ca.certificate_der().to_vec());
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(|e| error(&e))?;
    let client_verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .allow_unauthenticated()
        .build()
        .map_err(|e| error(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| error(&e))?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![gshare_common::ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The server certificate every new handshake presents (with the CA), replaced in place when
/// the certificate is reissued: connections already open keep theirs.
#[derive(Debug)]
pub(crate) struct CurrentCertificate {
    key: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl CurrentCertificate {
    pub(crate) fn new(ca_der: &[u8], identity: &IssuedIdentity) -> Result<Self, TlsSetupError> {
        Ok(Self { key: std::sync::RwLock::new(certified_key(ca_der, identity)?) })
    }

    /// Presents `identity` from the next handshake on.
    pub(crate) fn replace(&self, ca_der: &[u8], identity: &IssuedIdentity) -> Result<(), TlsSetupError> {
        let key = certified_key(ca_der, identity)?;
        *self.key.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = key;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.key.read().unwrap_or_else(|poisoned| poisoned.into_inner())))
    }
}

fn certified_key(ca_der: &[u8], identity: &IssuedIdentity) -> Result<Arc<CertifiedKey>, TlsSetupError> {
    let error = |e: &dyn std::fmt::Display| TlsSetupError(e.to_string());
    let certificate = CertificateDer::from_pem_slice(identity.certificate_pem.as_bytes()).map_err(|e| error(&e))?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).map_err(|e| error(&e))?;
    let chain = vec![certificate, CertificateDer::from(ca_der.to_vec())];
    let key = CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider()).map_err(|e| error(&e))?;
    Ok(Arc::new(key))
}
