//! A file received in pieces: the temporary file in the out directory, written and read at
//! each piece's offset, and the piece ends the server stated, kept in the journal beside it.
//!
//! Each piece is checked against the server's SHA-256 state at its end, running on from the
//! state at the end of the piece before ([`gshare_proto::chain`]): every byte is hashed once,
//! in whatever order pieces come, and once every piece has passed, the file's own SHA-256 has
//! been computed and matched. So nothing waits in memory for pieces before it: each piece's
//! writeback starts as soon as it is written, every [`SYNC_STEP`] bytes of pieces are made
//! durable and the step before is dropped from the page cache, much as
//! [`gshare_common::files::WriteBehind`] does for a file received in order: dirty memory
//! stays bounded, and on a virtual machine the same pages are reused instead of fresh ones
//! (which cost a host page fault each). The waiting for the disk is
//! done by a thread of its own ([`Flusher`]), so no piece ever waits behind it.
//!
//! Nothing is kept that did not verify: a piece is written only after it matches the server's
//! state, from whomever it came. What an interrupted attempt left is checked piece by piece
//! ([`PieceStore::scan`]), so a member resumes with exactly the pieces it holds verified, even
//! after a kill -9. Blocking: async code calls these on a blocking thread.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, MutexGuard, OnceLock, mpsc};

use gshare_proto::chain::{PieceEnds, State, start};
use gshare_proto::frame::FileKey;
use gshare_proto::swarm::{Bits, piece_span};

/// Bytes of pieces written between two steps of making them durable and dropping the step
/// before from the page cache. Other members ask for recent pieces most: a piece stays cached
/// for one to two steps after it arrives. (In bytes, not pieces: each step costs a sync,
/// whatever the piece size.)
pub const SYNC_STEP: u64 = 32 * 1024 * 1024;

/// The pieces of one file on disk.
#[derive(Debug)]
pub struct PieceStore {
    pub key: FileKey,
    pub size: u64,
    pub piece_len: u32,
    pub pieces: u32,
    data: File,
    /// The server's piece ends, 32 bytes each, in order.
    ends: File,
    written: Mutex<Written>,
    /// Takes each piece written, and each step of them to make durable and drop; started
    /// with the first.
    flusher: Mutex<Option<mpsc::Sender<Flush>>>,
    /// The file's size and change time once it was received whole: while they are the same,
    /// its pieces are the ones that verified.
    sealed: OnceLock<(u64, i64, i64)>,
}

/// Which pieces are on disk verified, and which were written since the last step.
#[derive(Debug)]
struct Written {
    verified: Bits,
    step: Vec<u32>,
}

impl PieceStore {
    /// `data` is the temporary file (already `size` bytes long), `ends` the server's piece
    /// ends, 32 bytes each, in order.
    pub fn new(key: FileKey, size: u64, piece_len: u32, pieces: u32, data: File, ends: File) -> Self {
        let written = Written { verified: Bits::new(pieces), step: Vec::new() };
        Self {
            key,
            size,
            piece_len,
            pieces,
            data,
            ends,
            written: Mutex::new(written),
            flusher: Mutex::new(None),
            sealed: OnceLock::new(),
        }
    }

    fn written(&self) -> MutexGuard<'_, Written> {
        // Updated in single steps; a poisoned lock still holds usable bits.
        self.written.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes `held` (found on disk by [`PieceStore::scan`]) as written.
    pub fn mark_held(&self, held: &Bits) {
        let mut written = self.written();
        for piece in held.ones() {
            written.verified.set(piece);
        }
    }

    /// Records that a verified piece was written. Every [`SYNC_STEP`] bytes, hands the pieces
    /// to the flusher, which makes them durable and drops the step before from the page cache.
    pub fn piece_written(&self, piece: u32) {
        let step_pieces = (SYNC_STEP / u64::from(self.piece_len.max(1))).max(1) as usize;
        let step = {
            let mut written = self.written();
            written.verified.set(piece);
            written.step.push(piece);
            (written.step.len() >= step_pieces).then(|| std::mem::take(&mut written.step))
        };
        let mut flusher = self.flusher.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if flusher.is_none() {
            *flusher = Flusher::start(&self.data, self.piece_len);
        }
        if let Some(flusher) = flusher.as_ref() {
            let _ = flusher.send(Flush::Written(piece));
            if let Some(step) = step {
                let _ = flusher.send(Flush::Step(step));
            }
        }
    }

    /// Whether every piece is on disk verified: then the file's SHA-256 is the one stated.
    pub fn whole_file_verified(&self) -> bool {
        if self.pieces == 0 {
            return self.key == gshare_proto::chain::finish(&start(), &[], 0);
        }
        self.written().verified.is_full()
    }

    /// The states the server stated before and after `piece`: at the end of the piece before
    /// it (SHA-256's start for the first), and at its own end (the file's SHA-256 for the
    /// last).
    fn piece_ends(&self, piece: u32) -> io::Result<(State, State)> {
        let stated = |index: u32| -> io::Result<State> {
            let mut end = [0u8; 32];
            self.ends.read_exact_at(&mut end, u64::from(index) * 32)?;
            Ok(end)
        };
        let before = if piece == 0 { start() } else { stated(piece - 1)? };
        let end = if piece + 1 == self.pieces { self.key } else { stated(piece)? };
        Ok((before, end))
    }

    /// Whether `bytes` are piece `piece`, exactly.
    pub fn verifies(&self, piece: u32, bytes: &[u8]) -> io::Result<bool> {
        if piece >= self.pieces {
            return Ok(false);
        }
        let (before, end) = self.piece_ends(piece)?;
        let spec = PieceEnds { size: self.size, piece_len: self.piece_len, pieces: self.pieces };
        Ok(spec.verifies(piece, &before, bytes, &end))
    }

    /// Writes a verified piece at its offset.
    pub fn write(&self, piece: u32, bytes: &[u8]) -> io::Result<()> {
        let (offset, _) =
            piece_span(self.size, self.piece_len, piece).ok_or_else(|| io::Error::other("no such piece"))?;
        self.data.write_all_at(bytes, offset)
    }

    /// Reads piece `piece` into `buffer`.
    pub fn read(&self, piece: u32, mut buffer: Vec<u8>) -> io::Result<Vec<u8>> {
        let (offset, len) =
            piece_span(self.size, self.piece_len, piece).ok_or_else(|| io::Error::other("no such piece"))?;
        buffer.resize(len, 0);
        self.data.read_exact_at(&mut buffer, offset)?;
        Ok(buffer)
    }

    /// The pieces already on disk that verify.
    pub fn scan(&self) -> io::Result<Bits> {
        let mut held = Bits::new(self.pieces);
        let mut buffer = Vec::new();
        for piece in 0..self.pieces {
            buffer = self.read(piece, buffer)?;
            // A piece never written reads as zeros and does not verify (unless it is zeros).
            if self.verifies(piece, &buffer)? {
                held.set(piece);
            }
        }
        Ok(held)
    }

    /// Makes every written piece durable; the flusher, its work done, ends.
    pub fn sync(&self) -> io::Result<()> {
        self.flusher.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        self.data.sync_all()
    }

    /// Notes the file's size and change time now that it was received whole and verified.
    pub fn seal(&self) -> io::Result<()> {
        let _ = self.sealed.set(self.fingerprint()?);
        Ok(())
    }

    /// Whether the file may have changed since it was sealed (or was never sealed). Its change
    /// time moves with every write, and no program can set it back, so a piece of a file that
    /// has not changed is the piece that verified and need not be hashed again to be served.
    /// (A write within the clock's granularity of the seal could go unseen here on an older
    /// kernel; the member it is served to checks every piece anyway.)
    pub fn changed_since_sealed(&self) -> io::Result<bool> {
        Ok(self.sealed.get() != Some(&self.fingerprint()?))
    }

    /// Whether the file has been deleted (this store holds the last reference to its bytes).
    pub fn is_deleted(&self) -> bool {
        rustix::fs::fstat(&self.data).is_ok_and(|stat| stat.st_nlink == 0)
    }

    fn fingerprint(&self) -> io::Result<(u64, i64, i64)> {
        let stat = rustix::fs::fstat(&self.data)?;
        Ok((stat.st_size as u64, stat.st_ctime as i64, stat.st_ctime_nsec as i64))
    }
}

/// What the flusher is handed.
enum Flush {
    /// A piece was written: its writeback starts now. Left to the kernel, it would start only
    /// with the step's sync, and 16 members on one disk would each sync 32 MiB at a time (the
    /// benchmark's bursts of 260 MB and more), and 16 MiB on average at the end, while the
    /// member waits to acknowledge the file.
    Written(u32),
    /// A step of pieces to make durable.
    Step(Vec<u32>),
}

/// Makes steps of written pieces durable and drops them from the page cache, on a thread of
/// its own; it ends when its store is dropped.
struct Flusher {
    data: File,
    piece_len: u32,
    /// The step before the latest: dropped once the latest is durable too.
    previous: Vec<u32>,
}

impl Flusher {
    /// `None` if the file cannot be opened again or no thread started: pages then stay cached
    /// until the kernel needs them, which costs speed, not correctness.
    fn start(data: &File, piece_len: u32) -> Option<mpsc::Sender<Flush>> {
        let flusher = Self { data: data.try_clone().ok()?, piece_len, previous: Vec::new() };
        let (steps, receiver) = mpsc::channel();
        std::thread::Builder::new().name("gshare-flusher".into()).spawn(move || flusher.run(receiver)).ok()?;
        Some(steps)
    }

    fn run(mut self, work: mpsc::Receiver<Flush>) {
        while let Ok(flush) = work.recv() {
            match flush {
                // Advice too: a failed write is met again by the sync.
                Flush::Written(piece) => {
                    let piece_len = u64::from(self.piece_len);
                    let _ = gshare_common::files::start_write_back(&self.data, u64::from(piece) * piece_len, piece_len);
                }
                // Dirty pages cannot be dropped; once written back they can. A failed sync is
                // met again, and reported, by the sync before the file takes its name.
                Flush::Step(step) => {
                    if self.data.sync_data().is_ok() {
                        let previous = std::mem::replace(&mut self.previous, step);
                        self.advise_dont_need(previous);
                    }
                }
            }
        }
    }

    /// `POSIX_FADV_DONTNEED` for `pieces`, a run of neighbours at a time. Advice only: a file
    /// system that cannot drop pages (tmpfs) keeps them.
    fn advise_dont_need(&self, mut pieces: Vec<u32>) {
        pieces.sort_unstable();
        let piece_len = u64::from(self.piece_len);
        for run in pieces.chunk_by(|a, b| a + 1 == *b) {
            let offset = u64::from(run[0]) * piece_len;
            let len = run.len() as u64 * piece_len;
            let _ =
                rustix::fs::fadvise(&self.data, offset, std::num::NonZeroU64::new(len), rustix::fs::Advice::DontNeed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
        out
    }

    /// A store for `content` in pieces of `piece_len`, with the piece ends the server would
    /// state, and nothing written yet.
    fn store_for(dir: &std::path::Path, content: &[u8], piece_len: u32) -> PieceStore {
        let pieces = gshare_proto::swarm::piece_count(content.len() as u64, piece_len) as u32;
        let mut ends = Vec::new();
        let mut state = start();
        for piece in content.chunks(piece_len as usize).take(pieces.saturating_sub(1) as usize) {
            state = gshare_proto::chain::run(&state, piece).unwrap();
            ends.extend_from_slice(&state);
        }
        ends.extend_from_slice(&sha(content));
        std::fs::write(dir.join("ends"), &ends).unwrap();
        let data = File::options().create(true).truncate(true).read(true).write(true).open(dir.join("part")).unwrap();
        data.set_len(content.len() as u64).unwrap();
        PieceStore::new(
            sha(content),
            content.len() as u64,
            piece_len,
            pieces,
            data,
            File::open(dir.join("ends")).unwrap(),
        )
    }

    #[test]
    fn pieces_verify_before_they_are_kept_and_a_scan_finds_only_good_ones() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..2500u32).map(|i| (i * 7 % 251) as u8).collect();
        let store = store_for(dir.path(), &content, 1024);
        assert!(store.verifies(2, &content[2048..]).unwrap(), "the last piece, against the file's SHA-256");
        assert!(store.verifies(1, &content[1024..2048]).unwrap());
        assert!(!store.verifies(2, &content[2047..2499]).unwrap(), "right length, wrong bytes");
        assert!(!store.verifies(1, &content[1024..2047]).unwrap(), "too short");
        assert!(!store.verifies(0, &content[1024..2048]).unwrap(), "another piece");
        assert!(!store.verifies(3, &content[2048..]).unwrap(), "no such piece");
        store.write(2, &content[2048..]).unwrap();
        store.write(0, &content[..1024]).unwrap();
        let held = store.scan().unwrap();
        assert_eq!(held.ones().collect::<Vec<_>>(), [0, 2]);
        store.mark_held(&held);
        assert!(!store.whole_file_verified());
        store.write(1, &content[1024..2048]).unwrap();
        store.piece_written(1);
        assert!(store.whole_file_verified());
        assert_eq!(std::fs::read(dir.path().join("part")).unwrap(), content);
    }

    #[test]
    fn an_empty_file_is_whole_only_if_its_stated_sha256_is_the_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(store_for(dir.path(), &[], 1024).whole_file_verified());
        let data =
            File::options().create(true).truncate(true).read(true).write(true).open(dir.path().join("p")).unwrap();
        let forged = PieceStore::new([9; 32], 0, 1024, 0, data, File::open(dir.path().join("ends")).unwrap());
        assert!(!forged.whole_file_verified());
    }

    #[test]
    fn pieces_written_from_many_threads_in_any_order_make_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let (piece_len, pieces) = (1024usize, 300u32);
        let size = piece_len * pieces as usize - 123;
        let content: Vec<u8> = (0..size).map(|i| (i * 31 % 253) as u8).collect();
        let store = store_for(dir.path(), &content, piece_len as u32);
        // Eight writers, each taking every eighth piece from the end backwards, through
        // several steps of write-behind.
        std::thread::scope(|scope| {
            for writer in 0..8u32 {
                let (store, content) = (&store, &content);
                scope.spawn(move || {
                    for piece in (0..pieces).rev().filter(|p| p % 8 == writer) {
                        let start = piece as usize * piece_len;
                        let bytes = &content[start..(start + piece_len).min(size)];
                        assert!(store.verifies(piece, bytes).unwrap());
                        store.write(piece, bytes).unwrap();
                        store.piece_written(piece);
                    }
                });
            }
        });
        assert!(store.whole_file_verified());
        store.sync().unwrap();
        assert_eq!(std::fs::read(dir.path().join("part")).unwrap(), content);
    }

    #[test]
    fn a_sealed_file_counts_as_changed_once_anything_writes_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let content = vec![7u8; 3000];
        let store = store_for(dir.path(), &content, 1024);
        for (piece, bytes) in content.chunks(1024).enumerate() {
            store.write(piece as u32, bytes).unwrap();
        }
        assert!(store.changed_since_sealed().unwrap(), "never sealed: checked before serving");
        store.seal().unwrap();
        assert!(!store.changed_since_sealed().unwrap());
        // The person edits the received file in place, keeping its size.
        File::options().write(true).open(dir.path().join("part")).unwrap().write_all_at(b"x", 1500).unwrap();
        assert!(store.changed_since_sealed().unwrap());
    }
}
