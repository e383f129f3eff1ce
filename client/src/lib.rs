//! gshare-client as a library: what the `gshare-client` binary does, callable from tests.
//!
//! # Layout
//!
//! - [`home`]: the client's home directory and `client.toml`.
//! - [`discover`]: finding servers and their groups from verified multicast announcements.
//! - [`report`]: turning what was found into the text people read.

pub mod discover;
pub mod home;
pub mod report;

pub use discover::{Discovery, FoundServer, discover};
pub use home::{ClientSettings, resolve_home};
