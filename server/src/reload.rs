//! Keeping the running server in step with `users.toml`.
//!
//! The file is polled once a second (by modification time, size and inode, so an editor that
//! writes a new file and renames it is noticed too). A new version that parses replaces the
//! store in force at once; one that does not is reported with its file and line, and the last
//! good store stays in force. After every change, [`reconcile`] revokes the certificates and
//! memberships of users who were removed or disabled, and ends memberships of groups a user may
//! no longer join: their pending deliveries of that group are dropped and open sessions stop
//! receiving it.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use crate::state::{Server, blocking};
use crate::store::StoreError;
use crate::users::UserStore;

/// How often `users.toml` is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies a version of the file cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified_nanos: i128,
    len: u64,
    inode: u64,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let metadata = std::fs::metadata(path).ok()?;
    let modified_nanos = i128::from(metadata.mtime()) * 1_000_000_000 + i128::from(metadata.mtime_nsec());
    Some(Stamp { modified_nanos, len: metadata.len(), inode: metadata.ino() })
}

/// Polls `users.toml` until the task is dropped.
pub(crate) async fn watch_users(server: Arc<Server>) {
    let path = server.config.users_file.clone();
    let mut last = stamp(&path);
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let current = stamp(&path);
        if current == last {
            continue;
        }
        last = current;
        match UserStore::load(&path, &server.config.groups) {
            Ok(users) => {
                tracing::info!(path = %path.display(), users = users.users.len(), "user store reloaded");
                server.replace_users(users);
                if let Err(error) = reconcile(&server).await {
                    tracing::error!(%error, "cannot apply the user store to the state store");
                }
            }
            Err(error) => tracing::error!("user store not reloaded, the last good one stays in force: {error}"),
        }
    }
}

/// Revokes what the user store no longer allows. Returns how many users were revoked.
pub(crate) async fn reconcile(server: &Arc<Server>) -> Result<usize, StoreError> {
    let users = server.users();
    let now = crate::store::unix_now();
    let (revoked_users, ended) = blocking(server, move |store| {
        let mut revoked = Vec::new();
        let mut ended = Vec::new();
        for user in store.users_with_valid_certificates()? {
            // A disabled user keeps their certificates (every check refuses them while
            // disabled, and enabling them again lets them back in); only removal revokes.
            let reason = match users.users.get(&user) {
                None => "removed from the user store",
                Some(_) => continue,
            };
            let certificates = store.revoke_user(&user, reason, now)?;
            tracing::warn!(%user, certificates, "revoked: {reason}");
            revoked.push(user);
        }
        for membership in store.memberships()? {
            let allowed = users.active(&membership.user).is_some_and(|account| account.groups.contains(&membership.group));
            if !allowed {
                store.remove_membership(&membership.user, &membership.group, "no longer allowed in the group", now)?;
                tracing::warn!(user = %membership.user, group = %membership.group, "membership ended: no longer allowed");
                ended.push(membership);
            }
        }
        Ok((revoked, ended))
    })
    .await?;
    for membership in &ended {
        server.narrow_sessions(&membership.user, &membership.group);
    }
    for user in &revoked_users {
        server.close_sessions(user);
    }
    // `user remove` revokes in the database itself, so a connected user may have nothing left
    // to revoke here; their sessions must close all the same.
    let users = server.users();
    for user in server.online_users() {
        if users.active(&user).is_none() {
            tracing::warn!(%user, "closing the sessions of a user no longer allowed");
            server.close_sessions(&user);
        }
    }
    Ok(revoked_users.len())
}
