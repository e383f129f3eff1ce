//! gshare-server as a library: everything the `gshare-server` binary does, callable from tests.
//!
//! [`run`] serves until its `shutdown` future completes. The binary in `main.rs` only parses the
//! command line, sets up logging and calls into this crate.
//!
//! # Layout
//!
//! - [`config`]: `server.toml`, read and validated.
//! - [`identity`]: the CA and server certificate in the state directory.
//! - `discovery`: announcements and list requests on the multicast channel.

pub mod config;
mod discovery;
pub mod identity;

use std::future::Future;

pub use config::Config;
pub use identity::{IdentityError, ServerIdentity};

use gshare_proto::Announcement;
use gshare_transport::MulticastChannel;

/// Why the server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The CA or server certificate could not be created or loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The multicast channel could not be opened.
    #[error("multicast")]
    Transport(#[from] gshare_transport::TransportError),
    /// Receiving from the multicast channel failed.
    #[error("multicast receive failed: {0}")]
    Multicast(std::io::Error),
    /// An announcement could not be built (for example a CA certificate too large to announce).
    #[error("cannot encode announcement: {0}")]
    Encode(gshare_proto::EncodeError),
    /// Signing or random number generation failed.
    #[error(transparent)]
    Crypto(#[from] gshare_certs::CertError),
}

/// The names and addresses the server certificate is issued for.
pub fn certificate_hosts(config: &Config) -> Vec<String> {
    vec![config.tls_advertise.host().to_owned(), config.tls_listen.ip().to_string()]
}

/// Loads (or on first start creates) the server's identity.
pub fn load_identity(config: &Config) -> Result<ServerIdentity, IdentityError> {
    let identity = ServerIdentity::load_or_create(&config.state_dir, &certificate_hosts(config))?;
    if identity.created {
        tracing::info!(fingerprint = %identity.ca.fingerprint(), state_dir = %config.state_dir.display(), "created a new CA");
    }
    Ok(identity)
}

/// Runs the server until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let identity = load_identity(&config)?;
    let announcements = Announcement::split(identity.ca.certificate_der(), &config.tls_advertise, &config.groups)
        .map_err(ServerError::Encode)?;
    let channel = MulticastChannel::open(&config.multicast)?;
    let discovery = discovery::Discovery::new(
        channel,
        &identity.ca,
        announcements,
        config.announce_interval,
        config.list_reply_interval,
    );
    let groups: Vec<&str> = config.groups.iter().map(|g| g.as_str()).collect();
    tracing::info!(
        fingerprint = %identity.ca.fingerprint(),
        tls = %config.tls_advertise,
        multicast = %config.multicast.describe(),
        groups = %groups.join(","),
        "gshare-server ready"
    );
    tokio::select! {
        result = discovery.run() => result,
        () = shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}
