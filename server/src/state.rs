//! What the server's tasks share: configuration, identity, the state store, the current user
//! store, and the limits on password checking.

use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::identity::ServerIdentity;
use crate::ratelimit::FailureLimiter;
use crate::store::{Store, StoreError};
use crate::users::UserStore;

/// Most subjects the enrollment failure limiter remembers.
const LIMITER_CAPACITY: usize = 10_000;

/// State shared by the server's tasks.
#[derive(Debug)]
pub(crate) struct Server {
    pub config: Config,
    pub identity: ServerIdentity,
    pub store: Store,
    users: RwLock<Arc<UserStore>>,
    /// A hash of a random password with the configured cost: unknown users are checked against
    /// it, so they cost the same time as known ones.
    pub dummy_hash: String,
    pub limiter: Mutex<FailureLimiter>,
    pub password_checks: Semaphore,
}

impl Server {
    pub fn new(config: Config, identity: ServerIdentity, store: Store, users: UserStore, dummy_hash: String) -> Self {
        let password_checks = Semaphore::new(config.password_checks);
        Self {
            config,
            identity,
            store,
            users: RwLock::new(Arc::new(users)),
            dummy_hash,
            limiter: Mutex::new(FailureLimiter::new(LIMITER_CAPACITY)),
            password_checks,
        }
    }

    /// The user store in force now.
    pub fn users(&self) -> Arc<UserStore> {
        // A poisoned lock still holds a whole Arc: swapping it is one store.
        Arc::clone(&self.users.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    pub fn replace_users(&self, users: UserStore) {
        *self.users.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(users);
    }

    pub fn limiter(&self) -> std::sync::MutexGuard<'_, FailureLimiter> {
        self.limiter.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs a store call on a blocking thread (SQLite may fsync).
pub(crate) async fn blocking<T: Send + 'static>(
    server: &Arc<Server>,
    call: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let server = Arc::clone(server);
    match tokio::task::spawn_blocking(move || call(&server.store)).await {
        Ok(result) => result,
        // The closure panicked or the runtime is shutting down; report it as a store failure.
        Err(error) => Err(StoreError::Invalid(if error.is_panic() {
            "state (a store call panicked)"
        } else {
            "state (shutting down)"
        })),
    }
}
