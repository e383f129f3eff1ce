//! A file received in pieces: the temporary file in the out directory, written and read at
//! each piece's offset, and the piece hashes the server stated, kept in the journal beside it.
//!
//! The whole file's SHA-256 is computed as the pieces come, in order: whenever the pieces from
//! the start up to some point are all in, they are hashed while still in memory. Behind that
//! point, every [`SYNC_STEP`] pieces the file is made durable and all but the most recent
//! pieces are dropped from the page cache (as [`gshare_common::files::WriteBehind`] does for a
//! file received in order): dirty memory stays bounded, and on a virtual machine the same
//! pages are reused instead of fresh ones (which cost a host page fault each).
//!
//! Nothing is kept that did not verify: a piece is written only after its SHA-256 matches the
//! server's, from whomever it came. What an interrupted attempt left is checked piece by piece
//! ([`PieceStore::scan`]), so a member resumes with exactly the pieces it holds verified, even
//! after a kill -9. Blocking: async code calls these on a blocking thread.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, MutexGuard};

use gshare_proto::frame::FileKey;
use gshare_proto::swarm::{Bits, piece_span};

/// Pieces hashed into the whole-file SHA-256 between two steps of making the file durable and
/// dropping it from the page cache (32 MiB at 512 KiB pieces).
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
}

/// The whole-file hash, taken in order as pieces arrive.
struct Tail {
    written: Bits,
    /// The next piece to hash.
    cursor: u32,
    context: ring::digest::Context,
    /// Pieces below this are durable and dropped from the page cache.
    dropped: u32,
    /// Pieces below this are durable.
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
            context: ring::digest::Context::new(&ring::digest::SHA256),
            dropped: 0,
            synced: 0,
        };
        Self { key, size, piece_len, pieces, data, hashes, tail: Mutex::new(tail) }
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
    /// as the pieces are in; every [`SYNC_STEP`] pieces, makes them durable and drops the older
    /// ones from the page cache.
    /// `bytes` are the piece's bytes, hashed straight away if it is the next in order.
    pub fn piece_written(&self, piece: u32, bytes: &[u8]) -> io::Result<()> {
        let mut tail = self.tail();
        tail.written.set(piece);
        if piece == tail.cursor {
            tail.context.update(bytes);
            tail.cursor += 1;
        }
        let mut buffer = Vec::new();
        while tail.cursor < self.pieces && tail.written.get(tail.cursor) {
            buffer = self.read(tail.cursor, buffer)?;
            tail.context.update(&buffer);
            tail.cursor += 1;
        }
        if tail.cursor >= tail.synced + SYNC_STEP {
            rustix::fs::fdatasync(&self.data)?;
            tail.synced = tail.cursor;
            let keep_from = tail.cursor.saturating_sub(KEEP_CACHED);
            if keep_from > tail.dropped {
                let offset = u64::from(tail.dropped) * u64::from(self.piece_len);
                let len = u64::from(keep_from - tail.dropped) * u64::from(self.piece_len);
                // Advice only: a file system that cannot drop pages (tmpfs) keeps them.
                let _ = rustix::fs::fadvise(
                    &self.data,
                    offset,
                    std::num::NonZeroU64::new(len),
                    rustix::fs::Advice::DontNeed,
                );
                tail.dropped = keep_from;
            }
        }
        Ok(())
    }

    /// The whole file's SHA-256: from the hash taken as pieces came if every piece is in, else
    /// read back from disk.
    pub fn whole_file_digest(&self) -> io::Result<[u8; 32]> {
        {
            let tail = self.tail();
            if tail.cursor == self.pieces {
                let mut digest = [0u8; 32];
                digest.copy_from_slice(tail.context.clone().finish().as_ref());
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
}
