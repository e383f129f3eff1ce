//! A file received in pieces: the temporary file in the out directory, written and read at
//! each piece's offset, and the piece hashes the server stated, kept in the journal beside it.
//!
//! The whole file's SHA-256 is computed as the pieces come, in order: whenever the pieces from
//! the start up to some point are all in, they are hashed while still in memory. Behind that
//! point, every [`SYNC_STEP`] pieces the file is made durable and all but the most recent
//! pieces are dropped from the page cache, much as [`gshare_common::files::WriteBehind`] does
//! for a file received in order, but without ever waiting for the disk while pieces arrive:
//! dirty memory stays bounded, and on a virtual machine the same pages are reused instead of
//! fresh ones (which cost a host page fault each).
//!
//! Nothing is kept that did not verify: a piece is written only after its SHA-256 matches the
//! server's, from whomever it came. What an interrupted attempt left is checked piece by piece
//! ([`PieceStore::scan`]), so a member resumes with exactly the pieces it holds verified, even
//! after a kill -9. Blocking: async code calls these on a blocking thread.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

use gshare_proto::frame::FileKey;
use gshare_proto::swarm::{Bits, piece_span};

/// Pieces hashed into the whole-file SHA-256 between two steps of starting their writeback and
/// dropping older ones from the page cache (32 MiB at 512 KiB pieces).
pub const SYNC_STEP: u32 = 64;
/// The most recent pieces behind the hashing point kept in the page cache: other members ask
/// for recent pieces most.
pub const KEEP_CACHED: u32 = 64;

/// The pieces of one file on disk.
#[derive(Debug)]
pub struct PieceStore {
    pub key: FileKey,
    pub size: u64,
    pub piece_len: u32,
    pub pieces: u32,
    data: File,
    hashes: File,
    tail: Mutex<Tail>,
    /// Signalled when the hash state is put back (or lost to a read error).
    hash_returned: Condvar,
    /// The file's size and change time once it was received whole: while they are the same,
    /// its pieces are the ones that verified.
    sealed: OnceLock<(u64, i64, i64)>,
}

/// The whole-file hash, taken in order as pieces arrive.
struct Tail {
    written: Bits,
    /// The next piece to hash.
    cursor: u32,
    /// The hash of the pieces before the cursor; taken out while one caller hashes on.
    context: Option<ring::digest::Context>,
    /// A read failed while hashing on: the hash state is gone, and the whole file is read
    /// back to hash it.
    context_lost: bool,
    /// Pieces below this are dropped from the page cache.
    dropped: u32,
    /// Pieces below this have had their writeback started.
    synced: u32,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail").field("cursor", &self.cursor).field("synced", &self.synced).finish_non_exhaustive()
    }
}

impl PieceStore {
    /// `data` is the temporary file (already `size` bytes long), `hashes` the server's piece
    /// hashes, 32 bytes each, in order.
    pub fn new(key: FileKey, size: u64, piece_len: u32, pieces: u32, data: File, hashes: File) -> Self {
        let tail = Tail {
            written: Bits::new(pieces),
            cursor: 0,
            context: Some(ring::digest::Context::new(&ring::digest::SHA256)),
            context_lost: false,
            dropped: 0,
            synced: 0,
        };
        Self {
            key,
            size,
            piece_len,
            pieces,
            data,
            hashes,
            tail: Mutex::new(tail),
            hash_returned: Condvar::new(),
            sealed: OnceLock::new(),
        }
    }

    fn tail(&self) -> MutexGuard<'_, Tail> {
        // Updated in single steps; a poisoned lock still holds a usable hash state.
        self.tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes `held` (found on disk by [`PieceStore::scan`]) as written.
    pub fn mark_held(&self, held: &Bits) {
        let mut tail = self.tail();
        for piece in held.ones() {
            tail.written.set(piece);
        }
    }

    /// Records that a verified piece was written, and hashes on from the hashing point as far
    /// as the pieces are in; every [`SYNC_STEP`] pieces, starts their writeback and drops the older
    /// ones from the page cache. `bytes` are the piece's bytes, hashed straight away if it is
    /// the next in order.
    ///
    /// The hashing happens outside the lock, by the one caller that finds the next piece in
    /// order (it takes the hash state out while it works): pieces arriving meanwhile only mark
    /// themselves written and return, instead of waiting behind a long run of hashing.
    pub fn piece_written(&self, piece: u32, bytes: &[u8]) -> io::Result<()> {
        let mut context = {
            let mut tail = self.tail();
            tail.written.set(piece);
            if piece != tail.cursor {
                return Ok(());
            }
            match tail.context.take() {
                Some(context) => context,
                None => return Ok(()), // the one hashing will find this piece written
            }
        };
        context.update(bytes);
        let mut next = piece + 1;
        let mut buffer = Vec::new();
        loop {
            {
                // Checked under the lock that writers mark under: a piece marked after this
                // finds the hash state back and the cursor on it, and hashes on itself.
                let mut tail = self.tail();
                tail.cursor = next;
                if next >= self.pieces || !tail.written.get(next) {
                    tail.context = Some(context);
                    self.hash_returned.notify_all();
                    self.write_behind(&mut tail);
                    return Ok(());
                }
            }
            // On a read error the hash state is lost: the whole file is then read back to hash
            // it ([`PieceStore::whole_file_digest`]), and the error ends this attempt.
            buffer = match self.read(next, buffer) {
                Ok(buffer) => buffer,
                Err(error) => {
                    self.tail().context_lost = true;
                    self.hash_returned.notify_all();
                    return Err(error);
                }
            };
            context.update(&buffer);
            next += 1;
        }
    }

    /// Every [`SYNC_STEP`] pieces hashed: starts their writeback, and drops from the page cache
    /// what is older than the last [`KEEP_CACHED`] pieces.
    fn write_behind(&self, tail: &mut Tail) {
        if tail.cursor >= tail.synced + SYNC_STEP {
            // Writing back starts now, without waiting for it (nothing here may stall every
            // other piece of this file behind a disk flush): DONTNEED on dirty pages starts
            // their writeback and leaves them. Pieces further behind, written back by now, are
            // then dropped by the same advice. The whole file is made durable once, before its
            // rename.
            let (synced, cursor) = (tail.synced, tail.cursor);
            self.advise_dont_need(synced, cursor);
            tail.synced = cursor;
            let keep_from = cursor.saturating_sub(KEEP_CACHED);
            if keep_from > tail.dropped {
                self.advise_dont_need(tail.dropped, keep_from);
                tail.dropped = keep_from;
            }
        }
    }

    /// `POSIX_FADV_DONTNEED` for pieces `from..to`. Advice only: a file system that cannot
    /// drop pages (tmpfs) keeps them.
    fn advise_dont_need(&self, from: u32, to: u32) {
        let offset = u64::from(from) * u64::from(self.piece_len);
        let len = u64::from(to.saturating_sub(from)) * u64::from(self.piece_len);
        let _ = rustix::fs::fadvise(&self.data, offset, std::num::NonZeroU64::new(len), rustix::fs::Advice::DontNeed);
    }

    /// The whole file's SHA-256: from the hash taken as pieces came if every piece is in, else
    /// read back from disk. Waits for a caller still hashing the last pieces in.
    pub fn whole_file_digest(&self) -> io::Result<[u8; 32]> {
        {
            let mut tail = self.tail();
            while tail.context.is_none() && !tail.context_lost {
                tail = self.hash_returned.wait(tail).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if let (true, Some(context)) = (tail.cursor == self.pieces, &tail.context) {
                let mut digest = [0u8; 32];
                digest.copy_from_slice(context.clone().finish().as_ref());
                return Ok(digest);
            }
        }
        self.whole_file_sha256()
    }

    /// The SHA-256 the server stated for `piece`.
    pub fn expected(&self, piece: u32) -> io::Result<[u8; 32]> {
        let mut hash = [0u8; 32];
        self.hashes.read_exact_at(&mut hash, u64::from(piece) * 32)?;
        Ok(hash)
    }

    /// Whether `bytes` are piece `piece`, exactly.
    pub fn verifies(&self, piece: u32, bytes: &[u8]) -> io::Result<bool> {
        let Some((_, len)) = piece_span(self.size, self.piece_len, piece) else { return Ok(false) };
        if bytes.len() != len {
            return Ok(false);
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        Ok(digest.as_ref() == self.expected(piece)?)
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

    /// The SHA-256 of the whole file, read from disk in order: the final check before the
    /// file takes its name.
    pub fn whole_file_sha256(&self) -> io::Result<[u8; 32]> {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buffer = Vec::new();
        for piece in 0..self.pieces {
            buffer = self.read(piece, buffer)?;
            context.update(&buffer);
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(context.finish().as_ref());
        Ok(digest)
    }

    /// Makes every written piece durable.
    pub fn sync(&self) -> io::Result<()> {
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

    fn fingerprint(&self) -> io::Result<(u64, i64, i64)> {
        let stat = rustix::fs::fstat(&self.data)?;
        Ok((stat.st_size as u64, stat.st_ctime as i64, stat.st_ctime_nsec as i64))
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

    #[test]
    fn pieces_verify_before_they_are_kept_and_a_scan_finds_only_good_ones() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..2500u32).map(|i| (i * 7 % 251) as u8).collect();
        let hashes: Vec<u8> = content.chunks(1000).flat_map(sha).collect();
        std::fs::write(dir.path().join("hashes"), &hashes).unwrap();
        let data =
            File::options().create(true).truncate(true).read(true).write(true).open(dir.path().join("part")).unwrap();
        data.set_len(2500).unwrap();
        let store = PieceStore::new(sha(&content), 2500, 1000, 3, data, File::open(dir.path().join("hashes")).unwrap());
        assert!(store.verifies(2, &content[2000..]).unwrap());
        assert!(!store.verifies(2, &content[1999..2499]).unwrap(), "right length, wrong bytes");
        assert!(!store.verifies(1, &content[1000..1999]).unwrap(), "too short");
        store.write(2, &content[2000..]).unwrap();
        store.write(0, &content[..1000]).unwrap();
        let held = store.scan().unwrap();
        assert_eq!(held.ones().collect::<Vec<_>>(), [0, 2]);
        store.write(1, &content[1000..2000]).unwrap();
        assert_eq!(store.whole_file_sha256().unwrap(), sha(&content));
        // The hash taken as pieces come, in any order, is the same.
        for piece in [2, 0, 1] {
            let span = piece as usize * 1000..(piece as usize * 1000 + 1000).min(2500);
            store.piece_written(piece, &content[span]).unwrap();
        }
        assert_eq!(store.whole_file_digest().unwrap(), sha(&content));
    }

    #[test]
    fn pieces_written_from_many_threads_in_any_order_hash_to_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let (piece_len, pieces) = (1000usize, 200u32);
        let size = piece_len * pieces as usize - 123;
        let content: Vec<u8> = (0..size).map(|i| (i * 31 % 253) as u8).collect();
        let hashes: Vec<u8> = content.chunks(piece_len).flat_map(sha).collect();
        std::fs::write(dir.path().join("hashes"), &hashes).unwrap();
        let data =
            File::options().create(true).truncate(true).read(true).write(true).open(dir.path().join("part")).unwrap();
        data.set_len(size as u64).unwrap();
        let hashes = File::open(dir.path().join("hashes")).unwrap();
        let store = PieceStore::new(sha(&content), size as u64, piece_len as u32, pieces, data, hashes);
        // Eight writers, each taking every eighth piece from the end backwards: the next piece
        // in order keeps arriving while another thread is hashing.
        std::thread::scope(|scope| {
            for writer in 0..8u32 {
                let (store, content) = (&store, &content);
                scope.spawn(move || {
                    for piece in (0..pieces).rev().filter(|p| p % 8 == writer) {
                        let start = piece as usize * piece_len;
                        let bytes = &content[start..(start + piece_len).min(size)];
                        store.write(piece, bytes).unwrap();
                        store.piece_written(piece, bytes).unwrap();
                    }
                });
            }
        });
        assert_eq!(store.tail().cursor, pieces, "some piece was never hashed in order");
        assert_eq!(store.whole_file_digest().unwrap(), sha(&content));
    }

    #[test]
    fn a_sealed_file_counts_as_changed_once_anything_writes_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let content = vec![7u8; 3000];
        let hashes: Vec<u8> = content.chunks(1000).flat_map(sha).collect();
        std::fs::write(dir.path().join("hashes"), &hashes).unwrap();
        std::fs::write(dir.path().join("part"), &content).unwrap();
        let data = File::options().read(true).write(true).open(dir.path().join("part")).unwrap();
        let store = PieceStore::new(sha(&content), 3000, 1000, 3, data, File::open(dir.path().join("hashes")).unwrap());
        assert!(store.changed_since_sealed().unwrap(), "never sealed: checked before serving");
        store.seal().unwrap();
        assert!(!store.changed_since_sealed().unwrap());
        // The person edits the received file in place, keeping its size.
        File::options().write(true).open(dir.path().join("part")).unwrap().write_all_at(b"x", 1500).unwrap();
        assert!(store.changed_since_sealed().unwrap());
    }
}
