//! What the server's tasks share: configuration, identity, the state store, the current user
//! store, and the limits on password checking.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{Semaphore, broadcast, watch};

use gshare_proto::{Fingerprint, GroupName, UserName};

use crate::config::Config;
use crate::identity::ServerIdentity;
use crate::ratelimit::FailureLimiter;
use crate::spool::Spool;
use crate::store::{Store, StoreError};
use crate::users::UserStore;

/// Most subjects the enrollment failure limiter remembers.
const LIMITER_CAPACITY: usize = 10_000;
/// Events buffered for slow listeners (`send --wait`) before they miss some.
const EVENT_BUFFER: usize = 1024;
/// Least time between two writes of deliveries' progress to the state store.
pub const PROGRESS_RECORD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What happens to deliveries and sessions, for `send --wait` to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    Progress { delivery: u64, user: UserName, bytes: u64, size: u64 },
    Delivered { delivery: u64, user: UserName },
    Failed { delivery: u64, user: UserName, reason: String, retrying: bool },
    Online(UserName),
    Offline(UserName),
}

/// What the server tells an open session while it runs: the groups it may still receive,
/// and whether it must close (its user or certificate was revoked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionControl {
    pub closed: bool,
    pub groups: Vec<GroupName>,
}

/// An open member session, as the registry knows it.
#[derive(Debug)]
struct SessionEntry {
    id: u64,
    certificate: Fingerprint,
    control: watch::Sender<SessionControl>,
}

/// A session was refused because its certificate already has this many open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooManySessions(pub usize);

/// File transfers one user's sessions may stream at once. A user's devices (and a member
/// that opens several sessions) take turns, so one user can never hold more than this many of
/// the server's `concurrent_transfers`.
pub const TRANSFERS_PER_USER: usize = 1;

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
    /// Bounds the transfers streaming at once, so memory does not grow with member count.
    pub transfers: Semaphore,
    /// Each user's share of `transfers` ([`TRANSFERS_PER_USER`]).
    user_transfers: Mutex<HashMap<UserName, Arc<Semaphore>>>,
    pub spool: Spool,
    /// Held while a spool entry is re-hashed after a member's failed check, so that members
    /// failing together cost one pass over the entry at a time, not one each at once.
    pub spool_checks: tokio::sync::Mutex<()>,
    /// What the Prometheus endpoint reports.
    pub metrics: crate::metrics::Metrics,
    pub swarms: crate::swarm::Swarms,
    sessions: Mutex<HashMap<UserName, Vec<SessionEntry>>>,
    /// Deliveries cancelled by the operator while the server runs.
    cancelled: Mutex<std::collections::HashSet<u64>>,
    next_session: AtomicU64,
    /// Bumped whenever deliveries are recorded, so idle sessions look for work.
    work: watch::Sender<u64>,
    pub events: broadcast::Sender<Event>,
    /// How far deliveries got, waiting to be recorded ([`record_progress`]).
    pub progress: ProgressBook,
    /// Buffers for the pieces swarm sessions send, taken with a transfer turn.
    pub piece_buffers: BufferPool,
}

/// Buffers handed out and given back, so that sessions reuse a few instead of each keeping
/// one: 500 members' swarm sessions each holding a piece's buffer between pieces held the
/// server at 284 MiB while sending them a 10 MiB file (`bench/idle`).
#[derive(Debug, Default)]
pub(crate) struct BufferPool(Mutex<Vec<Vec<u8>>>);

impl BufferPool {
    /// A spare buffer, or a new empty one.
    pub fn take(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop().unwrap_or_default()
    }

    /// Keeps `buffer` for the next taker, unless `keep` are kept already.
    pub fn give_back(&self, buffer: Vec<u8>, keep: usize) {
        let mut spare = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if spare.len() < keep {
            spare.push(buffer);
        }
    }
}

/// The latest progress of each delivery that moved since it was last recorded. Sessions note
/// it here and go on sending; [`record_progress`] writes it all in one transaction at most
/// every [`PROGRESS_RECORD_EVERY`]. Each write of the state store waits for the disk (it is
/// synced, so that what it records survives a power cut): sessions that each waited for their
/// own record, 16 of them once a second through the one store, stopped sending pieces for as
/// long, on a busy disk a tenth of a second and more at a time. Progress is for `status` only:
/// a second late, or lost in a crash, it costs nothing (a delivery's outcome is recorded at
/// once, by its session).
#[derive(Debug, Default)]
pub(crate) struct ProgressBook {
    latest: Mutex<HashMap<u64, (u64, i64)>>,
    noted: tokio::sync::Notify,
}

impl ProgressBook {
    /// Notes that `delivery` has `bytes` done at `now` (Unix seconds).
    pub fn note(&self, delivery: u64, bytes: u64, now: i64) {
        self.latest.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(delivery, (bytes, now));
        self.noted.notify_one();
    }

    fn take(&self) -> Vec<(u64, u64, i64)> {
        let latest = std::mem::take(&mut *self.latest.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        latest.into_iter().map(|(delivery, (bytes, now))| (delivery, bytes, now)).collect()
    }
}

/// Writes the progress sessions noted ([`ProgressBook`]), all of it in one transaction at a
/// time, at most every [`PROGRESS_RECORD_EVERY`]; runs for as long as the server does.
pub(crate) async fn record_progress(server: Arc<Server>) {
    loop {
        server.progress.noted.notified().await;
        let progress = server.progress.take();
        if !progress.is_empty()
            && let Err(error) = blocking(&server, move |store| store.set_progress(&progress)).await
        {
            tracing::error!(%error, "cannot record the progress of deliveries; `status` shows older figures");
        }
        tokio::time::sleep(PROGRESS_RECORD_EVERY).await;
    }
}

impl Server {
    pub fn new(
        config: Config,
        identity: ServerIdentity,
        store: Store,
        users: UserStore,
        dummy_hash: String,
        spool: Spool,
    ) -> Self {
        let password_checks = Semaphore::new(config.password_checks);
        let transfers = Semaphore::new(config.concurrent_transfers);
        Self {
            transfers,
            user_transfers: Mutex::new(HashMap::new()),
            spool,
            spool_checks: tokio::sync::Mutex::new(()),
            metrics: crate::metrics::Metrics::default(),
            swarms: crate::swarm::Swarms::default(),
            sessions: Mutex::new(HashMap::new()),
            cancelled: Mutex::default(),
            next_session: AtomicU64::new(1),
            work: watch::Sender::new(0),
            events: broadcast::Sender::new(EVENT_BUFFER),
            progress: ProgressBook::default(),
            piece_buffers: BufferPool::default(),
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

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<UserName, Vec<SessionEntry>>> {
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers an open session of `user` with `certificate`, unless that certificate has
    /// `sessions_per_certificate` open already. The receiver tells the session what changes.
    pub fn register_session(
        &self,
        user: &UserName,
        certificate: Fingerprint,
        groups: &[GroupName],
    ) -> Result<(u64, watch::Receiver<SessionControl>), TooManySessions> {
        let limit = self.config.sessions_per_certificate;
        let mut sessions = self.sessions();
        let entries = sessions.entry(user.clone()).or_default();
        if entries.iter().filter(|entry| entry.certificate == certificate).count() >= limit {
            if entries.is_empty() {
                sessions.remove(user);
            }
            return Err(TooManySessions(limit));
        }
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (control, receiver) = watch::channel(SessionControl { closed: false, groups: groups.to_vec() });
        entries.push(SessionEntry { id, certificate, control });
        drop(sessions);
        self.emit(Event::Online(user.clone()));
        Ok((id, receiver))
    }

    pub fn unregister_session(&self, user: &UserName, id: u64) {
        let mut sessions = self.sessions();
        if let Some(entries) = sessions.get_mut(user) {
            entries.retain(|entry| entry.id != id);
            if entries.is_empty() {
                sessions.remove(user);
                drop(sessions);
                self.emit(Event::Offline(user.clone()));
            }
        }
    }

    /// Users with a session open now.
    pub fn online_users(&self) -> Vec<UserName> {
        let mut users: Vec<UserName> = self.sessions().keys().cloned().collect();
        users.sort();
        users
    }

    /// Whether `user` has a session open now that receives `group`'s files.
    pub fn is_receiving(&self, user: &UserName, group: &GroupName) -> bool {
        self.sessions().get(user).is_some_and(|entries| {
            entries.iter().any(|entry| {
                let control = entry.control.borrow();
                !control.closed && control.groups.contains(group)
            })
        })
    }

    /// Asks every open session of `user` to close (the user was removed or disabled), at once,
    /// even in the middle of a write.
    /// Member sessions open now.
    pub fn online_sessions(&self) -> usize {
        self.sessions().values().map(Vec::len).sum()
    }

    pub fn close_sessions(&self, user: &UserName) {
        if let Some(entries) = self.sessions().get(user) {
            for entry in entries {
                entry.control.send_modify(|control| control.closed = true);
            }
        }
    }

    /// Asks every open session made with `certificate` to close (that one certificate was
    /// revoked), at once, even in the middle of a write. Returns how many there were.
    pub fn close_certificate_sessions(&self, certificate: &Fingerprint) -> usize {
        let mut closed = 0;
        for entries in self.sessions().values() {
            for entry in entries.iter().filter(|entry| entry.certificate == *certificate) {
                entry.control.send_modify(|control| control.closed = true);
                closed += 1;
            }
        }
        closed
    }

    /// Deliveries the operator cancelled (`cancel`): a transfer of one stops at its next
    /// piece, and its member throws away what it got. Every session is woken to look.
    pub fn cancel_deliveries(&self, deliveries: &[u64]) {
        self.cancelled.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend(deliveries.iter().copied());
        for entries in self.sessions().values() {
            for entry in entries {
                entry.control.send_modify(|_| {});
            }
        }
    }

    pub fn is_cancelled(&self, delivery: u64) -> bool {
        self.cancelled.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(&delivery)
    }

    /// Stops every open session of `user` from receiving `group`'s files (the user left the
    /// group or may no longer join it); a transfer of one of them is cancelled.
    pub fn narrow_sessions(&self, user: &UserName, group: &GroupName) {
        if let Some(entries) = self.sessions().get(user) {
            for entry in entries {
                entry.control.send_if_modified(|control| {
                    let before = control.groups.len();
                    control.groups.retain(|g| g != group);
                    control.groups.len() != before
                });
            }
        }
    }

    /// The semaphore that holds `user` to [`TRANSFERS_PER_USER`] transfers at once.
    pub fn user_transfers(&self, user: &UserName) -> Arc<Semaphore> {
        let mut table = self.user_transfers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(table.entry(user.clone()).or_insert_with(|| Arc::new(Semaphore::new(TRANSFERS_PER_USER))))
    }

    /// Tells idle sessions that new deliveries were recorded.
    pub fn signal_work(&self) {
        self.work.send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    pub fn watch_work(&self) -> watch::Receiver<u64> {
        self.work.subscribe()
    }

    pub fn emit(&self, event: Event) {
        // Nobody listening is fine.
        let _ = self.events.send(event);
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
