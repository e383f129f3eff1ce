//! Renewal: a member gets a new certificate, for a new key made here, over a connection
//! authenticated with its current one, before the current one expires.
//!
//! The server issues it only while the current certificate is valid and not revoked and its
//! user is present and enabled; the old certificate stays valid until it expires. Here, the
//! new key and certificate replace the old pair in one step (see
//! [`Enrollment::save`](crate::identity::Enrollment::save)): a crash leaves the old pair or
//! the new one.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use gshare_common::Connection;
use gshare_common::files::crash_point;
use gshare_proto::frame::Frame;

use crate::ClientSettings;
use crate::identity::{Enrollment, IdentityError, format_time};
use crate::tls::{PinnedCaVerifier, server_name, session_config};

/// Why a renewal did not happen. The old certificate is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("enrollment recorded no server address; run `gshare-client enroll` again")]
    NoServer,
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot reach the server at {server}: {reason}")]
    Connect { server: String, reason: String },
    #[error("the server refused the renewal: {0}")]
    Refused(String),
    #[error("the renewal was cut short: {0}")]
    Protocol(String),
    #[error("the new certificate: {0}")]
    Certificate(#[from] gshare_certs::CertError),
}

/// Renews the member's certificate in `settings.home` and returns the new identity, saved.
pub async fn renew(settings: &ClientSettings, current: &Enrollment) -> Result<Enrollment, RenewError> {
    let server = settings.server.clone().ok_or(RenewError::NoServer)?;
    current.check_not_expired(time::OffsetDateTime::now_utc())?;
    let user = current.user()?;
    let (key_pem, csr) = gshare_certs::authority::member_key_and_request(&user)?;
    let verifier = PinnedCaVerifier::new(Some(current.ca_fingerprint()));
    let config = session_config(verifier, &current.certificate_der, &current.key_pem)
        .map_err(|e| RenewError::Connect { server: server.to_string(), reason: e.to_string() })?;
    let limit = settings.answer_timeout;
    let exchange = async {
        let fail = |reason: String| RenewError::Connect { server: server.to_string(), reason };
        let tcp = TcpStream::connect(server.as_str()).await.map_err(|e| fail(e.to_string()))?;
        let tls = TlsConnector::from(Arc::clone(&config))
            .connect(server_name(), tcp)
            .await
            .map_err(|e| fail(crate::tls::handshake_error(&e)))?;
        let mut connection = Connection::new(tls);
        connection.write_frame(&Frame::RenewRequest { csr }).await.map_err(|e| RenewError::Protocol(e.to_string()))?;
        connection.read_frame().await.map_err(|e| RenewError::Protocol(e.to_string()))
    };
    let answer = tokio::time::timeout(limit, exchange).await.map_err(|_| {
        RenewError::Protocol(format!("no answer in {} seconds (answer_timeout_secs in client.toml)", limit.as_secs()))
    })??;
    let (certificate_der, ca_der) = match answer {
        Some(Frame::EnrollAccepted { certificate, ca_certificate }) => (certificate, ca_certificate),
        Some(Frame::Refused { reason }) => return Err(RenewError::Refused(reason.to_string())),
        Some(_) => return Err(RenewError::Protocol("an unexpected answer".into())),
        None => return Err(RenewError::Protocol("the server closed the connection without answering".into())),
    };
    if ca_der != current.ca_der {
        return Err(RenewError::Protocol("the server answered with a different CA than the pinned one".into()));
    }
    gshare_certs::authority::check_member_certificate(&ca_der, &certificate_der, &key_pem)?;
    let renewed = Enrollment { key_pem, certificate_der, ca_der };
    crash_point("renew-before-save");
    renewed.save(&settings.home)?;
    if let Ok((_, expires)) = renewed.validity() {
        tracing::info!(expires = %format_time(expires), certificate = %renewed.certificate_fingerprint(), "certificate renewed");
    }
    Ok(renewed)
}
