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
const MIGRATIONS: &[&str] = &[r#"
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
"#];

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", path.display())]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("{}: the database has schema version {found}, newer than this gshare-server knows ({known}); upgrade gshare-server", path.display())]
    TooNew { path: PathBuf, found: i64, known: usize },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
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
        transaction.commit()?;
        Ok(revoked)
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

    /// Ends a membership; returns false if there was none.
    pub fn remove_membership(&self, user: &UserName, group: &GroupName) -> Result<bool, StoreError> {
        let removed = self.connection().execute(
            "DELETE FROM memberships WHERE user_name = ?1 AND group_name = ?2",
            params![user.as_str(), group.as_str()],
        )?;
        Ok(removed == 1)
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
            vec![Membership { user: alice.clone(), group: developers, joined_at: 5 }]
        );
        assert_eq!(store.users_with_valid_certificates().unwrap().len(), 2);

        assert_eq!(store.revoke_user(&alice, "removed", 10).unwrap(), 1);
        assert_eq!(store.revoke_user(&alice, "removed", 11).unwrap(), 0);
        assert_eq!(store.certificate(&Fingerprint([1; 32])).unwrap().unwrap().revoked_at, Some(10));
        assert!(store.memberships().unwrap().is_empty());
        assert_eq!(store.users_with_valid_certificates().unwrap(), vec!["bob".parse::<UserName>().unwrap()]);
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
