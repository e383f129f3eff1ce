//! The state store: an SQLite database, `<state_dir>/gshare.db`, holding what the server must
//! not forget: the certificates it issued (and which are revoked) and group memberships. File
//! deliveries join them in a later schema version.
//!
//! SQLite because it is transactional, embedded, and an operator can inspect it with
//! `sqlite3`; WAL mode with `synchronous = FULL`, so a committed change survives a power cut.
//! The schema is versioned with `PRAGMA user_version`; [`MIGRATIONS`] only ever grows.
//!
//! Calls block (they may fsync): async code runs them on a blocking thread.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use gshare_proto::{Fingerprint, GroupName, UserName};

/// File name of the database inside the state directory.
pub const DATABASE_FILE: &str = "gshare.db";

/// Schema migrations, applied in order; entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE certificates (
        serial         TEXT PRIMARY KEY,          -- hex
        fingerprint    TEXT NOT NULL UNIQUE,      -- SHA256:hex of the DER
        user_name      TEXT NOT NULL,
        der            BLOB NOT NULL,
        issued_at      INTEGER NOT NULL,          -- Unix seconds
        expires_at     INTEGER NOT NULL,
        revoked_at     INTEGER,
        revoked_reason TEXT
    );
    CREATE INDEX certificates_by_user ON certificates (user_name);
    CREATE TABLE memberships (
        user_name  TEXT NOT NULL,
        group_name TEXT NOT NULL,
        joined_at  INTEGER NOT NULL,
        PRIMARY KEY (user_name, group_name)
    );
"#,
    r#"
    CREATE TABLE files (
        id          INTEGER PRIMARY KEY,
        sha256      TEXT NOT NULL,                -- hex; names the spool entry
        name        TEXT NOT NULL,
        size        INTEGER NOT NULL,
        group_name  TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        released_at INTEGER                       -- when the spool entry was let go
    );
    CREATE TABLE deliveries (
        id         INTEGER PRIMARY KEY,
        file_id    INTEGER NOT NULL REFERENCES files (id),
        user_name  TEXT NOT NULL,
        state      TEXT NOT NULL DEFAULT 'pending', -- pending, delivered, failed, dropped, expired
        attempts   INTEGER NOT NULL DEFAULT 0,
        bytes_done INTEGER NOT NULL DEFAULT 0,
        updated_at INTEGER NOT NULL,
        reason     TEXT,
        UNIQUE (file_id, user_name)
    );
    CREATE INDEX deliveries_by_user_state ON deliveries (user_name, state);
    CREATE TABLE seen (
        user_name TEXT PRIMARY KEY,
        last_seen INTEGER NOT NULL
    );
"#,
    r#"
    -- Swarm delivery: where a member's bytes came from, as it reported them, and the members
    -- that sent it pieces that did not verify.
    ALTER TABLE deliveries ADD COLUMN from_server INTEGER;
    ALTER TABLE deliveries ADD COLUMN from_peers INTEGER;
    ALTER TABLE deliveries ADD COLUMN bad_peers TEXT;
"#,
    r#"
    -- Renewal: the serial of the certificate a renewed one replaces (NULL when enrolled).
    ALTER TABLE certificates ADD COLUMN renewed_from TEXT;
"#,
];

/// A delivery waiting for its member, with what the session needs to offer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDelivery {
    pub id: u64,
    pub sha256: String,
    pub name: String,
    pub size: u64,
    pub group: GroupName,
    pub attempts: u32,
}

/// One row of `status`: a file and how it stands with one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryStatus {
    pub delivery: u64,
    pub file_id: u64,
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub group: String,
    pub created_at: i64,
    pub user: String,
    pub state: String,
    pub bytes_done: u64,
    pub updated_at: i64,
    pub reason: Option<String>,
    /// Swarm delivery: bytes the member took from the server and from other members.
    pub from_server: Option<u64>,
    pub from_peers: Option<u64>,
    /// Members that sent this member pieces that did not verify.
    pub bad_peers: Option<String>,
}

/// A file recorded for a group, and the deliveries made for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedFile {
    pub file_id: u64,
    pub deliveries: Vec<(u64, UserName)>,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", path.display())]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("{}: the database has schema version {found}, newer than this gshare-server knows ({known}); upgrade gshare-server", path.display())]
    TooNew { path: PathBuf, found: i64, known: usize },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("database holds an invalid {0}")]
    Invalid(&'static str),
}

/// A certificate the server issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub serial: String,
    pub fingerprint: Fingerprint,
    pub user: UserName,
    pub der: Vec<u8>,
    pub issued_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// One row of `cert list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateListing {
    pub serial: String,
    pub user: UserName,
    pub fingerprint: Fingerprint,
    pub issued_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
    /// The serial of the certificate this one renewed, if it was issued by renewal.
    pub renewed_from: Option<String>,
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub user: UserName,
    pub group: GroupName,
    pub joined_at: i64,
}

/// The open database.
#[derive(Debug)]
pub struct Store {
    connection: Mutex<Connection>,
}

impl Store {
    /// Opens (creating and migrating as needed) the database in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let path = state_dir.join(DATABASE_FILE);
        let open_error = |source| StoreError::Open { path: path.clone(), source };
        // Created by us with its final mode (SQLite gives its -wal and -shm files the same),
        // and an older, looser database corrected.
        let io_error = |error: std::io::Error| StoreError::Io { path: path.clone(), source: error };
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(crate::private::FILE_MODE)
                .open(&path)
                .map_err(io_error)?;
        }
        for suffix in ["", "-wal", "-shm"] {
            let file = state_dir.join(format!("{DATABASE_FILE}{suffix}"));
            crate::private::tighten(&file, crate::private::FILE_MODE).map_err(io_error)?;
        }
        let mut connection = Connection::open(&path).map_err(open_error)?;
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(open_error)?;
        connection.busy_timeout(std::time::Duration::from_secs(10)).map_err(open_error)?;
        migrate(&mut connection, &path)?;
        Ok(Self { connection: Mutex::new(connection) })
    }

    fn connection(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is still safe to use.
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn record_certificate(&self, record: &CertificateRecord) -> Result<(), StoreError> {
        self.connection().execute(
            "INSERT INTO certificates (serial, fingerprint, user_name, der, issued_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                record.serial,
                record.fingerprint.to_string(),
                record.user.as_str(),
                record.der,
                record.issued_at,
                record.expires_at
            ],
        )?;
        Ok(())
    }

    /// Records a certificate issued by renewal of the one with serial `renewed_from`.
    pub fn record_renewal(&self, record: &CertificateRecord, renewed_from: &str) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction()?;
        transaction.execute(
            "INSERT INTO certificates (serial, fingerprint, user_name, der, issued_at, expires_at, renewed_from) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                record.serial,
                record.fingerprint.to_string(),
                record.user.as_str(),
                record.der,
                record.issued_at,
                record.expires_at,
                renewed_from
            ],
        )?;
        transaction.commit()?;
        Ok(())
    }

    /// How many certificates were issued by renewal of the one with serial `serial`.
    pub fn renewals_of(&self, serial: &str) -> Result<usize, StoreError> {
        let count: i64 = self.connection().query_row(
            "SELECT COUNT(*) FROM certificates WHERE renewed_from = ?1",
            [serial],
            |row| row.get(0),
        )?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// Every certificate issued (of `user`, if given), in the order issued, for `cert list`.
    pub fn list_certificates(&self, user: Option<&UserName>) -> Result<Vec<CertificateListing>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare(
            "SELECT serial, user_name, fingerprint, issued_at, expires_at, revoked_at, revoked_reason, renewed_from \
             FROM certificates WHERE ?1 IS NULL OR user_name = ?1 ORDER BY rowid",
        )?;
        let rows = statement.query_map([user.map(UserName::as_str)], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, Option<i64>>(5)?,
                row.get::<_, Option<String>>(6)?,
                row.get::<_, Option<String>>(7)?,
            ))
        })?;
        let mut listing = Vec::new();
        for row in rows {
            let (serial, user, fingerprint, issued_at, expires_at, revoked_at, revoked_reason, renewed_from) = row?;
            listing.push(CertificateListing {
                serial,
                user: UserName::new(&user).map_err(|_| StoreError::Invalid("user name"))?,
                fingerprint: fingerprint.parse().map_err(|_| StoreError::Invalid("certificate fingerprint"))?,
                issued_at,
                expires_at,
                revoked_at,
                revoked_reason,
                renewed_from,
            });
        }
        Ok(listing)
    }

    /// The certificate whose serial (hex) or fingerprint is `text`.
    pub fn find_certificate(&self, text: &str) -> Result<Option<CertificateListing>, StoreError> {
        let wanted = text.trim();
        let fingerprint = wanted.parse::<Fingerprint>().ok();
        let serial = wanted.to_ascii_lowercase().replace(':', "");
        Ok(self
            .list_certificates(None)?
            .into_iter()
            .find(|c| c.serial.eq_ignore_ascii_case(&serial) || Some(c.fingerprint) == fingerprint))
    }

    pub fn certificate(&self, fingerprint: &Fingerprint) -> Result<Option<CertificateRecord>, StoreError> {
        let row = self
            .connection()
            .query_row(
                "SELECT serial, user_name, der, issued_at, expires_at, revoked_at FROM certificates WHERE fingerprint = ?1",
                [fingerprint.to_string()],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Vec<u8>>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, i64>(4)?,
                        row.get::<_, Option<i64>>(5)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(serial, user, der, issued_at, expires_at, revoked_at)| {
            Ok(CertificateRecord {
                serial,
                fingerprint: *fingerprint,
                user: UserName::new(&user).map_err(|_| StoreError::Invalid("user name"))?,
                der,
                issued_at,
                expires_at,
                revoked_at,
            })
        })
        .transpose()
    }

    /// Revokes one certificate. Returns whether it was valid until now.
    pub fn revoke_certificate(&self, fingerprint: &Fingerprint, reason: &str, now: i64) -> Result<bool, StoreError> {
        let revoked = self.connection().execute(
            "UPDATE certificates SET revoked_at = ?2, revoked_reason = ?3 WHERE fingerprint = ?1 AND revoked_at IS NULL",
            params![fingerprint.to_string(), now, reason],
        )?;
        Ok(revoked == 1)
    }

    /// Revokes every certificate of `user` and ends their memberships, in one transaction.
    /// Returns how many certificates were newly revoked.
    pub fn revoke_user(&self, user: &UserName, reason: &str, now: i64) -> Result<usize, StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction()?;
        let revoked = transaction.execute(
            "UPDATE certificates SET revoked_at = ?2, revoked_reason = ?3 WHERE user_name = ?1 AND revoked_at IS NULL",
            params![user.as_str(), now, reason],
        )?;
        transaction.execute("DELETE FROM memberships WHERE user_name = ?1", [user.as_str()])?;
        transaction.execute(
            "UPDATE deliveries SET state = 'dropped', reason = ?2, updated_at = ?3 WHERE user_name = ?1 AND state = 'pending'",
            params![user.as_str(), reason, now],
        )?;
        transaction.commit()?;
        Ok(revoked)
    }

    /// Records a spooled file for `group` and one pending delivery per current member, in one
    /// transaction.
    pub fn record_file(
        &self,
        sha256: &str,
        name: &str,
        size: u64,
        group: &GroupName,
        now: i64,
    ) -> Result<RecordedFile, StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction()?;
        transaction.execute(
            "INSERT INTO files (sha256, name, size, group_name, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![sha256, name, size_to_sql(size)?, group.as_str(), now],
        )?;
        let file_id = transaction.last_insert_rowid();
        let members: Vec<String> = {
            let mut statement =
                transaction.prepare("SELECT user_name FROM memberships WHERE group_name = ?1 ORDER BY user_name")?;
            let rows = statement.query_map([group.as_str()], |row| row.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut deliveries = Vec::with_capacity(members.len());
        for member in members {
            transaction.execute(
                "INSERT INTO deliveries (file_id, user_name, updated_at) VALUES (?1, ?2, ?3)",
                params![file_id, member, now],
            )?;
            let user = UserName::new(&member).map_err(|_| StoreError::Invalid("user name"))?;
            deliveries.push((id_from_sql(transaction.last_insert_rowid())?, user));
        }
        transaction.commit()?;
        Ok(RecordedFile { file_id: id_from_sql(file_id)?, deliveries })
    }

    /// Pending deliveries for `user` in `groups`, oldest first.
    pub fn pending_for(&self, user: &UserName, groups: &[GroupName]) -> Result<Vec<PendingDelivery>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare(
            "SELECT d.id, f.sha256, f.name, f.size, f.group_name, d.attempts FROM deliveries d JOIN files f ON f.id = d.file_id \
             WHERE d.user_name = ?1 AND d.state = 'pending' ORDER BY d.id",
        )?;
        let rows = statement
            .query_map([user.as_str()], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, i64>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut pending = Vec::new();
        for (id, sha256, name, size, group, attempts) in rows {
            let group = GroupName::new(&group).map_err(|_| StoreError::Invalid("group name"))?;
            if groups.contains(&group) {
                pending.push(PendingDelivery {
                    id: id_from_sql(id)?,
                    sha256,
                    name,
                    size: id_from_sql(size)?,
                    group,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                });
            }
        }
        Ok(pending)
    }

    /// Records an acknowledged delivery. Only a pending one: a delivery dropped, failed or
    /// expired in the meantime stays so. Returns whether it was pending.
    pub fn mark_delivered(&self, delivery: u64, now: i64) -> Result<bool, StoreError> {
        let changed = self.connection().execute(
            "UPDATE deliveries SET state = 'delivered', bytes_done = (SELECT size FROM files WHERE files.id = file_id), \
             updated_at = ?2, reason = NULL WHERE id = ?1 AND state = 'pending'",
            params![size_to_sql(delivery)?, now],
        )?;
        Ok(changed == 1)
    }

    /// Counts a failed attempt; after `max_attempts` the delivery is failed for good. Returns
    /// whether it is still pending.
    pub fn mark_attempt_failed(
        &self,
        delivery: u64,
        reason: &str,
        max_attempts: u32,
        now: i64,
    ) -> Result<bool, StoreError> {
        let connection = self.connection();
        connection.execute(
            "UPDATE deliveries SET attempts = attempts + 1, reason = ?2, updated_at = ?3, \
             state = CASE WHEN attempts + 1 >= ?4 THEN 'failed' ELSE state END WHERE id = ?1 AND state = 'pending'",
            params![size_to_sql(delivery)?, reason, now, max_attempts],
        )?;
        let state: String =
            connection
                .query_row("SELECT state FROM deliveries WHERE id = ?1", [size_to_sql(delivery)?], |row| row.get(0))?;
        Ok(state == "pending")
    }

    /// Cancels a sent file: every delivery of it still pending is dropped ("cancelled by the
    /// operator"). Returns those deliveries; `None` if there is no such file.
    pub fn cancel_file(&self, file: u64, now: i64) -> Result<Option<Vec<u64>>, StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction()?;
        let exists = transaction
            .query_row("SELECT 1 FROM files WHERE id = ?1", [size_to_sql(file)?], |_| Ok(()))
            .optional()?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let ids: Vec<i64> = {
            let mut statement =
                transaction.prepare("SELECT id FROM deliveries WHERE file_id = ?1 AND state = 'pending'")?;
            let rows = statement.query_map([size_to_sql(file)?], |row| row.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        transaction.execute(
            "UPDATE deliveries SET state = 'dropped', reason = 'cancelled by the operator', updated_at = ?2 \
             WHERE file_id = ?1 AND state = 'pending'",
            params![size_to_sql(file)?, now],
        )?;
        transaction.commit()?;
        ids.into_iter().map(id_from_sql).collect::<Result<Vec<_>, _>>().map(Some)
    }

    /// Records why a pending delivery waits (the member could not store it), without counting
    /// an attempt.
    pub fn set_waiting_reason(&self, delivery: u64, reason: &str, now: i64) -> Result<(), StoreError> {
        self.connection().execute(
            "UPDATE deliveries SET reason = ?2, updated_at = ?3 WHERE id = ?1 AND state = 'pending'",
            params![size_to_sql(delivery)?, reason, now],
        )?;
        Ok(())
    }

    /// Fails a delivery for good (the member declined it).
    pub fn mark_failed(&self, delivery: u64, reason: &str, now: i64) -> Result<(), StoreError> {
        self.connection().execute(
            "UPDATE deliveries SET state = 'failed', reason = ?2, updated_at = ?3 WHERE id = ?1 AND state = 'pending'",
            params![size_to_sql(delivery)?, reason, now],
        )?;
        Ok(())
    }

    /// The files, not yet released, whose bytes are the spool entry `sha256`.
    pub fn files_with_hash(&self, sha256: &str) -> Result<Vec<u64>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare("SELECT id FROM files WHERE sha256 = ?1 AND released_at IS NULL")?;
        let rows = statement.query_map([sha256], |row| row.get::<_, i64>(0))?;
        rows.map(|id| id_from_sql(id?)).collect()
    }

    /// Fails, for good and with `reason`, every pending delivery of `files`: their spool entry
    /// is damaged, so offering them again would only send bad bytes. Returns the deliveries
    /// failed, with their users.
    pub fn fail_files(&self, files: &[u64], reason: &str, now: i64) -> Result<Vec<(u64, UserName)>, StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction()?;
        let mut failed = Vec::new();
        for &file in files {
            let mut statement =
                transaction.prepare("SELECT id, user_name FROM deliveries WHERE file_id = ?1 AND state = 'pending'")?;
            let rows = statement
                .query_map([size_to_sql(file)?], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))?;
            for row in rows {
                let (id, user) = row?;
                let user = UserName::new(&user).map_err(|_| StoreError::Invalid("user name"))?;
                failed.push((id_from_sql(id)?, user));
            }
            transaction.execute(
                "UPDATE deliveries SET state = 'failed', reason = ?2, updated_at = ?3 WHERE file_id = ?1 AND state = 'pending'",
                params![size_to_sql(file)?, reason, now],
            )?;
        }
        transaction.commit()?;
        Ok(failed)
    }

    /// Records where a swarm delivery's bytes came from, as the member reported, and who sent
    /// it bad pieces (user names with fingerprints), for `status`.
    pub fn set_swarm_totals(
        &self,
        delivery: u64,
        from_server: u64,
        from_peers: u64,
        bad_peers: Option<&str>,
    ) -> Result<(), StoreError> {
        self.connection().execute(
            "UPDATE deliveries SET from_server = ?2, from_peers = ?3, bad_peers = ?4 WHERE id = ?1",
            params![size_to_sql(delivery)?, size_to_sql(from_server)?, size_to_sql(from_peers)?, bad_peers],
        )?;
        Ok(())
    }

    /// Records how far each of several pending deliveries got, (delivery, bytes done, time),
    /// in one transaction: one sync for all of them.
    pub fn set_progress(&self, progress: &[(u64, u64, i64)]) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction()?;
        for &(delivery, bytes_done, now) in progress {
            transaction.execute(
                "UPDATE deliveries SET bytes_done = ?2, updated_at = ?3 WHERE id = ?1 AND state = 'pending'",
                params![size_to_sql(delivery)?, size_to_sql(bytes_done)?, now],
            )?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// Expires pending deliveries of files recorded before `cutoff`. Returns how many.
    pub fn expire_before(&self, cutoff: i64, now: i64) -> Result<usize, StoreError> {
        Ok(self.connection().execute(
            "UPDATE deliveries SET state = 'expired', reason = 'retention period ended', updated_at = ?2 \
             WHERE state = 'pending' AND file_id IN (SELECT id FROM files WHERE created_at < ?1)",
            params![cutoff, now],
        )?)
    }

    /// Spool entries no delivery needs any more: marks their files released and returns the
    /// hashes whose spool entry can be deleted (no other unreleased file shares them).
    pub fn release_finished_files(&self, now: i64) -> Result<Vec<String>, StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction()?;
        transaction.execute(
            "UPDATE files SET released_at = ?1 WHERE released_at IS NULL AND NOT EXISTS \
             (SELECT 1 FROM deliveries d WHERE d.file_id = files.id AND d.state = 'pending')",
            [now],
        )?;
        let hashes: Vec<String> = {
            let mut statement = transaction.prepare(
                "SELECT DISTINCT sha256 FROM files f WHERE released_at = ?1 AND NOT EXISTS \
                 (SELECT 1 FROM files g WHERE g.sha256 = f.sha256 AND g.released_at IS NULL)",
            )?;
            let rows = statement.query_map([now], |row| row.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        transaction.commit()?;
        Ok(hashes)
    }

    /// Hashes of every spool entry still needed.
    pub fn needed_hashes(&self) -> Result<Vec<String>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare("SELECT DISTINCT sha256 FROM files WHERE released_at IS NULL")?;
        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn touch_seen(&self, user: &UserName, now: i64) -> Result<(), StoreError> {
        self.connection().execute(
            "INSERT INTO seen (user_name, last_seen) VALUES (?1, ?2) ON CONFLICT (user_name) DO UPDATE SET last_seen = ?2",
            params![user.as_str(), now],
        )?;
        Ok(())
    }

    /// When each member was last connected.
    pub fn last_seen(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare("SELECT user_name, last_seen FROM seen ORDER BY user_name")?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every delivery with its file, newest file first.
    /// How many deliveries are in each state.
    pub fn delivery_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare("SELECT state, COUNT(*) FROM deliveries GROUP BY state")?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn delivery_status(&self) -> Result<Vec<DeliveryStatus>, StoreError> {
        let connection = self.connection();
        let mut statement = connection.prepare(
            "SELECT d.id, f.id, f.name, f.size, f.sha256, f.group_name, f.created_at, d.user_name, d.state, d.bytes_done, \
             d.updated_at, d.reason, d.from_server, d.from_peers, d.bad_peers \
             FROM deliveries d JOIN files f ON f.id = d.file_id ORDER BY f.id DESC, d.user_name",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(DeliveryStatus {
                delivery: row.get::<_, i64>(0)?.max(0) as u64,
                file_id: row.get::<_, i64>(1)?.max(0) as u64,
                name: row.get(2)?,
                size: row.get::<_, i64>(3)?.max(0) as u64,
                sha256: row.get(4)?,
                group: row.get(5)?,
                created_at: row.get(6)?,
                user: row.get(7)?,
                state: row.get(8)?,
                bytes_done: row.get::<_, i64>(9)?.max(0) as u64,
                updated_at: row.get(10)?,
                reason: row.get(11)?,
                from_server: row.get::<_, Option<i64>>(12)?.map(|n| n.max(0) as u64),
                from_peers: row.get::<_, Option<i64>>(13)?.map(|n| n.max(0) as u64),
                bad_peers: row.get(14)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Users holding at least one certificate that is not revoked.
    pub fn users_with_valid_certificates(&self) -> Result<Vec<UserName>, StoreError> {
        let connection = self.connection();
        let mut statement = connection
            .prepare("SELECT DISTINCT user_name FROM certificates WHERE revoked_at IS NULL ORDER BY user_name")?;
        let names = statement.query_map([], |row| row.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        names.iter().map(|name| UserName::new(name).map_err(|_| StoreError::Invalid("user name"))).collect()
    }

    /// Records a membership; returns false if it already existed (joining twice is harmless).
    pub fn add_membership(&self, user: &UserName, group: &GroupName, now: i64) -> Result<bool, StoreError> {
        let added = self.connection().execute(
            "INSERT OR IGNORE INTO memberships (user_name, group_name, joined_at) VALUES (?1, ?2, ?3)",
            params![user.as_str(), group.as_str(), now],
        )?;
        Ok(added == 1)
    }

    /// Ends a membership and drops the member's pending deliveries of that group's files, in
    /// one transaction; returns false if there was no membership.
    pub fn remove_membership(
        &self,
        user: &UserName,
        group: &GroupName,
        reason: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction()?;
        let removed = transaction.execute(
            "DELETE FROM memberships WHERE user_name = ?1 AND group_name = ?2",
            params![user.as_str(), group.as_str()],
        )?;
        transaction.execute(
            "UPDATE deliveries SET state = 'dropped', reason = ?3, updated_at = ?4 WHERE user_name = ?1 AND state = 'pending' \
             AND file_id IN (SELECT id FROM files WHERE group_name = ?2)",
            params![user.as_str(), group.as_str(), reason, now],
        )?;
        transaction.commit()?;
        Ok(removed == 1)
    }

    /// The groups `user` is a member of.
    pub fn groups_of(&self, user: &UserName) -> Result<Vec<GroupName>, StoreError> {
        let connection = self.connection();
        let mut statement =
            connection.prepare("SELECT group_name FROM memberships WHERE user_name = ?1 ORDER BY group_name")?;
        let rows =
            statement.query_map([user.as_str()], |row| row.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        rows.iter().map(|group| GroupName::new(group).map_err(|_| StoreError::Invalid("group name"))).collect()
    }

    /// Every membership, by group then user.
    pub fn memberships(&self) -> Result<Vec<Membership>, StoreError> {
        let connection = self.connection();
        let mut statement = connection
            .prepare("SELECT user_name, group_name, joined_at FROM memberships ORDER BY group_name, user_name")?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(user, group, joined_at)| {
                Ok(Membership {
                    user: UserName::new(&user).map_err(|_| StoreError::Invalid("user name"))?,
                    group: GroupName::new(&group).map_err(|_| StoreError::Invalid("group name"))?,
                    joined_at,
                })
            })
            .collect()
    }
}

/// Now, in the Unix seconds every timestamp in the store uses.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn size_to_sql(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Invalid("number too large"))
}

fn id_from_sql(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Invalid("negative number"))
}

fn migrate(connection: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let known = MIGRATIONS.len();
    let current = usize::try_from(version).map_err(|_| StoreError::Invalid("schema version"))?;
    if current > known {
        return Err(StoreError::TooNew { path: path.to_owned(), found: version, known });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", index + 1)?;
        transaction.commit()?;
        tracing::info!(version = index + 1, "database schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user: &str, byte: u8) -> CertificateRecord {
        CertificateRecord {
            serial: format!("{byte:02x}"),
            fingerprint: Fingerprint([byte; 32]),
            user: user.parse().unwrap(),
            der: vec![byte; 10],
            issued_at: 1,
            expires_at: 2,
            revoked_at: None,
        }
    }

    #[test]
    fn certificates_memberships_and_revocation_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let alice: UserName = "alice".parse().unwrap();
        let developers: GroupName = "Developers".parse().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.record_certificate(&record("alice", 1)).unwrap();
            store.record_certificate(&record("bob", 2)).unwrap();
            assert!(store.add_membership(&alice, &developers, 5).unwrap());
            assert!(!store.add_membership(&alice, &developers, 6).unwrap(), "joining twice is harmless");
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.certificate(&Fingerprint([1; 32])).unwrap(), Some(record("alice", 1)));
        assert_eq!(store.certificate(&Fingerprint([9; 32])).unwrap(), None);
        assert_eq!(
            store.memberships().unwrap(),
            vec![Membership { user: alice.clone(), group: developers.clone(), joined_at: 5 }]
        );
        assert_eq!(store.groups_of(&alice).unwrap(), [developers]);
        assert_eq!(store.users_with_valid_certificates().unwrap().len(), 2);

        assert_eq!(store.revoke_user(&alice, "removed", 10).unwrap(), 1);
        assert_eq!(store.revoke_user(&alice, "removed", 11).unwrap(), 0);
        assert_eq!(store.certificate(&Fingerprint([1; 32])).unwrap().unwrap().revoked_at, Some(10));
        assert!(store.memberships().unwrap().is_empty());
        assert_eq!(store.users_with_valid_certificates().unwrap(), vec!["bob".parse::<UserName>().unwrap()]);
    }

    /// A store (in a directory kept while the first value lives) where alice and bob are in
    /// Developers.
    fn alice_and_bob_in_developers() -> (tempfile::TempDir, Store, GroupName, UserName, UserName) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let developers: GroupName = "Developers".parse().unwrap();
        let (alice, bob): (UserName, UserName) = ("alice".parse().unwrap(), "bob".parse().unwrap());
        store.add_membership(&alice, &developers, 1).unwrap();
        store.add_membership(&bob, &developers, 1).unwrap();
        (dir, store, developers, alice, bob)
    }

    #[test]
    fn deliveries_follow_members_attempts_and_release() {
        let (_dir, store, developers, alice, _bob) = alice_and_bob_in_developers();
        let recorded = store.record_file("aa", "report.pdf", 10, &developers, 2).unwrap();
        assert_eq!(recorded.deliveries.iter().map(|(_, u)| u.as_str()).collect::<Vec<_>>(), ["alice", "bob"]);
        let pending = store.pending_for(&alice, std::slice::from_ref(&developers)).unwrap();
        assert_eq!(pending.len(), 1);
        assert!(store.pending_for(&alice, &[]).unwrap().is_empty(), "only subscribed groups");
        let (alice_delivery, bob_delivery) = (recorded.deliveries[0].0, recorded.deliveries[1].0);

        assert!(store.mark_attempt_failed(alice_delivery, "hash mismatch", 2, 3).unwrap());
        assert!(!store.mark_attempt_failed(alice_delivery, "hash mismatch", 2, 4).unwrap(), "failed for good");
        assert!(store.pending_for(&alice, std::slice::from_ref(&developers)).unwrap().is_empty());
        assert!(store.release_finished_files(5).unwrap().is_empty(), "bob still needs it");
        store.mark_delivered(bob_delivery, 6).unwrap();
        assert_eq!(store.release_finished_files(7).unwrap(), ["aa"]);
        assert!(store.needed_hashes().unwrap().is_empty());
        let states: Vec<_> =
            store.delivery_status().unwrap().into_iter().map(|d| (d.user, d.state, d.bytes_done)).collect();
        assert_eq!(states, [("alice".into(), "failed".into(), 0), ("bob".into(), "delivered".into(), 10)]);
    }

    #[test]
    fn progress_of_many_deliveries_is_recorded_at_once_and_never_over_an_outcome() {
        let (_dir, store, developers, ..) = alice_and_bob_in_developers();
        let recorded = store.record_file("aa", "big.iso", 1000, &developers, 2).unwrap();
        let (alice_delivery, bob_delivery) = (recorded.deliveries[0].0, recorded.deliveries[1].0);
        store.set_progress(&[(alice_delivery, 300, 3), (bob_delivery, 700, 3)]).unwrap();
        let done =
            |store: &Store| -> Vec<u64> { store.delivery_status().unwrap().iter().map(|d| d.bytes_done).collect() };
        assert_eq!(done(&store), [300, 700]);
        // Progress noted before bob's delivery ended, written after it: the outcome stands.
        store.mark_delivered(bob_delivery, 4).unwrap();
        store.set_progress(&[(alice_delivery, 500, 5), (bob_delivery, 900, 5)]).unwrap();
        assert_eq!(done(&store), [500, 1000]);
        store.set_progress(&[]).unwrap();
    }

    #[test]
    fn a_late_ack_revives_a_dropped_delivery() {
        // Regression: an ack arriving after the delivery was dropped marked it delivered.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let developers: GroupName = "Developers".parse().unwrap();
        let alice: UserName = "alice".parse().unwrap();
        store.add_membership(&alice, &developers, 1).unwrap();
        let recorded = store.record_file("aa", "a", 1, &developers, 2).unwrap();
        store.revoke_user(&alice, "removed", 3).unwrap();
        assert!(!store.mark_delivered(recorded.deliveries[0].0, 4).unwrap());
        assert_eq!(store.delivery_status().unwrap()[0].state, "dropped");
    }

    #[test]
    fn leaving_a_group_drops_its_pending_deliveries_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (developers, designers): (GroupName, GroupName) =
            ("Developers".parse().unwrap(), "Designers".parse().unwrap());
        let alice: UserName = "alice".parse().unwrap();
        store.add_membership(&alice, &developers, 1).unwrap();
        store.add_membership(&alice, &designers, 1).unwrap();
        store.record_file("aa", "code.rs", 1, &developers, 2).unwrap();
        store.record_file("bb", "logo.svg", 1, &designers, 2).unwrap();
        assert!(store.remove_membership(&alice, &designers, "left the group", 3).unwrap());
        let both = [developers.clone(), designers];
        let pending: Vec<String> = store.pending_for(&alice, &both).unwrap().into_iter().map(|d| d.name).collect();
        assert_eq!(pending, ["code.rs"]);
        assert_eq!(store.groups_of(&alice).unwrap(), [developers]);
    }

    #[test]
    fn revoking_a_user_drops_their_pending_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let developers: GroupName = "Developers".parse().unwrap();
        let alice: UserName = "alice".parse().unwrap();
        store.add_membership(&alice, &developers, 1).unwrap();
        store.record_file("aa", "a", 1, &developers, 2).unwrap();
        store.revoke_user(&alice, "removed", 3).unwrap();
        assert!(store.pending_for(&alice, &[developers]).unwrap().is_empty());
        assert_eq!(store.delivery_status().unwrap()[0].state, "dropped");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path()).unwrap();
        Connection::open(dir.path().join(DATABASE_FILE)).unwrap().pragma_update(None, "user_version", 99).unwrap();
        let error = Store::open(dir.path()).unwrap_err();
        assert!(error.to_string().contains("schema version 99"), "{error}");
    }
}
