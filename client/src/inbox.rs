//! Where received files are written, safely: the out directory, opened once, and every file
//! operation relative to that directory handle.
//!
//! Deliveries are known by [`DeliveryKey`]: the server's delivery id and the file's SHA-256
//! together. The id alone can repeat (a server whose database was reset numbers from 1
//! again); with the hash, a new file is never mistaken for one already received.
//!
//! - Data goes into `.gshare-<id>-<sha256>.part`, opened with `O_NOFOLLOW` (a symlink planted
//!   under that name is removed, never followed) and mode 0600. An interrupted transfer leaves
//!   it behind, and the next offer of the same delivery resumes from its length, re-hashing
//!   what is already there.
//! - Only a file whose size and SHA-256 match the offer is renamed to its final name, with
//!   `RENAME_NOREPLACE`: an existing file or symlink under that name is never replaced; the new
//!   file takes `name (1).ext`, `name (2).ext`, ... instead.
//! - Before the rename, a journal entry in the client's home records which name the delivery
//!   takes, so a delivery offered again (the acknowledgement was lost in a crash) is completed
//!   or acknowledged without a second copy.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use gshare_common::files::WriteBehind;
use gshare_proto::frame::DeliveryId;
use gshare_proto::{FileName, RelativePath};

/// What names one delivery on this member: the server's id and the file's SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryKey {
    pub id: DeliveryId,
    pub sha256: [u8; 32],
}

impl DeliveryKey {
    /// `<id>-<sha256 hex>`: the journal entry's name, and the middle of the temporary file's.
    fn label(&self) -> String {
        let hex: String = self.sha256.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{hex}", self.id.0)
    }
}

/// Most numbered variants tried for a name that is taken.
const MAX_NUMBERED: u32 = 10_000;

/// An out directory and the journal of what was delivered into it.
#[derive(Debug)]
pub struct Inbox {
    dir: OwnedFd,
    path: PathBuf,
    journal: PathBuf,
}

/// Chunks queued for the writer thread before the network side waits for it.
const WRITE_QUEUE: usize = 16;

/// A delivery being received: its temporary file, fed through a writer thread.
///
/// The session decrypts on its own thread while the writer writes and hashes, so the two
/// overlap. The writer writes behind ([`WriteBehind`]), dropping what is durable from the page
/// cache: a large file never piles up as dirty memory for one long flush at the end.
pub struct Partial {
    /// Bytes held: on disk before this attempt, plus everything handed to the writer.
    pub held: u64,
    chunks: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    /// Chunks the writer is done with, for the connection to read the next ones into.
    written: std::sync::mpsc::Receiver<Vec<u8>>,
    writer: Option<std::thread::JoinHandle<io::Result<[u8; 32]>>>,
}

impl std::fmt::Debug for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partial").field("held", &self.held).finish_non_exhaustive()
    }
}

impl Partial {
    fn start(file: File, held: u64, hash: ring::digest::Context) -> io::Result<Self> {
        let (sender, receiver) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let (done, written) = std::sync::mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("gshare-writer".into())
            .spawn(move || write_behind(file, held, hash, receiver, done))?;
        Ok(Self { held, chunks: Some(sender), written, writer: Some(writer) })
    }

    /// The buffers of chunks already written, to be reused (no allocation per chunk).
    pub fn written_buffers(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.written.try_iter()
    }

    /// Hands `bytes` to the writer, waiting while its queue is full. An error is the writer's:
    /// the disk refused a write.
    pub async fn write(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        let len = bytes.len() as u64;
        let sent = match &self.chunks {
            Some(chunks) => chunks.send(bytes).await.is_ok(),
            None => false,
        };
        if !sent {
            // The writer stopped early: only an error does that.
            return Err(self.stop().err().unwrap_or_else(|| io::Error::other("the writer thread stopped")));
        }
        self.held += len;
        Ok(())
    }

    /// Waits for every byte to be on disk and returns the SHA-256 of the whole file.
    pub fn finish(mut self) -> io::Result<[u8; 32]> {
        self.stop()
    }

    /// Closes the queue and waits for the writer to drain it.
    fn stop(&mut self) -> io::Result<[u8; 32]> {
        self.chunks = None;
        match self.writer.take() {
            Some(writer) => writer.join().unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked"))),
            None => Err(io::Error::other("the writer thread already stopped")),
        }
    }
}

impl Drop for Partial {
    /// An interrupted transfer: wait for the writer (at most [`WRITE_QUEUE`] chunks), so that a
    /// retry never finds it still appending to the file it resumes.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The writer thread: appends and hashes until the queue closes, then flushes everything.
fn write_behind(
    file: File,
    held: u64,
    mut hash: ring::digest::Context,
    mut chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    done: std::sync::mpsc::Sender<Vec<u8>>,
) -> io::Result<[u8; 32]> {
    let mut behind = WriteBehind::new(file, held, true);
    while let Some(chunk) = chunks.blocking_recv() {
        behind.write(&chunk)?;
        hash.update(&chunk);
        let _ = done.send(chunk);
    }
    behind.finish()?;
    let mut digest = [0u8; 32];
    digest.copy_from_slice(hash.finish().as_ref());
    Ok(digest)
}

fn temporary_name(delivery: &DeliveryKey) -> String {
    format!("{}{}.part", gshare_proto::names::RESERVED_FILE_PREFIX, delivery.label())
}

impl Inbox {
    /// Opens (creating if needed) the out directory; `journal` is a directory in the client's
    /// home for this server's deliveries.
    pub fn open(path: &Path, journal: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(path)?;
        std::fs::create_dir_all(journal)?;
        let dir = rustix::fs::open(path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Self { dir, path: path.to_owned(), journal: journal.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether files can be created in the out directory: a probe file made and removed.
    pub fn check_writable(&self) -> io::Result<()> {
        let name = format!(".gshare-probe-{}", std::process::id());
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        drop(rustix::fs::openat(&self.dir, name.as_str(), flags, Mode::from_raw_mode(0o600))?);
        rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::empty())?;
        Ok(())
    }

    fn journal_entry(&self, delivery: &DeliveryKey) -> PathBuf {
        self.journal.join(delivery.label())
    }

    /// The name a delivery was stored under, if it was.
    pub fn delivered_name(&self, delivery: &DeliveryKey) -> Option<String> {
        std::fs::read_to_string(self.journal_entry(delivery)).ok()
    }

    /// The name `delivery` was stored under if it already was (its acknowledgement was lost),
    /// with the rename finished first if a crash interrupted it (`name` is the offer's, used
    /// if the journal's cannot be read back as a path).
    pub fn already_delivered(&self, delivery: &DeliveryKey, name: &RelativePath) -> io::Result<Option<String>> {
        let Some(stored) = self.delivered_name(delivery) else { return Ok(None) };
        if self.has_temporary(delivery) {
            self.store(delivery, &RelativePath::new(&stored).unwrap_or_else(|_| name.clone()))?;
        }
        Ok(Some(stored))
    }

    /// Opens (creating, mode 0600) the temporary file of `delivery`, relative to the out
    /// directory's handle and never through a symlink.
    fn open_temporary(&self, delivery: &DeliveryKey) -> io::Result<File> {
        let name = temporary_name(delivery);
        // Noted first in the journal, so a delivery the server drops while this member is
        // away (removed, left the group, cancelled) can be cleaned up later: see `forget`.
        let marker = self.receiving_marker(delivery);
        if !marker.exists() {
            std::fs::write(&marker, b"")?;
        }
        let flags = OFlags::CREATE | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.dir, name.as_str(), flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => fd,
            // A symlink (or something else odd) sits under our name: remove it, never follow it.
            Err(rustix::io::Errno::LOOP) => {
                rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::empty())?;
                rustix::fs::openat(&self.dir, name.as_str(), flags | OFlags::EXCL, Mode::from_raw_mode(0o600))?
            }
            Err(error) => return Err(error.into()),
        };
        let file = File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(io::Error::other(format!("{name} in {} is not a regular file", self.path.display())));
        }
        Ok(file)
    }

    /// Opens the temporary file of `delivery` to receive a file of `size` bytes, keeping and
    /// re-hashing what an earlier, interrupted attempt left.
    pub fn prepare(&self, delivery: &DeliveryKey, size: u64) -> io::Result<Partial> {
        let mut file = self.open_temporary(delivery)?;
        let mut held = file.metadata()?.len();
        if held > size {
            file.set_len(0)?;
            held = 0;
        }
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buffer = vec![0u8; 256 * 1024];
        let mut rehashed = 0u64;
        file.seek(SeekFrom::Start(0))?;
        while rehashed < held {
            let want = usize::try_from(held - rehashed).unwrap_or(buffer.len()).min(buffer.len());
            let read = file.read(&mut buffer[..want])?;
            if read == 0 {
                break;
            }
            hash.update(&buffer[..read]);
            rehashed += read as u64;
        }
        file.seek(SeekFrom::Start(rehashed))?;
        file.set_len(rehashed)?;
        Partial::start(file, rehashed, hash)
    }

    /// Opens the temporary file of `delivery` for pieces written at their offsets (swarm
    /// delivery), `size` bytes long, keeping what an earlier attempt left there. Returns the
    /// file, to be read and written at offsets only.
    pub fn open_part(&self, delivery: &DeliveryKey, size: u64) -> io::Result<File> {
        let file = self.open_temporary(delivery)?;
        file.set_len(size)?;
        Ok(file)
    }

    /// Where the piece hashes of `delivery` are kept while it is received: in the journal,
    /// beside its entry.
    pub fn piece_hashes_path(&self, delivery: &DeliveryKey) -> PathBuf {
        self.journal.join(format!("{}.pieces", delivery.label()))
    }

    /// Throws away the temporary file of `delivery`.
    pub fn discard(&self, delivery: &DeliveryKey) {
        let _ = rustix::fs::unlinkat(&self.dir, temporary_name(delivery).as_str(), AtFlags::empty());
        let _ = std::fs::remove_file(self.piece_hashes_path(delivery));
        let _ = std::fs::remove_file(self.receiving_marker(delivery));
    }

    /// The journal's note that `delivery` has a temporary file in an out directory.
    fn receiving_marker(&self, delivery: &DeliveryKey) -> PathBuf {
        self.journal.join(format!("{}.receiving", delivery.label()))
    }

    /// Throws away what this member holds of deliveries the server no longer owes it (it
    /// dropped them while the member was away: the user was removed, left the group, the
    /// file was cancelled), given every delivery still `owed`. Only deliveries this home's
    /// journal notes as being received are touched, so another member's files in a shared
    /// out directory are safe. Returns how many were thrown away.
    /// `inboxes` share one journal (this home's, for this server); each may hold the file.
    pub fn forget_unowed(inboxes: &[&Inbox], owed: &std::collections::HashSet<u64>) -> usize {
        let Some(first) = inboxes.first() else { return 0 };
        let Ok(entries) = std::fs::read_dir(&first.journal) else { return 0 };
        let mut forgotten = 0;
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Some(label) = file_name.strip_suffix(".receiving") else { continue };
            let Some(id) = label.split_once('-').and_then(|(id, _)| id.parse::<u64>().ok()) else { continue };
            if owed.contains(&id) {
                continue;
            }
            let temporary = format!("{}{label}.part", gshare_proto::names::RESERVED_FILE_PREFIX);
            for inbox in inboxes {
                let _ = rustix::fs::unlinkat(&inbox.dir, temporary.as_str(), AtFlags::empty());
            }
            let _ = std::fs::remove_file(first.journal.join(format!("{label}.pieces")));
            let _ = std::fs::remove_file(entry.path());
            forgotten += 1;
        }
        forgotten
    }

    /// Whether the verified temporary file of `delivery` is still waiting for its rename.
    pub fn has_temporary(&self, delivery: &DeliveryKey) -> bool {
        rustix::fs::statat(&self.dir, temporary_name(delivery).as_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// Gives the verified temporary file of `delivery` its final place: `path`, or the first
    /// free numbered variant of its name. Returns the path used.
    pub fn store(&self, delivery: &DeliveryKey, path: &RelativePath) -> io::Result<RelativePath> {
        self.store_reporting(delivery, path).map(|(stored, _)| stored)
    }

    /// [`store`](Self::store), and whether the file was already there: a file of that name
    /// (or a numbered one) with the same bytes is kept as the delivered copy, and the
    /// temporary file removed, instead of a second copy under the next number.
    ///
    /// The directories of `path` are made (mode 0700) or entered one component at a time,
    /// each relative to the handle of the one before, never through a symlink: a component
    /// taken by something that is not a directory is left alone, and the numbered variant
    /// of the directory used instead. The temporary file stays at the top of the out
    /// directory until this rename (the same file system), so one scan finds every one.
    pub fn store_reporting(&self, delivery: &DeliveryKey, path: &RelativePath) -> io::Result<(RelativePath, bool)> {
        let temporary = temporary_name(delivery);
        let size = rustix::fs::statat(&self.dir, temporary.as_str(), AtFlags::SYMLINK_NOFOLLOW)?.st_size;
        let (dir, directories) = self.enter_directories(path.directories())?;
        let name = path.file_name();
        for file_name in numbered_variants(name) {
            let candidate = RelativePath::from_parts(directories.clone(), file_name.clone());
            gshare_common::files::atomic_write(&self.journal_entry(delivery), candidate.to_string().as_bytes(), 0o600)?;
            match rustix::fs::renameat_with(
                &self.dir,
                temporary.as_str(),
                &dir,
                file_name.as_str(),
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {
                    rustix::fs::fsync(&dir)?;
                    // The temporary file left the out directory too, if it went further down.
                    if !directories.is_empty() {
                        rustix::fs::fsync(&self.dir)?;
                    }
                    let _ = std::fs::remove_file(self.receiving_marker(delivery));
                    return Ok((candidate, false));
                }
                Err(rustix::io::Errno::EXIST) if holds(&dir, &file_name, size, &delivery.sha256) => {
                    rustix::fs::unlinkat(&self.dir, temporary.as_str(), AtFlags::empty())?;
                    rustix::fs::fsync(&self.dir)?;
                    let _ = std::fs::remove_file(self.receiving_marker(delivery));
                    return Ok((candidate, true));
                }
                Err(rustix::io::Errno::EXIST) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(io::Error::other(format!("{MAX_NUMBERED} files named like {path} already exist")))
    }

    /// Opens the directory `wanted` (outermost first) inside the out directory, making what is
    /// missing. Returns its handle and the components used (a numbered one where the name is
    /// taken by a file or a symlink).
    fn enter_directories(&self, wanted: &[FileName]) -> io::Result<(OwnedFd, Vec<FileName>)> {
        let mut current = self.dir.try_clone()?;
        let mut used = Vec::with_capacity(wanted.len());
        for component in wanted {
            let (next, name) = enter_directory(&current, component)?;
            current = next;
            used.push(name);
        }
        Ok((current, used))
    }
}

/// `name`, then `name (1)`, `name (2)`, ... up to [`MAX_NUMBERED`]: the names tried, in order,
/// for a file or directory whose name is taken.
fn numbered_variants(name: &FileName) -> impl Iterator<Item = FileName> + '_ {
    std::iter::once(name.clone()).chain((1..=MAX_NUMBERED).map(|n| name.numbered(n)))
}

/// Opens the directory `wanted` in `parent`, making it (mode 0700) if it is missing, never
/// through a symlink. Where a file or a symlink has the name, the first numbered variant that
/// is, or can be made, a directory.
fn enter_directory(parent: &OwnedFd, wanted: &FileName) -> io::Result<(OwnedFd, FileName)> {
    for name in numbered_variants(wanted) {
        match rustix::fs::mkdirat(parent, name.as_str(), Mode::from_raw_mode(0o700)) {
            // Its entry in the parent made durable before anything is renamed into it.
            Ok(()) => rustix::fs::fsync(parent)?,
            Err(rustix::io::Errno::EXIST) => {}
            Err(error) => return Err(error.into()),
        }
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(parent, name.as_str(), flags, Mode::empty()) {
            Ok(fd) => return Ok((fd, name)),
            Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(io::Error::other(format!("{MAX_NUMBERED} files named like the directory {wanted} already exist")))
}

/// Whether `name` in `dir` is a regular file (never followed through a symlink) of `size`
/// bytes whose SHA-256 is `sha256`.
fn holds(dir: &OwnedFd, name: &FileName, size: i64, sha256: &[u8; 32]) -> bool {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::openat(dir, name.as_str(), flags, Mode::empty()) else { return false };
    let Ok(stat) = rustix::fs::fstat(&fd) else { return false };
    if !rustix::fs::FileType::from_raw_mode(stat.st_mode).is_file() || stat.st_size != size {
        return false;
    }
    let mut file = File::from(fd);
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => context.update(&buffer[..read]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    context.finish().as_ref() == sha256
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox() -> (tempfile::TempDir, Inbox) {
        let root = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(&root.path().join("out"), &root.path().join("journal")).unwrap();
        (root, inbox)
    }

    fn sha256(bytes: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
        out
    }

    fn key(id: u64, content: &[u8]) -> DeliveryKey {
        DeliveryKey { id: DeliveryId(id), sha256: sha256(content) }
    }

    #[tokio::test]
    async fn a_resumed_file_hashes_as_a_whole_and_keeps_an_existing_name() {
        let (root, inbox) = inbox();
        let delivery = &key(7, b"helloworld");
        let mut partial = inbox.prepare(delivery, 10).unwrap();
        partial.write(b"hello".to_vec()).await.unwrap();
        drop(partial); // interrupted
        let mut partial = inbox.prepare(delivery, 10).unwrap();
        assert_eq!(partial.held, 5);
        partial.write(b"world".to_vec()).await.unwrap();
        assert_eq!(partial.finish().unwrap(), sha256(b"helloworld"));

        let out = root.path().join("out");
        std::fs::write(out.join("greeting.txt"), b"mine").unwrap();
        let stored = inbox.store(delivery, &RelativePath::new("greeting.txt").unwrap()).unwrap();
        assert_eq!(stored.to_string(), "greeting (1).txt");
        assert_eq!(std::fs::read(out.join("greeting.txt")).unwrap(), b"mine", "the existing file is kept");
        assert_eq!(std::fs::read(out.join("greeting (1).txt")).unwrap(), b"helloworld");
        assert_eq!(inbox.delivered_name(delivery).as_deref(), Some("greeting (1).txt"));
        assert!(!inbox.has_temporary(delivery));
    }

    #[tokio::test]
    async fn a_file_past_several_write_behind_steps_is_stored_whole() {
        let (root, inbox) = inbox();
        let size = 2 * gshare_common::files::WRITE_BEHIND_STEP + 12_345;
        let content: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let delivery = &key(3, &content);
        let mut partial = inbox.prepare(delivery, size).unwrap();
        for chunk in content.chunks(256 * 1024) {
            partial.write(chunk.to_vec()).await.unwrap();
        }
        assert_eq!(partial.held, size);
        assert_eq!(partial.finish().unwrap(), sha256(&content));
        inbox.store(delivery, &RelativePath::new("big.bin").unwrap()).unwrap();
        assert!(std::fs::read(root.path().join("out/big.bin")).unwrap() == content, "every byte in place");
    }

    #[tokio::test]
    async fn a_disk_that_refuses_writes_is_an_error_not_a_hang() {
        let full = File::options().write(true).open("/dev/full").unwrap();
        let mut partial = Partial::start(full, 0, ring::digest::Context::new(&ring::digest::SHA256)).unwrap();
        let mut result = Ok(());
        for _ in 0..WRITE_QUEUE + 2 {
            result = partial.write(vec![0; 1024]).await;
            if result.is_err() {
                break;
            }
        }
        let error = match result {
            Err(error) => error,
            Ok(()) => partial.finish().unwrap_err(),
        };
        assert_eq!(error.kind(), io::ErrorKind::StorageFull, "{error}");
    }

    #[tokio::test]
    async fn symlinks_are_never_followed_or_replaced() {
        let (root, inbox) = inbox();
        let out = root.path().join("out");
        let outside = root.path().join("outside.txt");
        std::fs::write(&outside, b"precious").unwrap();
        // A symlink where the temporary file goes, and one under the final name.
        let delivery = &key(1, b"new");
        std::os::unix::fs::symlink(&outside, out.join(temporary_name(delivery))).unwrap();
        std::os::unix::fs::symlink(&outside, out.join("report.pdf")).unwrap();
        let mut partial = inbox.prepare(delivery, 3).unwrap();
        partial.write(b"new".to_vec()).await.unwrap();
        partial.finish().unwrap();
        let stored = inbox.store(delivery, &RelativePath::new("report.pdf").unwrap()).unwrap();
        assert_eq!(stored.to_string(), "report (1).pdf");
        assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(out.join("report.pdf")).unwrap().file_type().is_symlink());
    }

    #[tokio::test]
    async fn a_longer_leftover_is_started_over() {
        let (_root, inbox) = inbox();
        let delivery = &key(2, b"");
        let mut partial = inbox.prepare(delivery, 100).unwrap();
        partial.write(vec![1; 50]).await.unwrap();
        drop(partial);
        assert_eq!(inbox.prepare(delivery, 10).unwrap().held, 0);
    }

    #[tokio::test]
    async fn the_members_journal_is_keyed_by_delivery_id_only() {
        // Regression: after the server's database was reset, delivery ids started at 1 again
        // and a new file with an old id was acknowledged as already received, unwritten.
        let (root, inbox) = inbox();
        let old = &key(1, b"old");
        let mut partial = inbox.prepare(old, 3).unwrap();
        partial.write(b"old".to_vec()).await.unwrap();
        partial.finish().unwrap();
        inbox.store(old, &RelativePath::new("a.txt").unwrap()).unwrap();
        let new = &key(1, b"new!");
        assert_eq!(inbox.delivered_name(new), None, "same id, other file: not received yet");
        let mut partial = inbox.prepare(new, 4).unwrap();
        assert_eq!(partial.held, 0);
        partial.write(b"new!".to_vec()).await.unwrap();
        partial.finish().unwrap();
        assert_eq!(inbox.store(new, &RelativePath::new("a.txt").unwrap()).unwrap().to_string(), "a (1).txt");
        // The same bytes again, under the same name: no third copy.
        let again = &key(9, b"new!");
        let mut partial = inbox.prepare(again, 4).unwrap();
        partial.write(b"new!".to_vec()).await.unwrap();
        partial.finish().unwrap();
        let (stored, identical) = inbox.store_reporting(again, &RelativePath::new("a.txt").unwrap()).unwrap();
        assert_eq!((stored.to_string().as_str(), identical), ("a (1).txt", true));
        let mut names: Vec<String> = std::fs::read_dir(root.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a (1).txt", "a.txt"]);
        assert_eq!(std::fs::read(root.path().join("out/a (1).txt")).unwrap(), b"new!");
        assert_eq!(inbox.delivered_name(old).as_deref(), Some("a.txt"));
    }

    async fn received(inbox: &Inbox, id: u64, content: &[u8]) -> DeliveryKey {
        let delivery = key(id, content);
        let mut partial = inbox.prepare(&delivery, content.len() as u64).unwrap();
        partial.write(content.to_vec()).await.unwrap();
        partial.finish().unwrap();
        delivery
    }

    #[tokio::test]
    async fn a_file_of_a_tree_goes_into_its_directories_never_through_a_symlink() {
        let (root, inbox) = inbox();
        let out = root.path().join("out");
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();

        let delivery = received(&inbox, 1, b"fn main() {}").await;
        let stored = inbox.store(&delivery, &RelativePath::new("project/src/main.rs").unwrap()).unwrap();
        assert_eq!(stored.to_string(), "project/src/main.rs");
        assert_eq!(std::fs::read(out.join("project/src/main.rs")).unwrap(), b"fn main() {}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("project/src")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "directories are private to the member, like files: {mode:o}");
        assert_eq!(inbox.delivered_name(&delivery).as_deref(), Some("project/src/main.rs"));

        // A second file of the tree joins the directories the first made.
        let delivery = received(&inbox, 2, b"# readme").await;
        inbox.store(&delivery, &RelativePath::new("project/README.md").unwrap()).unwrap();
        assert_eq!(std::fs::read(out.join("project/README.md")).unwrap(), b"# readme");

        // A symlink planted where a directory goes is not followed (nothing lands outside)
        // and not replaced: the directory takes a numbered name.
        std::os::unix::fs::symlink(&outside, out.join("docs")).unwrap();
        let delivery = received(&inbox, 3, b"guide").await;
        let stored = inbox.store(&delivery, &RelativePath::new("docs/guide.txt").unwrap()).unwrap();
        assert_eq!(stored.to_string(), "docs (1)/guide.txt");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written through the symlink");
        assert!(std::fs::symlink_metadata(out.join("docs")).unwrap().file_type().is_symlink());

        // A regular file where a directory goes is kept; so is one deeper in the path.
        std::fs::write(out.join("notes"), b"mine").unwrap();
        let delivery = received(&inbox, 4, b"deep").await;
        let stored = inbox.store(&delivery, &RelativePath::new("notes/a/b.txt").unwrap()).unwrap();
        assert_eq!(stored.to_string(), "notes (1)/a/b.txt");
        assert_eq!(std::fs::read(out.join("notes")).unwrap(), b"mine");

        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with(".gshare-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
