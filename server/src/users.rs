//! The user store, `users.toml`: who may enroll, with which password, into which groups.
//!
//! ```toml
//! [users.alice]
//! password = "$argon2id$v=19$m=19456,t=2,p=1$..."   # argon2id PHC string, never the password
//! groups   = ["Developers"]
//! disabled = false                                  # optional
//! ```
//!
//! Reading ([`UserStore::parse`]) checks every name, hash and group against the server's
//! groups and reports mistakes with file, line and key. Editing ([`edit`]) goes through
//! toml_edit so the operator's comments and layout survive, and writes atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::Deserialize;
use toml::Spanned;

use gshare_common::{ConfigFileError, config_file};
use gshare_proto::{GroupName, UserName};

/// Argon2id memory cost default and minimum, in KiB (OWASP's recommendation).
pub const DEFAULT_MEMORY_KIB: u32 = 19_456;
/// Argon2id passes default and minimum.
pub const DEFAULT_ITERATIONS: u32 = 2;
/// Argon2id lanes default and minimum.
pub const DEFAULT_PARALLELISM: u32 = 1;
/// Shortest password `user add` and `user passwd` accept, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// One user's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// argon2id PHC string.
    pub password_hash: String,
    /// Groups the user may join.
    pub groups: BTreeSet<GroupName>,
    /// A disabled user is treated as absent: no enrollment, no joins, no sessions.
    pub disabled: bool,
}

/// The parsed user store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserStore {
    pub users: BTreeMap<UserName, User>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersToml {
    #[serde(default)]
    users: BTreeMap<String, Spanned<UserToml>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserToml {
    password: Spanned<String>,
    groups: Vec<Spanned<String>>,
    #[serde(default)]
    disabled: bool,
}

impl UserStore {
    /// Reads the store. A missing file is an empty store (users are added with `user add`).
    pub fn load(path: &Path, server_groups: &[GroupName]) -> Result<Self, ConfigFileError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text, server_groups),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(error) => Err(ConfigFileError::whole_file(path, format!("cannot read the file: {error}"))),
        }
    }

    /// Parses and checks the text of a user store; `path` names it in messages.
    pub fn parse(path: &Path, text: &str, server_groups: &[GroupName]) -> Result<Self, ConfigFileError> {
        let raw: UsersToml = config_file::parse(path, text)?;
        let error =
            |span: std::ops::Range<usize>, message: String| ConfigFileError::at(path, text, Some(span), message);
        let mut users = BTreeMap::new();
        for (name, entry) in raw.users {
            let user_name = UserName::new(&name).map_err(|e| error(entry.span(), format!("user name {name:?} {e}")))?;
            let entry = entry.into_inner();
            check_hash(entry.password.get_ref()).map_err(|message| error(entry.password.span(), message))?;
            let mut groups = BTreeSet::new();
            for group in &entry.groups {
                let parsed =
                    GroupName::new(group.get_ref()).ok().filter(|g| server_groups.contains(g)).ok_or_else(|| {
                        error(group.span(), format!("unknown group {:?} for user {name}", group.get_ref()))
                    })?;
                groups.insert(parsed);
            }
            users.insert(
                user_name,
                User { password_hash: entry.password.into_inner(), groups, disabled: entry.disabled },
            );
        }
        Ok(Self { users })
    }

    /// The user, if present and not disabled.
    pub fn active(&self, name: &UserName) -> Option<&User> {
        self.users.get(name).filter(|user| !user.disabled)
    }
}

fn check_hash(text: &str) -> Result<(), String> {
    let hash = PasswordHash::new(text).map_err(|e| format!("not a PHC password hash: {e}"))?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(format!("the hash uses {}, only argon2id is accepted", hash.algorithm));
    }
    Ok(())
}

/// Argon2id cost parameters for new hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        Self { memory_kib: DEFAULT_MEMORY_KIB, iterations: DEFAULT_ITERATIONS, parallelism: DEFAULT_PARALLELISM }
    }
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("argon2: {0}")]
    Argon2(String),
    #[error(transparent)]
    Random(#[from] gshare_certs::CertError),
}

impl HashCost {
    /// Hashes `password` with a fresh random salt into a PHC string.
    pub fn hash(&self, password: &str) -> Result<String, HashError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| HashError::Argon2(e.to_string()))?;
        let salt_bytes: [u8; 16] = gshare_certs::random_bytes()?;
        let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| HashError::Argon2(e.to_string()))?;
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| HashError::Argon2(e.to_string()))
    }
}

/// Whether `password` matches the PHC `hash`, with the cost stored in the hash. Slow on purpose:
/// call it from a blocking thread.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

/// Why an edit of the user store failed.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("user {0} already exists; use `user passwd` to change the password")]
    Exists(UserName),
    #[error("no user {0} in {1}")]
    Missing(UserName, String),
    #[error("group {0:?} is not one of this server's groups ({1})")]
    UnknownGroup(String, String),
    #[error("{0}: cannot write the file")]
    Write(String, #[source] std::io::Error),
}

/// Edits of the user store, applied by [`edit`].
#[derive(Debug, Clone)]
pub enum Edit {
    Add {
        user: UserName,
        groups: Vec<GroupName>,
        password_hash: String,
    },
    SetPassword {
        user: UserName,
        password_hash: String,
    },
    /// Replaces the groups a user may join.
    SetGroups {
        user: UserName,
        groups: Vec<GroupName>,
    },
    /// Locks a user out (true) or lets them back in (false), certificates and all.
    SetDisabled {
        user: UserName,
        disabled: bool,
    },
    Remove {
        user: UserName,
    },
}

/// Applies `change` to the file at `path`, keeping comments and layout, and writes it back
/// atomically. The result is parsed again before it is written, so an edit can never leave a
/// store the server would refuse.
pub fn edit(path: &Path, server_groups: &[GroupName], change: Edit) -> Result<(), EditError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(ConfigFileError::whole_file(path, format!("cannot read the file: {error}")).into()),
    };
    // Refuse to edit a store that does not parse: the operator should see that mistake first.
    UserStore::parse(path, &text, server_groups)?;
    let mut document: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| ConfigFileError::at(path, &text, e.span(), e.message().to_owned()))?;
    // A store that is only comments so far (the example's header) keeps them above the first
    // user: toml_edit holds them as the document's trailing text, which would print below.
    let header = if document.as_table().is_empty() {
        let trailing = document.trailing().as_str().unwrap_or_default().to_owned();
        document.set_trailing("");
        trailing
    } else {
        String::new()
    };
    let users = document
        .entry("users")
        .or_insert_with(|| {
            let mut table = toml_edit::Table::new();
            table.set_implicit(true);
            toml_edit::Item::Table(table)
        })
        .as_table_mut()
        .ok_or_else(|| ConfigFileError::whole_file(path, "`users` must be a table"))?;
    match change {
        Edit::Add { user, groups, password_hash } => {
            if users.contains_key(user.as_str()) {
                return Err(EditError::Exists(user));
            }
            let mut entry = toml_edit::Table::new();
            if !header.is_empty() {
                let separator = if header.ends_with("\n\n") { "" } else { "\n" };
                entry.decor_mut().set_prefix(format!("{header}{separator}"));
            }
            entry["password"] = toml_edit::value(password_hash);
            entry["groups"] = toml_edit::value(groups.iter().map(GroupName::as_str).collect::<toml_edit::Array>());
            users.insert(user.as_str(), toml_edit::Item::Table(entry));
        }
        Edit::SetPassword { user, password_hash } => {
            let entry = users
                .get_mut(user.as_str())
                .and_then(toml_edit::Item::as_table_like_mut)
                .ok_or_else(|| EditError::Missing(user.clone(), path.display().to_string()))?;
            entry.insert("password", toml_edit::value(password_hash));
        }
        Edit::SetGroups { user, groups } => {
            let entry = users
                .get_mut(user.as_str())
                .and_then(toml_edit::Item::as_table_like_mut)
                .ok_or_else(|| EditError::Missing(user.clone(), path.display().to_string()))?;
            entry
                .insert("groups", toml_edit::value(groups.iter().map(GroupName::as_str).collect::<toml_edit::Array>()));
        }
        Edit::SetDisabled { user, disabled } => {
            let entry = users
                .get_mut(user.as_str())
                .and_then(toml_edit::Item::as_table_like_mut)
                .ok_or_else(|| EditError::Missing(user.clone(), path.display().to_string()))?;
            if disabled {
                entry.insert("disabled", toml_edit::value(true));
            } else {
                entry.remove("disabled");
            }
        }
        Edit::Remove { user } => {
            if users.remove(user.as_str()).is_none() {
                return Err(EditError::Missing(user, path.display().to_string()));
            }
        }
    }
    let updated = document.to_string();
    UserStore::parse(path, &updated, server_groups)?;
    // Written private, whatever mode the file had (`atomic_write` keeps an existing mode).
    make_private(path).map_err(|e| EditError::Write(path.display().to_string(), e))?;
    gshare_common::files::atomic_write(path, updated.as_bytes(), 0o600)
        .map_err(|e| EditError::Write(path.display().to_string(), e))
}

/// Takes the permissions of other users (not the file's group, which the operator may have
/// chosen for fellow administrators) off the user store: its hashes are secrets too. Returns
/// the mode it had if it changed anything; a missing file is left alone.
pub fn make_private(path: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let Some(mode) = readable_by_others(path)? else { return Ok(None) };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o770))?;
    Ok(Some(mode))
}

/// The user store's mode, if users other than its owner and group may read or write it; a
/// missing file is nobody's.
pub fn readable_by_others(path: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(metadata) => Ok(Some(metadata.permissions().mode() & 0o777).filter(|mode| mode & 0o007 != 0)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Checks a group list given on the command line against the server's groups.
pub fn parse_groups(list: &str, server_groups: &[GroupName]) -> Result<Vec<GroupName>, EditError> {
    let known = || server_groups.iter().map(GroupName::as_str).collect::<Vec<_>>().join(", ");
    let mut groups = Vec::new();
    for name in list.split(',').map(str::trim).filter(|name| !name.is_empty()) {
        let group = GroupName::new(name)
            .ok()
            .filter(|group| server_groups.contains(group))
            .ok_or_else(|| EditError::UnknownGroup(name.to_owned(), known()))?;
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Vec<GroupName> {
        vec!["Developers".parse().unwrap(), "Designers".parse().unwrap()]
    }

    /// A cheap cost so tests stay fast; production refuses anything below the defaults.
    fn cheap() -> HashCost {
        HashCost { memory_kib: 64, iterations: 1, parallelism: 1 }
    }

    #[test]
    fn hashes_verify_only_the_right_password() {
        let hash = cheap().hash("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(verify_password(&hash, "correct horse battery"));
        assert!(!verify_password(&hash, "correct horse batterx"));
        assert!(!verify_password("not a hash", "x"));
        assert_ne!(hash, cheap().hash("correct horse battery").unwrap(), "salts differ");
    }

    #[test]
    fn the_first_user_added_goes_below_the_header_comment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/users.toml")).unwrap();
        std::fs::write(&path, &header).unwrap();
        let hash = cheap().hash("password one").unwrap();
        for name in ["alice", "bob"] {
            let user = name.parse().unwrap();
            edit(&path, &groups(), Edit::Add { user, groups: groups(), password_hash: hash.clone() }).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&header), "the header moved:\n{text}");
        let (alice, bob) = (text.find("\n[users.alice]").unwrap(), text.find("\n[users.bob]").unwrap());
        assert!(header.len() <= alice && alice < bob, "{text}");
    }

    #[test]
    fn edits_keep_comments_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(&path, "# the operator's comment\n\n[users.carol] # carol's line\npassword = \"$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\ngroups = [\"Designers\"]\n").unwrap();
        let alice: UserName = "alice".parse().unwrap();
        let hash = cheap().hash("password one").unwrap();
        edit(&path, &groups(), Edit::Add { user: alice.clone(), groups: groups(), password_hash: hash.clone() })
            .unwrap();
        assert!(matches!(
            edit(&path, &groups(), Edit::Add { user: alice.clone(), groups: vec![], password_hash: hash }),
            Err(EditError::Exists(_))
        ));
        let new_hash = cheap().hash("password two").unwrap();
        edit(&path, &groups(), Edit::SetPassword { user: alice.clone(), password_hash: new_hash.clone() }).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# the operator's comment") && text.contains("# carol's line"), "{text}");
        let store = UserStore::parse(&path, &text, &groups()).unwrap();
        assert_eq!(store.users[&alice].password_hash, new_hash);
        assert_eq!(store.users[&alice].groups.len(), 2);

        edit(&path, &groups(), Edit::Remove { user: alice.clone() }).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("alice") && text.contains("# carol's line"), "{text}");
        assert!(matches!(edit(&path, &groups(), Edit::Remove { user: alice }), Err(EditError::Missing(..))));
    }

    #[test]
    fn mistakes_are_reported_with_their_line() {
        let path = Path::new("users.toml");
        let hash = "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        let cases = [
            (format!("[users.bob]\npassword = \"{hash}\"\ngroups = [\"Nope\"]\n"), 3, "unknown group \"Nope\""),
            ("[users.bob]\npassword = \"plain\"\ngroups = []\n".to_owned(), 2, "not a PHC password hash"),
            ("[users.bob]\npassword = \"$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\ngroups = []\n".to_owned(), 2, "only argon2id"),
            (format!("[users.bob]\npassword = \"{hash}\"\ngroups = []\nadmin = true\n"), 4, "unknown field"),
        ];
        for (text, line, fragment) in cases {
            let error = UserStore::parse(path, &text, &groups()).unwrap_err();
            assert_eq!(error.line, Some(line), "{text}: {error}");
            assert!(error.to_string().contains(fragment), "{error}");
        }
        let error =
            UserStore::parse(path, &format!("[users.\"b b\"]\npassword = \"{hash}\"\ngroups = []\n"), &groups())
                .unwrap_err();
        assert!(error.to_string().contains("user name \"b b\""), "{error}");
    }

    #[test]
    fn disabled_users_are_not_active() {
        let hash = "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        let text = format!("[users.bob]\npassword = \"{hash}\"\ngroups = []\ndisabled = true\n");
        let store = UserStore::parse(Path::new("u"), &text, &groups()).unwrap();
        assert!(store.active(&"bob".parse().unwrap()).is_none());
        assert!(store.users.contains_key(&"bob".parse::<UserName>().unwrap()));
    }

    #[test]
    fn group_lists_from_the_command_line() {
        assert_eq!(parse_groups("Developers, Designers,Developers", &groups()).unwrap().len(), 2);
        let error = parse_groups("Developers,Desingers", &groups()).unwrap_err();
        assert_eq!(error.to_string(), "group \"Desingers\" is not one of this server's groups (Developers, Designers)");
    }
}
