//! The content-addressed spool: `<state_dir>/spool/<sha256 hex>` holds the bytes of every file
//! some member still needs.
//!
//! [`Spool::ingest`] reads a file once, hashing on one thread while a second copies it into a
//! temporary file beside the spool, then renames it to its hash: so a spool entry is always
//! whole, the hash is computed once however many members receive the file, and sending the
//! same file twice stores it once. Blocking: call it on a blocking thread.
//!
//! A new entry is not yet durable when `ingest` returns: the copy is in the page cache, and
//! its writing to the disk (most of a spool copy's time) goes on while members already
//! receive the file. The caller records the file, then calls [`Spool::make_durable`], and only
//! then tells the sender it is recorded. A marker, `<sha256 hex>.unsynced`, made durable before
//! the entry is renamed into place, stays until the entry is: if the machine goes down in
//! between, [`Spool::recover_unsynced`] checks the entry's bytes at the next start, and the
//! caller fails the deliveries of one that did not survive, with a sentence. An entry that
//! exists already (the same bytes sent again) is replaced by a copy made durable first, so that
//! the deliveries it holds never depend on one that is not.
//!
//! Beside each entry, `<sha256 hex>.ends` holds the file's SHA-256 state at the end of each of
//! its pieces (32 bytes each, in order; the last is the file's SHA-256), which members check
//! every piece against in swarm delivery ([`gshare_proto::chain`]). They fall out of the
//! whole-file hash as it is taken, so they cost nothing more; an entry spooled by an older
//! version (whose `<sha256 hex>.pieces` held another kind of hash, and is deleted) gets them
//! on first use.
//!
//! An entry can be needed again while it is being let go: a new file with the same bytes is
//! ingested just as the last delivery of an older one is acknowledged. So an entry ingested
//! but not yet recorded is *pinned* ([`SpoolPin`]) until the caller has recorded it, and
//! entries are deleted only through [`Spool::release`] and [`Spool::sweep`], which decide and
//! delete under the same lock as pinning, asking the state store at that moment.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use gshare_proto::chain::Chain;
use gshare_proto::swarm::PIECE_LEN;

/// What an entry's piece ends are named by: `<sha256 hex>.ends`.
const PIECE_ENDS_SUFFIX: &str = ".ends";
/// What an older version named each piece's own SHA-256 by; no longer used, deleted.
const LEGACY_PIECES_SUFFIX: &str = ".pieces";
/// Beside an entry recorded before its bytes were durable: `<sha256 hex>.unsynced`.
const UNSYNCED_SUFFIX: &str = ".unsynced";

/// Bytes read per step while ingesting.
const COPY_BUFFER: usize = 256 * 1024;
/// Buffers read ahead of the spool writer.
const COPY_QUEUE: usize = 8;

/// Why a file could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("the spool ({}) ran out of space; free space there and send it again", .0.display())]
    NoSpace(PathBuf),
    #[error("{} is {size} bytes, larger than the {limit}-byte limit (limits.max_file_bytes)", path.display())]
    TooLarge { path: PathBuf, size: u64, limit: u64 },
    #[error("{} is not a regular file", .0.display())]
    NotAFile(PathBuf),
}

/// A file in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    pub sha256: [u8; 32],
    pub size: u64,
}

impl Spooled {
    pub fn hex(&self) -> String {
        hex(&self.sha256)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    /// Entries ingested and not yet recorded, with how many ingests hold each. Its lock also
    /// orders deletions against pinning.
    pins: Arc<Mutex<HashMap<String, usize>>>,
}

/// A spool entry just ingested: kept from deletion until this is dropped, which the caller
/// does once the file is recorded (or failed to be).
#[derive(Debug)]
pub struct SpoolPin {
    pub spooled: Spooled,
    /// The entry's bytes are not yet durable: the caller records the file and then calls
    /// [`Spool::make_durable`] before it says the file is recorded.
    pub unsynced: bool,
    pins: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for SpoolPin {
    fn drop(&mut self) {
        let mut pins = lock(&self.pins);
        let hex = self.spooled.hex();
        if let Some(count) = pins.get_mut(&hex) {
            *count -= 1;
            if *count == 0 {
                pins.remove(&hex);
            }
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|dir| dir.sync_all())
}

fn lock(pins: &Mutex<HashMap<String, usize>>) -> MutexGuard<'_, HashMap<String, usize>> {
    // The map is updated in single steps; a poisoned lock still holds a consistent map.
    pins.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Spool {
    /// Opens (creating, mode 0700) the spool in `state_dir`, removing temporary files left by a
    /// crash: they were never recorded, so nothing refers to them.
    pub fn open(state_dir: &Path) -> Result<Self, SpoolError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("spool");
        let io_error = |source| SpoolError::Io { path: dir.clone(), source };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io_error)?;
        for entry in fs::read_dir(&dir).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            if entry.file_name().to_string_lossy().starts_with(".ingest-") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Self { dir, pins: Arc::default() })
    }

    pub fn path(&self, sha256_hex: &str) -> PathBuf {
        self.dir.join(sha256_hex)
    }

    /// Copies `source` into the spool, hashing it on the way. The entry stays pinned (never
    /// deleted) while the returned pin lives.
    pub fn ingest(&self, source: &Path, max_size: u64) -> Result<SpoolPin, SpoolError> {
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source| SpoolError::Io { path, source }
        };
        let input = File::open(source).map_err(io_error(source))?;
        let metadata = input.metadata().map_err(io_error(source))?;
        if !metadata.is_file() {
            return Err(SpoolError::NotAFile(source.to_owned()));
        }
        if metadata.len() > max_size {
            return Err(SpoolError::TooLarge { path: source.to_owned(), size: metadata.len(), limit: max_size });
        }
        let random: [u8; 8] = gshare_certs::random_bytes().unwrap_or_default();
        let temporary = self.dir.join(format!(".ingest-{}", hex(&random)));
        let temporary_pieces = self.dir.join(format!(".ingest-{}{PIECE_ENDS_SUFFIX}", hex(&random)));
        let result = (|| {
            let create = |path: &Path| {
                OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_error(path))
            };
            let output = create(&temporary)?;
            let pieces = create(&temporary_pieces)?;
            let (sha256, size) = copy_hashing(input, output, pieces, source, &temporary, max_size)?;
            let spooled = Spooled { sha256, size };
            let target = self.path(&spooled.hex());
            let pieces_target = self.pieces_path(&spooled.hex());
            let pin = {
                let mut pins = lock(&self.pins);
                // The same bytes are spooled already, and deliveries may hold them: the fresh
                // copy (which also mends an entry damaged on disk) replaces them only once it
                // is durable itself.
                let unsynced = !target.exists();
                if unsynced {
                    self.mark_unsynced(&spooled.hex()).map_err(io_error(&self.marker_path(&spooled.hex())))?;
                } else {
                    for path in [&temporary, &temporary_pieces] {
                        File::open(path).and_then(|file| file.sync_all()).map_err(io_error(path))?;
                    }
                }
                fs::rename(&temporary_pieces, &pieces_target).map_err(io_error(&pieces_target))?;
                fs::rename(&temporary, &target).map_err(io_error(&target))?;
                *pins.entry(spooled.hex()).or_insert(0) += 1;
                SpoolPin { spooled, unsynced, pins: Arc::clone(&self.pins) }
            };
            if !pin.unsynced {
                sync_dir(&self.dir).map_err(io_error(&self.dir))?;
            }
            Ok(pin)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temporary);
            let _ = fs::remove_file(&temporary_pieces);
        }
        result.map_err(|error| match error {
            SpoolError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull => {
                SpoolError::NoSpace(self.dir.clone())
            }
            other => other,
        })
    }

    /// Makes an entry that [`Spool::ingest`] left unsynced durable, and removes its marker. An
    /// entry deleted meanwhile (every delivery of it done) needs nothing more. Blocking.
    pub fn make_durable(&self, sha256_hex: &str) -> io::Result<()> {
        for path in [self.path(sha256_hex), self.pieces_path(sha256_hex)] {
            match File::open(&path) {
                Ok(file) => file.sync_all()?,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        sync_dir(&self.dir)?;
        match fs::remove_file(self.marker_path(sha256_hex)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        sync_dir(&self.dir)
    }

    /// At start: every entry recorded before its bytes were durable, when the server (or the
    /// machine) went down before they were. Those whose bytes still hash to their names are
    /// made durable; the others are deleted and returned, for the caller to fail their
    /// deliveries. Blocking; reads each such entry whole.
    pub fn recover_unsynced(&self) -> io::Result<Vec<String>> {
        let mut lost = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let Some(hash) = name.strip_suffix(UNSYNCED_SUFFIX) else { continue };
            if self.verify(hash)? {
                self.make_durable(hash)?;
            } else {
                self.remove(hash);
                lost.push(hash.to_owned());
            }
        }
        Ok(lost)
    }

    fn marker_path(&self, sha256_hex: &str) -> PathBuf {
        self.dir.join(format!("{sha256_hex}{UNSYNCED_SUFFIX}"))
    }

    /// Writes an entry's unsynced marker, durably, before the entry is renamed into place.
    fn mark_unsynced(&self, sha256_hex: &str) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.marker_path(sha256_hex))?
            .sync_all()?;
        sync_dir(&self.dir)
    }

    /// Bytes free for the spool on its filesystem (for an unprivileged process).
    pub fn free_bytes(&self) -> io::Result<u64> {
        let stats = rustix::fs::statvfs(&self.dir)?;
        Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the piece ends of an entry are kept.
    pub fn pieces_path(&self, sha256_hex: &str) -> PathBuf {
        self.dir.join(format!("{sha256_hex}{PIECE_ENDS_SUFFIX}"))
    }

    /// The piece ends of an entry, computed now if it has none (an entry spooled by an older
    /// version, or a crash between writing it and its piece ends). Blocking.
    pub fn ensure_piece_hashes(&self, sha256_hex: &str) -> io::Result<PathBuf> {
        let path = self.pieces_path(sha256_hex);
        if path.exists() {
            return Ok(path);
        }
        let random: [u8; 8] = gshare_certs::random_bytes().unwrap_or_default();
        let temporary = self.dir.join(format!(".ingest-{}{PIECE_ENDS_SUFFIX}", hex(&random)));
        let result = (|| {
            let mut input = File::open(self.path(sha256_hex))?;
            let mut ends =
                PieceEndsWriter::new(OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?);
            let mut buffer = vec![0u8; COPY_BUFFER];
            loop {
                let read = match input.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(read) => read,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => return Err(error),
                };
                ends.update(&buffer[..read])?;
            }
            if hex(&ends.finish(true)?) != sha256_hex {
                return Err(io::Error::other("the spooled file no longer hashes to its name"));
            }
            fs::rename(&temporary, &path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        result.map(|()| path)
    }

    /// Whether the entry's bytes still hash to its name: `false` if they changed on disk behind
    /// the server's back, or the entry is gone. Reads the whole entry; blocking.
    pub fn verify(&self, sha256_hex: &str) -> io::Result<bool> {
        let mut input = match File::open(self.path(sha256_hex)) {
            Ok(input) => input,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(error),
        };
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buffer = vec![0u8; COPY_BUFFER];
        loop {
            match input.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => context.update(&buffer[..read]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
        Ok(hex(context.finish().as_ref()) == sha256_hex)
    }

    /// Deletes the entries `release` names (it is asked under the pin lock, so its answer
    /// and the deletions are one step against ingests), except pinned ones. Returns what was
    /// deleted.
    pub fn release<E>(&self, release: impl FnOnce() -> Result<Vec<String>, E>) -> Result<Vec<String>, E> {
        let pins = lock(&self.pins);
        let mut deleted = release()?;
        deleted.retain(|hash| !pins.contains_key(hash));
        for hash in &deleted {
            self.remove(hash);
        }
        Ok(deleted)
    }

    /// Deletes every entry whose hash `needed` (asked under the pin lock) does not list and
    /// that is not pinned: files whose deliveries all finished while the server was down, or
    /// whose record a crash prevented. Returns what was deleted.
    pub fn sweep<E>(&self, needed: impl FnOnce() -> Result<Vec<String>, E>) -> Result<Vec<String>, E> {
        let pins = lock(&self.pins);
        let needed = needed()?;
        let mut deleted = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else { return Ok(deleted) };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(LEGACY_PIECES_SUFFIX) {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let hash = name.strip_suffix(PIECE_ENDS_SUFFIX).unwrap_or(&name);
            let is_entry = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
            let entry_gone = name.ends_with(PIECE_ENDS_SUFFIX) && !self.path(hash).exists();
            if is_entry && (entry_gone || !needed.iter().any(|n| n == hash)) && !pins.contains_key(hash) {
                self.remove(hash);
                deleted.push(hash.to_owned());
            }
        }
        Ok(deleted)
    }

    /// Deletes a spool entry no longer needed.
    fn remove(&self, sha256_hex: &str) {
        let legacy = self.dir.join(format!("{sha256_hex}{LEGACY_PIECES_SUFFIX}"));
        for path in [self.path(sha256_hex), self.pieces_path(sha256_hex), legacy, self.marker_path(sha256_hex)] {
            if let Err(error) = fs::remove_file(&path)
                && error.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(%error, path = %path.display(), "cannot delete a spool entry");
            }
        }
    }
}

/// Copies `input` to `output`, and returns the SHA-256 and size of what it copied. Not made
/// durable: into the page cache, at the speed of reading and hashing, not of the disk.
///
/// Two threads: this one reads and hashes, a second writes, so that the two overlap. Buffers
/// go back to the reader when written, so the copy touches the same few buffers throughout.
fn copy_hashing(
    mut input: File,
    output: File,
    pieces: File,
    source: &Path,
    temporary: &Path,
    max_size: u64,
) -> Result<([u8; 32], u64), SpoolError> {
    let (to_writer, chunks) = mpsc::sync_channel::<Vec<u8>>(COPY_QUEUE);
    let (recycle, recycled) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> io::Result<()> {
            let mut output = output;
            for chunk in chunks {
                output.write_all(&chunk)?;
                let _ = recycle.send(chunk);
            }
            Ok(())
        });
        // The whole-file hash, which notes the piece ends as it goes.
        let mut ends = PieceEndsWriter::new(pieces);
        let mut size = 0u64;
        let read_result = loop {
            let mut buffer = recycled.try_recv().unwrap_or_default();
            buffer.resize(COPY_BUFFER, 0);
            let read = match input.read(&mut buffer) {
                Ok(0) => break Ok(()),
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source_error) => break Err(SpoolError::Io { path: source.to_owned(), source: source_error }),
            };
            size += read as u64;
            if size > max_size {
                break Err(SpoolError::TooLarge { path: source.to_owned(), size, limit: max_size });
            }
            buffer.truncate(read);
            if let Err(error) = ends.update(&buffer) {
                break Err(SpoolError::Io { path: temporary.to_owned(), source: error });
            }
            if to_writer.send(buffer).is_err() {
                break Ok(()); // the writer failed; its error is reported below
            }
        };
        drop(to_writer);
        let write_result = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the spool writer thread panicked")))
            .map_err(|source| SpoolError::Io { path: temporary.to_owned(), source });
        read_result?;
        write_result?;
        let sha256 = ends.finish(false).map_err(|source| SpoolError::Io { path: temporary.to_owned(), source })?;
        Ok((sha256, size))
    })
}

/// Takes a file's SHA-256 as its bytes stream past and writes the state at the end of each
/// piece to a file ([`gshare_proto::chain`]), the file's SHA-256 last.
struct PieceEndsWriter {
    out: io::BufWriter<File>,
    chain: Chain,
}

impl PieceEndsWriter {
    fn new(out: File) -> Self {
        Self { out: io::BufWriter::new(out), chain: Chain::new(PIECE_LEN) }
    }

    fn update(&mut self, bytes: &[u8]) -> io::Result<()> {
        let out = &mut self.out;
        self.chain.update(bytes, |end| out.write_all(&end))
    }

    /// Writes the last piece's end (the file's SHA-256; an empty file has no pieces), makes
    /// the file durable if `durable`, and returns the file's SHA-256.
    fn finish(mut self, durable: bool) -> io::Result<[u8; 32]> {
        let has_pieces = !self.chain.is_empty();
        let sha256 = self.chain.finish();
        if has_pieces {
            self.out.write_all(&sha256)?;
        }
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        if durable {
            file.sync_all()?;
        }
        Ok(sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_hashes_copies_and_deduplicates() {
        let state = tempfile::tempdir().unwrap();
        let spool = Spool::open(state.path()).unwrap();
        let source = state.path().join("abc.txt");
        fs::write(&source, b"abc").unwrap();
        let spooled = spool.ingest(&source, 10).unwrap().spooled.clone();
        assert_eq!(spooled.hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(fs::read(spool.path(&spooled.hex())).unwrap(), b"abc");
        spool.make_durable(&spooled.hex()).unwrap();
        assert_eq!(spool.ingest(&source, 10).unwrap().spooled, spooled);
        assert_eq!(
            fs::read_dir(state.path().join("spool")).unwrap().count(),
            2,
            "one entry and its piece hashes, no temporaries"
        );
        assert!(matches!(spool.ingest(&source, 2), Err(SpoolError::TooLarge { .. })));
        assert!(matches!(spool.ingest(state.path(), 10), Err(SpoolError::NotAFile(_))));
        assert!(matches!(spool.ingest(&state.path().join("missing"), 10), Err(SpoolError::Io { .. })));
    }

    /// A new entry is marked until it is durable; the same bytes sent again are made durable
    /// before they replace it, and leave no mark.
    #[test]
    fn a_new_entry_is_marked_unsynced_until_it_is_made_durable() {
        let state = tempfile::tempdir().unwrap();
        let spool = Spool::open(state.path()).unwrap();
        let source = state.path().join("report.bin");
        fs::write(&source, b"quarterly figures").unwrap();
        let pin = spool.ingest(&source, 100).unwrap();
        let hex = pin.spooled.hex();
        assert!(pin.unsynced, "a new entry is recorded before it is durable");
        assert!(spool.marker_path(&hex).exists());
        spool.make_durable(&hex).unwrap();
        assert!(!spool.marker_path(&hex).exists());
        let again = spool.ingest(&source, 100).unwrap();
        assert!(!again.unsynced && !spool.marker_path(&hex).exists(), "an entry that exists is replaced durably");
        // An entry let go before it was made durable needs nothing more.
        fs::write(&source, b"other figures").unwrap();
        let gone = spool.ingest(&source, 100).unwrap().spooled.hex();
        spool.remove(&gone);
        spool.make_durable(&gone).unwrap();
        assert!(!spool.marker_path(&gone).exists() && !spool.path(&gone).exists());
    }

    /// At start, an entry still marked (the machine went down before it was durable) is kept
    /// if its bytes survived and returned as lost, and deleted, if they did not.
    #[test]
    fn unsynced_entries_are_checked_at_start() {
        let state = tempfile::tempdir().unwrap();
        let spool = Spool::open(state.path()).unwrap();
        let (kept, lost) = (state.path().join("kept.bin"), state.path().join("lost.bin"));
        fs::write(&kept, vec![7u8; 3000]).unwrap();
        fs::write(&lost, vec![9u8; 3000]).unwrap();
        let kept = spool.ingest(&kept, u64::MAX).unwrap().spooled.hex();
        let lost = spool.ingest(&lost, u64::MAX).unwrap().spooled.hex();
        // What a power cut can leave of bytes never written to the disk.
        fs::write(spool.path(&lost), vec![0u8; 1000]).unwrap();
        let reopened = Spool::open(state.path()).unwrap();
        assert_eq!(reopened.recover_unsynced().unwrap(), vec![lost.clone()]);
        assert!(!reopened.path(&lost).exists() && !reopened.marker_path(&lost).exists());
        assert!(reopened.verify(&kept).unwrap() && !reopened.marker_path(&kept).exists());
        assert!(reopened.recover_unsynced().unwrap().is_empty(), "nothing is checked twice");
    }

    #[test]
    fn a_file_of_many_copy_buffers_is_spooled_whole() {
        let state = tempfile::tempdir().unwrap();
        let spool = Spool::open(state.path()).unwrap();
        let source = state.path().join("big.bin");
        let size = 2 * gshare_common::files::WRITE_BEHIND_STEP + 4321;
        let content: Vec<u8> = (0..size).map(|i| (i * 13 % 251) as u8).collect();
        fs::write(&source, &content).unwrap();
        let spooled = spool.ingest(&source, u64::MAX).unwrap().spooled.clone();
        let expected = ring::digest::digest(&ring::digest::SHA256, &content);
        assert_eq!(spooled.sha256.as_slice(), expected.as_ref());
        assert_eq!(spooled.size, size);
        assert!(fs::read(spool.path(&spooled.hex())).unwrap() == content, "every byte in place");
        spool.make_durable(&spooled.hex()).unwrap();
        assert!(matches!(spool.ingest(&source, size - 1), Err(SpoolError::TooLarge { .. })));
        assert_eq!(fs::read_dir(state.path().join("spool")).unwrap().count(), 2, "no temporary left by the refusal");
    }

    #[test]
    fn piece_ends_are_written_beside_the_entry_and_made_on_demand() {
        let state = tempfile::tempdir().unwrap();
        let spool = Spool::open(state.path()).unwrap();
        let source = state.path().join("pieces.bin");
        let content: Vec<u8> = (0..PIECE_LEN as usize * 2 + 100).map(|i| (i * 31 % 253) as u8).collect();
        fs::write(&source, &content).unwrap();
        let hex = spool.ingest(&source, u64::MAX).unwrap().spooled.hex();
        // The state at the end of each piece, the last being the file's SHA-256.
        let first = gshare_proto::chain::run(&gshare_proto::chain::start(), &content[..PIECE_LEN as usize]).unwrap();
        let second = gshare_proto::chain::run(&first, &content[PIECE_LEN as usize..2 * PIECE_LEN as usize]).unwrap();
        let sha256 = ring::digest::digest(&ring::digest::SHA256, &content);
        let expected = [first.as_slice(), second.as_slice(), sha256.as_ref()].concat();
        assert_eq!(fs::read(spool.pieces_path(&hex)).unwrap(), expected);
        fs::remove_file(spool.pieces_path(&hex)).unwrap();
        assert_eq!(fs::read(spool.ensure_piece_hashes(&hex).unwrap()).unwrap(), expected);

        // A last piece that is whole: its end is the file's SHA-256 all the same.
        let whole = &content[..2 * PIECE_LEN as usize];
        fs::write(&source, whole).unwrap();
        let hex = spool.ingest(&source, u64::MAX).unwrap().spooled.hex();
        let sha256 = ring::digest::digest(&ring::digest::SHA256, whole);
        assert_eq!(fs::read(spool.pieces_path(&hex)).unwrap(), [first.as_slice(), sha256.as_ref()].concat());

        // An older version's per-piece hashes are never served: swept away.
        let legacy = state.path().join("spool").join(format!("{hex}.pieces"));
        fs::write(&legacy, [0u8; 64]).unwrap();
        spool.sweep(|| Ok::<_, ()>(vec![hex.clone()])).unwrap();
        assert!(!legacy.exists() && spool.pieces_path(&hex).exists());
    }

    #[test]
    fn spool_release_races_a_new_send_of_the_same_content() {
        // Regression: the last ack of an older file with the same bytes deleted the entry
        // between a new file's ingest and its record; the new delivery pointed at nothing.
        let state = tempfile::tempdir().unwrap();
        let spool = Spool::open(state.path()).unwrap();
        let store = crate::store::Store::open(state.path()).unwrap();
        let developers: gshare_proto::GroupName = "Developers".parse().unwrap();
        let alice: gshare_proto::UserName = "alice".parse().unwrap();
        store.add_membership(&alice, &developers, 1).unwrap();
        let source = state.path().join("report.pdf");
        fs::write(&source, b"the same bytes").unwrap();

        let old = spool.ingest(&source, 100).unwrap();
        let hex = old.spooled.hex();
        let old_file = store.record_file(&hex, "report.pdf", 14, &developers, 2).unwrap();
        drop(old);
        // A new send of the same bytes is ingested, but not recorded yet...
        let new = spool.ingest(&source, 100).unwrap();
        // ...when the old file's last delivery is acknowledged and released.
        store.mark_delivered(old_file.deliveries[0].0, 3).unwrap();
        let released = spool.release(|| store.release_finished_files(4)).unwrap();
        assert!(released.is_empty(), "a pinned entry is kept");
        assert!(spool.path(&hex).exists());
        store.record_file(&hex, "report.pdf", 14, &developers, 5).unwrap();
        drop(new);
        assert!(spool.sweep(|| store.needed_hashes()).unwrap().is_empty(), "the new record needs it");
        assert_eq!(fs::read(spool.path(&hex)).unwrap(), b"the same bytes");
    }
}
