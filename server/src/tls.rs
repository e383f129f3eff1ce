//! The server's TLS configuration: TLS 1.3 only, ring as the one crypto provider, the server
//! certificate sent with its CA, ALPN `gshare/1`, and client certificates verified against the
//! CA when offered. Enrollment connections have no client certificate yet, so one is optional
//! at the handshake; every request that needs a member checks for it afterwards, and checks the
//! state store (revocation, user standing) before anything else happens.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::identity::ServerIdentity;

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct TlsSetupError(String);

pub(crate) fn server_config(identity: &ServerIdentity) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let error = |e: &dyn std::fmt::Display| TlsSetupError(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = CertificateDer::from(identity.ca.certificate_der().to_vec());
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| error(&e))?;
    let client_verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .allow_unauthenticated()
        .build()
        .map_err(|e| error(&e))?;
    let server_certificate =
        CertificateDer::from_pem_slice(identity.server.certificate_pem.as_bytes()).map_err(|e| error(&e))?;
    let server_key = PrivateKeyDer::from_pem_slice(identity.server.key_pem.as_bytes()).map_err(|e| error(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| error(&e))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(vec![server_certificate, ca], server_key)
        .map_err(|e| error(&e))?;
    config.alpn_protocols = vec![gshare_common::ALPN.to_vec()];
    Ok(Arc::new(config))
}
