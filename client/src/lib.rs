//! gshare-client as a library: what the `gshare-client` binary does, callable from tests.
//!
//! # Layout
//!
//! - [`home`]: the client's home directory and `client.toml`.
//! - [`identity`]: the enrolled key, certificate and pinned CA in the home.
//! - [`inbox`]: writing received files safely into the out directory.
//! - [`listen`]: the member session that receives files, with reconnection.
//! - [`discover`]: finding servers and their groups from verified multicast announcements.
//! - [`enroll`]: getting a certificate over TLS with a password.
//! - [`membership`]: joining and leaving groups with signed multicast requests.
//! - [`swarm`]: swarm delivery: pieces passed between members, as the server directs.
//! - [`tls`]: the TLS configuration and the CA-pinning verifier.
//! - [`report`]: turning what was found into the text people read.

pub mod discover;
pub mod enroll;
pub mod home;
pub mod hook;
pub mod identity;
pub mod inbox;
pub mod listen;
pub mod membership;
pub mod renew;
pub mod report;
pub mod status;
pub mod swarm;
pub mod tls;

pub use discover::{Discovery, FoundServer, discover};
pub use home::{ClientSettings, resolve_home};
