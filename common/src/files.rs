//! Writing files safely and fast.
//!
//! - [`atomic_write`]: a crash leaves either the old contents or the new, never half of each:
//!   write a temporary file beside the target, fsync it, rename it over the target, fsync the
//!   directory.
//! - [`WriteBehind`]: a long sequential write made durable step by step as it goes, so that the
//!   flush at the end is short and dirty memory stays bounded.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `path` with `contents` atomically. A new file gets `mode`; an existing file keeps
/// the mode it had, so an operator's `chmod` survives an edit.
pub fn atomic_write(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let mode = match fs::metadata(path) {
        Ok(metadata) => metadata.permissions().mode() & 0o7777,
        Err(_) => mode,
    };
    let temporary = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&temporary)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Name of the staging directory [`replace_together`] uses inside the target directory.
pub const REPLACING_DIR: &str = ".replacing";
/// Written into the staging directory once every new file there is durable: from then on the
/// replacement is completed, never undone.
const REPLACING_COMPLETE: &str = "complete";

/// Replaces several files of `dir` as one: after a crash at any moment, [`finish_replacing`]
/// leaves either every old file or every new one, never a mix (a key beside the certificate
/// of another key, say). Each entry is a file name in `dir`, its contents and its mode.
///
/// The new files are written and synced into a staging directory, a marker is written last,
/// and only then are they renamed into place one by one.
pub fn replace_together(dir: &Path, files: &[(&str, &[u8], u32)]) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let staging = dir.join(REPLACING_DIR);
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::DirBuilder::new().mode(0o700).create(&staging)?;
    for (name, contents, mode) in files {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(*mode).open(staging.join(name))?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::File::open(&staging)?.sync_all()?;
    fs::File::create(staging.join(REPLACING_COMPLETE))?.sync_all()?;
    fs::File::open(&staging)?.sync_all()?;
    crash_point("replace-marked");
    finish_replacing(dir)
}

/// Completes or undoes a [`replace_together`] that a crash interrupted: a staging directory
/// with its marker is moved into place (what is left of it), one without is thrown away (the
/// old files were never touched). Call before reading the files.
pub fn finish_replacing(dir: &Path) -> io::Result<()> {
    let staging = dir.join(REPLACING_DIR);
    if !staging.exists() {
        return Ok(());
    }
    if staging.join(REPLACING_COMPLETE).exists() {
        for entry in fs::read_dir(&staging)? {
            let entry = entry?;
            if entry.file_name() != REPLACING_COMPLETE {
                fs::rename(entry.path(), dir.join(entry.file_name()))?;
                crash_point("replace-moved-one");
            }
        }
        fs::File::open(dir)?.sync_all()?;
    }
    fs::remove_dir_all(&staging)?;
    fs::File::open(dir)?.sync_all()
}

/// For crash tests only: if the environment variable `GSHARE_CRASH_AT` names `point`, the
/// process kills itself there with SIGKILL, as a power cut or `kill -9` would stop it.
pub fn crash_point(point: &str) {
    if std::env::var_os("GSHARE_CRASH_AT").is_some_and(|wanted| wanted == point) {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// Bytes written between write-behind steps.
pub const WRITE_BEHIND_STEP: u64 = 32 * 1024 * 1024;
/// Bytes written between two starts of their writeback ([`start_write_back`]).
pub const WRITE_BACK_EVERY: u64 = 1024 * 1024;

/// Starts writing back the file's dirty pages in `len` bytes at `offset`
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`) without waiting for them: not durable (no
/// journal commit, no disk cache flush), only earlier. Left to itself the kernel starts only
/// after seconds, or with the next sync, which then writes a whole step at once: the disk is
/// idle, then busy for everyone on it, and a member waits at the end of a file for the last
/// step to go out. (rustix has no sync_file_range.)
#[allow(unsafe_code)]
pub fn start_write_back(file: &fs::File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: sync_file_range takes plain integers and touches no memory of ours; the
    // descriptor stays open for as long as `file` is borrowed.
    let result = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// A file written sequentially through [`WriteBehind::write`], made durable every [`WRITE_BEHIND_STEP`] bytes
/// (`fdatasync`), so that the disk works while the writer goes on instead of all at the end.
/// Writeback starts every [`WRITE_BACK_EVERY`] bytes, so a step's sync finds most of it
/// written.
///
/// With `forget` it also drops what is durable from the page cache: a large received file then
/// does not push everything else out of the cache, and the writer reuses the same few pages of
/// memory instead of touching fresh ones (on a virtual machine, memory the guest has not
/// touched lately costs a page fault in the host per 4 KiB: writing 1 GiB into fresh page
/// cache took 3 s there, into recycled pages 0.3 s).
#[derive(Debug)]
pub struct WriteBehind {
    file: fs::File,
    written: u64,
    /// Writeback has been started for everything below this.
    started: u64,
    durable: u64,
    forget: bool,
}

impl WriteBehind {
    /// Writes on at the current position of `file`; the `offset` bytes before it are taken
    /// as durable.
    pub fn new(file: fs::File, offset: u64, forget: bool) -> Self {
        Self { file, written: offset, started: offset, durable: offset, forget }
    }

    /// Appends `bytes`, and takes a step when one is due.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        if self.written - self.started >= WRITE_BACK_EVERY {
            // Advice: a failure here is met again by the sync.
            let _ = start_write_back(&self.file, self.started, self.written - self.started);
            self.started = self.written;
        }
        if self.written - self.durable >= WRITE_BEHIND_STEP {
            rustix::fs::fdatasync(&self.file)?;
            self.durable = self.written;
            self.forget_durable();
        }
        Ok(())
    }

    /// Makes everything durable (data and metadata).
    pub fn finish(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        self.durable = self.written;
        self.forget_durable();
        Ok(())
    }

    fn forget_durable(&self) {
        if let (true, Some(len)) = (self.forget, std::num::NonZeroU64::new(self.durable)) {
            // Advice only: a file system that cannot drop pages (tmpfs) keeps them.
            let _ = rustix::fs::fadvise(&self.file, 0, Some(len), rustix::fs::Advice::DontNeed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_with_mode_and_keeps_an_existing_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        atomic_write(&path, b"one", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        atomic_write(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
    }

    fn pair(dir: &Path) -> (String, String) {
        (fs::read_to_string(dir.join("a.key")).unwrap(), fs::read_to_string(dir.join("a.crt")).unwrap())
    }

    #[test]
    fn files_replaced_together_are_all_old_or_all_new_whatever_the_crash() {
        let dir = tempfile::tempdir().unwrap();
        let old: &[(&str, &[u8], u32)] = &[("a.key", b"old key", 0o600), ("a.crt", b"old crt", 0o644)];
        let new: &[(&str, &[u8], u32)] = &[("a.key", b"new key", 0o600), ("a.crt", b"new crt", 0o644)];
        replace_together(dir.path(), old).unwrap();
        assert_eq!(pair(dir.path()), ("old key".into(), "old crt".into()));
        assert!(!dir.path().join(REPLACING_DIR).exists());
        assert_eq!(fs::metadata(dir.path().join("a.key")).unwrap().permissions().mode() & 0o777, 0o600);

        // A crash while the new files were written (no marker): the old pair stays.
        let staging = dir.path().join(REPLACING_DIR);
        fs::create_dir(&staging).unwrap();
        fs::write(staging.join("a.key"), b"new key").unwrap();
        finish_replacing(dir.path()).unwrap();
        assert_eq!(pair(dir.path()), ("old key".into(), "old crt".into()));
        assert!(!staging.exists());

        // A crash after the marker, with the key already moved: the new pair is completed.
        fs::create_dir(&staging).unwrap();
        fs::write(staging.join("a.crt"), b"new crt").unwrap();
        fs::write(staging.join(REPLACING_COMPLETE), b"").unwrap();
        fs::write(dir.path().join("a.key"), b"new key").unwrap();
        finish_replacing(dir.path()).unwrap();
        assert_eq!(pair(dir.path()), ("new key".into(), "new crt".into()));

        replace_together(dir.path(), new).unwrap();
        assert_eq!(pair(dir.path()), ("new key".into(), "new crt".into()));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "nothing else left behind");
    }

    #[test]
    fn a_file_written_behind_in_many_writes_holds_every_byte_and_bad_ranges_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&path).unwrap();
        let mut behind = WriteBehind::new(file, 0, true);
        // Writeback started many times over, a step made durable, and a part-step at the end.
        let chunk: Vec<u8> = (0..=255u8).cycle().take(300 * 1024).collect();
        let chunks = (WRITE_BEHIND_STEP + WRITE_BEHIND_STEP / 2) / chunk.len() as u64;
        for _ in 0..chunks {
            behind.write(&chunk).unwrap();
        }
        behind.finish().unwrap();
        let written = fs::read(&path).unwrap();
        assert_eq!(written.len() as u64, chunks * chunk.len() as u64);
        assert!(written.chunks(chunk.len()).all(|part| part == chunk.as_slice()));

        let file = fs::File::open(&path).unwrap();
        assert!(start_write_back(&file, 0, 4096).is_ok());
        let refused = start_write_back(&file, u64::MAX, 1).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
    }
}
