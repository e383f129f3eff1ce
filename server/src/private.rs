//! The server's files are for the server's user alone: the state directory (CA key, database,
//! spool, admin socket) is mode 0700 and every file in it 0600.
//!
//! Everything is created with its final mode, never created open and tightened afterwards:
//! the process runs under umask 077 ([`restrict_umask`]), which also covers the files SQLite
//! and the socket bind create themselves. What already exists with looser modes (made by an
//! older version, or by hand) is corrected at start, with a log line.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode of the state directory and the directories in it.
pub const DIRECTORY_MODE: u32 = 0o700;
/// Mode of every file in the state directory.
pub const FILE_MODE: u32 = 0o600;

/// From now on, nothing this process creates is readable or writable by group or others.
pub fn restrict_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Creates the state directory (mode 0700) if it is missing, and corrects its mode if it is
/// looser.
pub fn prepare_state_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIRECTORY_MODE).create(dir)?;
    tighten(dir, DIRECTORY_MODE)
}

/// Takes away every permission `path` has beyond `mode`, saying so; a missing path is fine.
pub fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let current = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata.permissions().mode() & 0o777,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if current & !mode != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(current & mode))?;
        tracing::warn!(path = %path.display(), was = format!("{current:o}"), now = format!("{:o}", current & mode), "permissions were looser than they must be; corrected");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loose_state_directory_is_corrected_and_a_new_one_is_private() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("fresh/state");
        prepare_state_dir(&fresh).unwrap();
        assert_eq!(fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700);
        let loose = root.path().join("loose");
        fs::create_dir(&loose).unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o755)).unwrap();
        prepare_state_dir(&loose).unwrap();
        assert_eq!(fs::metadata(&loose).unwrap().permissions().mode() & 0o777, 0o700);
        let file = loose.join("gshare.db");
        fs::write(&file, b"").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        tighten(&file, FILE_MODE).unwrap();
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        tighten(&loose.join("missing"), FILE_MODE).unwrap();
    }
}
