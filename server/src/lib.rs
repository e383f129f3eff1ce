//! gshare-server as a library: everything the `gshare-server` binary does, callable from tests.
//!
//! [`run`] serves until its `shutdown` future completes. The binary in `main.rs` only parses the
//! command line, sets up logging and calls into this crate.
//!
//! # Layout
//!
//! - [`config`]: `server.toml`, read and validated.
//! - [`identity`]: the CA and server certificate in the state directory.
//! - [`store`]: the SQLite state store (certificates, memberships).
//! - [`users`]: the argon2id user store `users.toml`, read and edited.
//! - `reload`: following edits of `users.toml` and revoking what it no longer allows.
//! - `discovery`: the multicast task: announcements, list requests, joins and leaves.
//! - `membership`: the rules a join or leave must pass.
//! - `listener`, `tls`, `enroll`: the TLS listener and enrollment.
//! - `ratelimit`: delays after failed password attempts.
//! - [`private`]: modes of the state directory and its files.
//! - `notify`: readiness for a service manager (systemd's `Type=notify`).
//! - `metrics`: the optional Prometheus endpoint.
//! - `state`: what the tasks share.
//! - [`sendlist`]: what a `send` names: files, and the files of directory trees.
//! - `swarm`: which member sessions share which file's pieces, and which pieces have gone out.

pub mod admin;
pub mod config;
mod discovery;
mod enroll;
pub mod identity;
mod listener;
mod membership;
mod metrics;
mod notify;
pub mod private;
mod ratelimit;
mod reload;
pub mod sendlist;
mod session;
pub mod spool;
mod state;
pub mod store;
mod swarm;
mod tls;
pub mod users;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
pub use identity::{IdentityError, ServerIdentity};

use gshare_common::MulticastChannel;
use gshare_proto::Announcement;

/// Why the server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The CA or server certificate could not be created or loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The state store could not be opened or used.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// users.toml is not valid.
    #[error(transparent)]
    Users(#[from] gshare_common::ConfigFileError),
    /// The multicast channel could not be opened.
    #[error("multicast")]
    Transport(#[from] gshare_common::TransportError),
    /// Receiving from the multicast channel failed.
    #[error("multicast receive failed: {0}")]
    Multicast(std::io::Error),
    /// The TLS listener could not be bound.
    #[error("cannot listen for TLS on {address}")]
    Listen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    /// An announcement could not be built (for example a CA certificate too large to announce).
    #[error("cannot encode announcement: {0}")]
    Encode(gshare_proto::EncodeError),
    /// Signing or random number generation failed.
    #[error(transparent)]
    Crypto(#[from] gshare_certs::CertError),
    /// The spool directory could not be opened.
    #[error(transparent)]
    Spool(spool::SpoolError),
    /// The admin socket could not be opened.
    #[error("cannot open the admin socket {}", path.display())]
    Admin {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state directory could not be created or made private.
    #[error("state directory {}", path.display())]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The dummy password hash could not be made.
    #[error(transparent)]
    Hash(#[from] users::HashError),
}

/// The names and addresses the server certificate is issued for.
pub fn certificate_hosts(config: &Config) -> Vec<String> {
    vec![config.tls_advertise.host().to_owned(), config.tls_listen.ip().to_string()]
}

/// Loads (or on first start creates) the server's identity.
pub fn load_identity(config: &Config) -> Result<ServerIdentity, IdentityError> {
    let identity = ServerIdentity::load_or_create(
        &config.state_dir,
        &certificate_hosts(config),
        config.server_certificate_validity,
    )?;
    if identity.created {
        tracing::info!(fingerprint = %identity.ca.fingerprint(), state_dir = %config.state_dir.display(), "created a new CA");
    }
    Ok(identity)
}

/// At start: a spool copy recorded before it was on the disk, when the server or its machine
/// went down before it was, is checked; one that did not survive fails its deliveries with a
/// sentence (`send` had not said the file was recorded), one that did is made durable.
async fn recover_unsynced_spool(server: &Arc<state::Server>) -> Result<(), ServerError> {
    let spool = server.spool.clone();
    let dir = spool.dir().to_owned();
    let lost = tokio::task::spawn_blocking(move || spool.recover_unsynced())
        .await
        .map_err(std::io::Error::other)
        .and_then(|result| result)
        .map_err(|source| ServerError::Spool(spool::SpoolError::Io { path: dir, source }))?;
    for entry in lost {
        session::fail_lost_entry(server, &entry, session::SPOOL_LOST).await;
    }
    Ok(())
}

/// How often deliveries past their retention are expired.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Expires deliveries past the retention period, deletes spool entries nobody needs (also
/// leftovers of a crash), at start and every [`SWEEP_INTERVAL`].
async fn sweep(server: Arc<state::Server>) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        ticker.tick().await;
        let now = store::unix_now();
        let cutoff = now - i64::try_from(server.config.retention.as_secs()).unwrap_or(i64::MAX);
        match state::blocking(&server, move |store| store.expire_before(cutoff, now)).await {
            Ok(0) => {}
            Ok(expired) => tracing::warn!(expired, "deliveries expired: retention period ended"),
            Err(error) => tracing::error!(%error, "cannot expire deliveries"),
        }
        session::release_spool(&server).await;
        let shared = Arc::clone(&server);
        match tokio::task::spawn_blocking(move || shared.spool.sweep(|| shared.store.needed_hashes())).await {
            Ok(Ok(deleted)) => {
                for entry in deleted {
                    tracing::info!(%entry, "unneeded spool entry deleted");
                }
            }
            Ok(Err(error)) => tracing::error!(%error, "cannot sweep the spool"),
            Err(error) => tracing::error!(%error, "cannot sweep the spool"),
        }
    }
}

/// Reissues the server's TLS certificate from the same CA once it is within
/// `certificates.server_renew_days` of its expiry, at start and while running, and presents the
/// new one from the next handshake on. Members keep working: they trust the CA, not the leaf.
async fn reissue_server_certificate(server: Arc<state::Server>, current: Arc<tls::CurrentCertificate>) {
    let mut identity = server.identity.server.clone();
    // Looked at often enough to act well inside the renewal window, however short it is set.
    let interval = (server.config.server_renew_before / 4).clamp(std::time::Duration::from_secs(1), SWEEP_INTERVAL);
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let (shared, held) = (Arc::clone(&server), identity.clone());
        let reissued = tokio::task::spawn_blocking(move || {
            let config = &shared.config;
            identity::reissue_if_due(
                &shared.identity.ca,
                &held,
                &config.state_dir,
                &certificate_hosts(config),
                (config.server_certificate_validity, config.server_renew_before),
                time::OffsetDateTime::now_utc(),
            )
        })
        .await;
        match reissued {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(reissued))) => match current.replace(server.identity.ca.certificate_der(), &reissued.identity) {
                Ok(()) => {
                    tracing::info!(expires = %reissued.expires, "server certificate reissued");
                    identity = reissued.identity;
                }
                Err(error) => tracing::error!(%error, "cannot present the reissued server certificate"),
            },
            Ok(Err(error)) => tracing::error!(%error, "cannot reissue the server certificate; it is kept for now"),
            Err(error) => tracing::error!(%error, "cannot reissue the server certificate; it is kept for now"),
        }
    }
}

/// Runs the server until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    private::prepare_state_dir(&config.state_dir)
        .map_err(|source| ServerError::StateDir { path: config.state_dir.clone(), source })?;
    let identity = load_identity(&config)?;
    let store = store::Store::open(&config.state_dir)?;
    let users = users::UserStore::load(&config.users_file, &config.groups)?;
    // The hashes are secrets too: a user store others can read is made private, as the
    // state directory is.
    match users::make_private(&config.users_file) {
        Ok(Some(mode)) => {
            tracing::warn!(file = %config.users_file.display(), "the user store could be read by other users (mode {mode:04o}); they no longer can")
        }
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(file = %config.users_file.display(), %error, "the user store can be read by other users and its mode cannot be changed; chmod o-rwx it")
        }
    }
    let cost = config.password_cost;
    let dummy_password: [u8; 16] = gshare_certs::random_bytes()?;
    let dummy_hash = tokio::task::spawn_blocking(move || cost.hash(&format!("{dummy_password:?}")))
        .await
        .map_err(|e| users::HashError::Argon2(e.to_string()))??;
    let announcements = Announcement::split(identity.ca.certificate_der(), &config.tls_advertise, &config.groups)
        .map_err(ServerError::Encode)?;
    let current_certificate = Arc::new(tls::CurrentCertificate::new(identity.ca.certificate_der(), &identity.server)?);
    let tls = tls::server_config(&identity, Arc::clone(&current_certificate))?;
    let listener = tokio::net::TcpListener::bind(config.tls_listen)
        .await
        .map_err(|source| ServerError::Listen { address: config.tls_listen, source })?;
    let channel = MulticastChannel::open(&config.multicast)?;
    let admin_socket = admin::bind(&config.state_dir).await?;
    let metrics_listener = match config.metrics_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address).await.map_err(|source| ServerError::Listen { address, source })?,
        ),
        None => None,
    };
    let spool = spool::Spool::open(&config.state_dir).map_err(ServerError::Spool)?;
    let server = Arc::new(state::Server::new(config, identity, store, users, dummy_hash, spool));
    // A user removed while the server was down loses access before anything else happens.
    reload::reconcile(&server).await?;
    recover_unsynced_spool(&server).await?;

    let config = &server.config;
    let groups: Vec<&str> = config.groups.iter().map(|g| g.as_str()).collect();
    tracing::info!(
        fingerprint = %server.identity.ca.fingerprint(),
        tls = %config.tls_advertise,
        multicast = %config.multicast.describe(),
        groups = %groups.join(","),
        users = server.users().users.len(),
        "gshare-server ready"
    );
    notify::notify("READY=1");
    let discovery = discovery::Discovery::new(Arc::clone(&server), channel, announcements);
    let serving = listener::serve(Arc::clone(&server), listener, tokio_rustls::TlsAcceptor::from(tls));
    let watching = reload::watch_users(Arc::clone(&server));
    let administering = admin::serve(Arc::clone(&server), admin_socket);
    let sweeping = sweep(Arc::clone(&server));
    let recording = state::record_progress(Arc::clone(&server));
    let reissuing = reissue_server_certificate(Arc::clone(&server), current_certificate);
    let measuring = async {
        match metrics_listener {
            Some(listener) => metrics::serve(Arc::clone(&server), listener).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = measuring => Ok(()),
        () = reissuing => Ok(()),
        result = discovery.run() => result,
        () = serving => Ok(()),
        () = watching => Ok(()),
        () = administering => Ok(()),
        () = sweeping => Ok(()),
        () = recording => Ok(()),
        () = shutdown => {
            tracing::info!("shutting down");
            notify::notify("STOPPING=1");
            Ok(())
        }
    }
}
