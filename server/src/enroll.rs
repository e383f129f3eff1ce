//! Enrollment: a person proves who they are with their password, and gets a certificate for a
//! key that never left their machine.
//!
//! The password is checked against the argon2id hash on a blocking thread, with at most
//! `limits.password_checks` checks at once. An unknown (or disabled) user is checked against a
//! dummy hash, so it takes the same time and gets the same answer as a wrong password. Failures
//! are counted per user name and per source address, and after a few the answer is an
//! immediate refusal with a delay to wait.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use time::OffsetDateTime;

use gshare_proto::UserName;
use gshare_proto::frame::{Frame, Password, Text};

use crate::ratelimit::Subject;
use crate::state::{Server, blocking};
use crate::store::CertificateRecord;
use crate::users::verify_password;

/// The one answer for an unknown user, a disabled user and a wrong password.
pub const WRONG_CREDENTIALS: &str = "wrong user name or password";

/// Handles one enrollment request and returns the frame to answer with.
pub(crate) async fn enroll(
    server: &Arc<Server>,
    peer: SocketAddr,
    user: UserName,
    password: Password,
    csr: Vec<u8>,
) -> Frame {
    let refuse = |reason: &str| Frame::Refused { reason: Text::new(reason) };
    let subjects = [Subject::User(user.clone()), Subject::Address(peer.ip())];
    if let Err(wait) = server.limiter().check(&subjects, Instant::now()) {
        tracing::warn!(%peer, %user, "enrollment refused: too many failed attempts");
        return refuse(&format!("too many failed attempts; try again in {} seconds", wait.as_secs().max(1)));
    }

    let users = server.users();
    let hash = match users.active(&user) {
        Some(account) => account.password_hash.clone(),
        None => server.dummy_hash.clone(),
    };
    let known = users.active(&user).is_some();
    let matches = {
        // The semaphore is never closed, so acquiring only waits.
        let Ok(_permit) = server.password_checks.acquire().await else { return refuse("server is shutting down") };
        tokio::task::spawn_blocking(move || verify_password(&hash, password.expose())).await.unwrap_or(false)
    };
    if !(known && matches) {
        server.limiter().record_failure(&subjects, Instant::now());
        tracing::warn!(%peer, %user, "enrollment refused: {WRONG_CREDENTIALS}");
        return refuse(WRONG_CREDENTIALS);
    }
    server.limiter().record_success(&user);

    let now = OffsetDateTime::now_utc();
    let issued =
        match server.identity.ca.issue_member_certificate(user.as_str(), &csr, server.config.certificate_validity, now)
        {
            Ok(issued) => issued,
            Err(error) => {
                tracing::warn!(%peer, %user, %error, "enrollment refused: bad certificate request");
                return refuse(&format!("bad certificate request: {error}"));
            }
        };
    let record = CertificateRecord {
        serial: issued.serial.clone(),
        fingerprint: gshare_certs::fingerprint(&issued.der),
        user: user.clone(),
        der: issued.der.clone(),
        issued_at: issued.not_before.unix_timestamp(),
        expires_at: issued.not_after.unix_timestamp(),
        revoked_at: None,
    };
    let fingerprint = record.fingerprint;
    if let Err(error) = blocking(server, move |store| store.record_certificate(&record)).await {
        tracing::error!(%peer, %user, %error, "cannot record the issued certificate");
        return refuse("the server could not record the certificate; try again later");
    }
    tracing::info!(%peer, %user, serial = %issued.serial, certificate = %fingerprint, "enrolled");
    Frame::EnrollAccepted { certificate: issued.der, ca_certificate: server.identity.ca.certificate_der().to_vec() }
}
