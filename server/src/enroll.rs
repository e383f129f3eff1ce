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
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use gshare_proto::UserName;
use gshare_proto::frame::{Frame, Password, Text};

use crate::ratelimit::Subject;
use crate::state::{Server, blocking};
use crate::store::{CertificateRecord, unix_now};
use crate::users::verify_password;

/// The one answer for an unknown user, a disabled user and a wrong password.
pub const WRONG_CREDENTIALS: &str = "wrong user name or password";
/// Longest wait for a free password checker before the attempt is turned away.
pub const PASSWORD_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handles one enrollment request and returns the frame to answer with.
pub(crate) async fn enroll(
    server: &Arc<Server>,
    peer: SocketAddr,
    user: UserName,
    password: Password,
    csr: Vec<u8>,
) -> Frame {
    let refuse = |reason: &str| Frame::Refused { reason: Text::new(reason) };
    let refused = |why: &str| crate::metrics::count(&server.metrics.enrollment_refusals, why);
    let users = server.users();
    // Only names in the user store are counted as users: an unknown name has no account to
    // protect, and counting it would let junk names crowd out real ones.
    let mut subjects = vec![Subject::Address(peer.ip())];
    if users.users.contains_key(&user) {
        subjects.push(Subject::User(user.clone()));
    }
    if let Err(wait) = server.limiter().begin(&subjects, Instant::now()) {
        tracing::warn!(%peer, %user, "enrollment refused: too many failed attempts");
        refused("rate_limited");
        return refuse(&format!("too many failed attempts; try again in {} seconds", wait.as_secs().max(1)));
    }

    let hash = match users.active(&user) {
        Some(account) => account.password_hash.clone(),
        None => server.dummy_hash.clone(),
    };
    let known = users.active(&user).is_some();
    let matches = {
        let permit = tokio::time::timeout(PASSWORD_QUEUE_TIMEOUT, server.password_checks.acquire()).await;
        // The semaphore is never closed, so acquiring only waits.
        let Ok(Ok(_permit)) = permit else {
            server.limiter().take_back(&subjects);
            tracing::warn!(%peer, %user, "enrollment turned away: every password checker is busy");
            refused("busy");
            return refuse("the server is busy checking other passwords; try again in a minute");
        };
        tracing::info!(%peer, %user, "checking a password");
        tokio::task::spawn_blocking(move || verify_password(&hash, password.expose())).await.unwrap_or(false)
    };
    // The user store may have changed while the password was checked (`user remove`).
    if !(known && matches && server.users().active(&user).is_some()) {
        tracing::warn!(%peer, %user, "enrollment refused: {WRONG_CREDENTIALS}");
        refused("wrong_credentials");
        return refuse(WRONG_CREDENTIALS);
    }
    server.limiter().succeeded(&subjects);

    let now = OffsetDateTime::now_utc();
    let issued =
        match server.identity.ca.issue_member_certificate(user.as_str(), &csr, server.config.certificate_validity, now)
        {
            Ok(issued) => issued,
            Err(error) => {
                tracing::warn!(%peer, %user, %error, "enrollment refused: bad certificate request");
                refused("bad_request");
                return refuse(&format!("bad certificate request: {error}"));
            }
        };
    let record = record_of(&user, &issued);
    let fingerprint = record.fingerprint;
    if let Err(error) = blocking(server, move |store| store.record_certificate(&record)).await {
        tracing::error!(%peer, %user, %error, "cannot record the issued certificate");
        refused("server_error");
        return refuse("the server could not record the certificate; try again later");
    }
    // A removal that raced this enrollment: either its reload already swapped the user store
    // (seen here) or it has yet to reconcile, and will find the certificate just recorded.
    if server.users().active(&user).is_none() {
        let revoked = blocking(server, move |store| {
            store.revoke_certificate(&fingerprint, "user removed while enrolling", unix_now())
        })
        .await;
        if let Err(error) = revoked {
            tracing::error!(%peer, %user, %error, "cannot revoke a certificate issued to a removed user");
        }
        tracing::warn!(%peer, %user, "enrollment refused: the user was removed while enrolling");
        refused("wrong_credentials");
        return refuse(WRONG_CREDENTIALS);
    }
    server.metrics.enrollments.inc();
    tracing::info!(%peer, %user, serial = %issued.serial, certificate = %fingerprint, "enrolled");
    Frame::EnrollAccepted { certificate: issued.der, ca_certificate: server.identity.ca.certificate_der().to_vec() }
}

/// The state store's record of a certificate just issued to `user`.
fn record_of(user: &UserName, issued: &gshare_certs::IssuedCertificate) -> CertificateRecord {
    CertificateRecord {
        serial: issued.serial.clone(),
        fingerprint: gshare_certs::fingerprint(&issued.der),
        user: user.clone(),
        der: issued.der.clone(),
        issued_at: issued.not_before.unix_timestamp(),
        expires_at: issued.not_after.unix_timestamp(),
        revoked_at: None,
    }
}

/// Most certificates one certificate may be renewed into. One is the rule; a few more let a
/// member whose renewal was cut off (it crashed before saving the answer) try again.
pub const MAX_RENEWALS_PER_CERTIFICATE: usize = 3;

/// Handles a renewal: a member whose current certificate (presented in the TLS handshake, so
/// its key is proven) is issued here, not revoked, not expired, and whose user is present and
/// enabled gets a new certificate for the key in `csr`. The old one stays valid until it
/// expires, so a second device of the same user, or a crash before the new pair is saved,
/// costs nothing.
pub(crate) async fn renew(server: &Arc<Server>, peer: SocketAddr, certificate: Option<Vec<u8>>, csr: Vec<u8>) -> Frame {
    let refuse = |reason: &str| Frame::Refused { reason: Text::new(reason) };
    let Some(certificate) = certificate else {
        return refuse("renewal needs the member's current certificate; enroll instead");
    };
    let fingerprint = gshare_certs::fingerprint(&certificate);
    let record = match blocking(server, move |store| store.certificate(&fingerprint)).await {
        Ok(Some(record)) => record,
        Ok(None) => return refuse("this server has no record of the certificate; enroll again"),
        Err(error) => {
            tracing::error!(%peer, %error, "cannot look up a certificate to renew");
            return refuse("the server cannot check the certificate now; try again later");
        }
    };
    let user = record.user.clone();
    if let Err((_, reason)) = crate::membership::standing(&record, &server.users(), unix_now()) {
        tracing::warn!(%peer, %user, "renewal refused: {reason}");
        return refuse(&reason);
    }
    let serial = record.serial.clone();
    match blocking(server, move |store| store.renewals_of(&serial)).await {
        Ok(count) if count < MAX_RENEWALS_PER_CERTIFICATE => {}
        Ok(_) => {
            tracing::warn!(%peer, %user, serial = %record.serial, "renewal refused: renewed too often");
            return refuse("this certificate was already renewed; use the new one, or enroll again");
        }
        Err(error) => {
            tracing::error!(%peer, %error, "cannot count renewals");
            return refuse("the server cannot check the certificate now; try again later");
        }
    }
    let now = OffsetDateTime::now_utc();
    let issued =
        match server.identity.ca.issue_member_certificate(user.as_str(), &csr, server.config.certificate_validity, now)
        {
            Ok(issued) => issued,
            Err(error) => {
                tracing::warn!(%peer, %user, %error, "renewal refused: bad certificate request");
                return refuse(&format!("bad certificate request: {error}"));
            }
        };
    let renewed = record_of(&user, &issued);
    let (new_fingerprint, old_serial) = (renewed.fingerprint, record.serial.clone());
    if let Err(error) = blocking(server, move |store| store.record_renewal(&renewed, &old_serial)).await {
        tracing::error!(%peer, %user, %error, "cannot record the renewed certificate");
        return refuse("the server could not record the certificate; try again later");
    }
    // A removal that raced this renewal, as in enrollment.
    if server.users().active(&user).is_none() {
        let _ = blocking(server, move |store| {
            store.revoke_certificate(&new_fingerprint, "user removed while renewing", unix_now())
        })
        .await;
        return refuse(&format!("user \"{user}\" is not in the user store"));
    }
    tracing::info!(%peer, %user, from = %record.serial, serial = %issued.serial, certificate = %new_fingerprint, "certificate renewed");
    Frame::EnrollAccepted { certificate: issued.der, ca_certificate: server.identity.ca.certificate_der().to_vec() }
}
