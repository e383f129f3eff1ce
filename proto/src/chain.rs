//! A file's SHA-256 taken piece by piece, in any order: how a member checks each piece, and
//! the whole file, while hashing every byte once.
//!
//! SHA-256 reads its input in 64-byte blocks and carries a 32-byte state from one block to the
//! next; the file's SHA-256 is what the state becomes after the last block and the length
//! padding. The server states, for every piece, the state at the piece's end ([`PieceEnds`]),
//! the last piece's "end" being the file's SHA-256 itself. A member checks piece k by running
//! SHA-256 on from the state stated at the end of piece k-1 (for the first piece, SHA-256's
//! own starting state) over the piece's bytes, and comparing with the state stated at its end.
//!
//! ```text
//!   START ──piece 0──▶ end 0 ──piece 1──▶ end 1 ── … ──last piece + padding──▶ file's SHA-256
//! ```
//!
//! A piece that passes is the server's piece: other bytes leading from one stated state to the
//! next would break SHA-256 itself. Once every piece has passed, the file's own SHA-256 has
//! been computed over every byte and matched, link by link, so the whole-file check needs no
//! second pass over the file, and pieces may arrive in any order. Pieces are whole 64-byte
//! blocks long (all but the last), which the piece length's decoder enforces.

use sha2::block_api::compress256;

/// SHA-256's state between blocks, as stated on the wire: its eight words, big-endian.
pub type State = [u8; 32];

/// Bytes SHA-256 reads at a time; every piece but the last is a whole number of blocks.
pub const BLOCK: usize = 64;

/// SHA-256's state before any input (FIPS 180-4, 5.3.3).
const INITIAL: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// The state the first piece starts from.
pub fn start() -> State {
    to_bytes(&INITIAL)
}

fn to_words(state: &State) -> [u32; 8] {
    let mut words = [0u32; 8];
    for (word, bytes) in words.iter_mut().zip(state.chunks_exact(4)) {
        *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    words
}

fn to_bytes(words: &[u32; 8]) -> State {
    let mut state = [0u8; 32];
    for (bytes, word) in state.chunks_exact_mut(4).zip(words) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    state
}

/// The state after running on from `from` over `bytes`, a whole number of blocks; `None` if
/// they are not.
pub fn run(from: &State, bytes: &[u8]) -> Option<State> {
    let (blocks, rest) = bytes.as_chunks::<BLOCK>();
    if !rest.is_empty() {
        return None;
    }
    let mut words = to_words(from);
    compress256(&mut words, blocks);
    Some(to_bytes(&words))
}

/// The SHA-256 of a file of `len` bytes whose last `tail.len()` bytes are `tail`, the state
/// after the bytes before them being `from` (they must be a whole number of blocks).
pub fn finish(from: &State, tail: &[u8], len: u64) -> [u8; 32] {
    let (blocks, rest) = tail.as_chunks::<BLOCK>();
    let mut words = to_words(from);
    compress256(&mut words, blocks);
    // The padding: a one bit, zeros, and the length in bits, filling one or two blocks.
    let mut last = [[0u8; BLOCK]; 2];
    let flat = last.as_flattened_mut();
    flat[..rest.len()].copy_from_slice(rest);
    flat[rest.len()] = 0x80;
    let used = if rest.len() < BLOCK - 8 { 1 } else { 2 };
    flat[used * BLOCK - 8..used * BLOCK].copy_from_slice(&len.wrapping_mul(8).to_be_bytes());
    compress256(&mut words, &last[..used]);
    to_bytes(&words)
}

/// What the server stated for a file: the state at the end of every piece, the last being the
/// file's SHA-256.
#[derive(Debug, Clone, Copy)]
pub struct PieceEnds {
    pub size: u64,
    pub piece_len: u32,
    pub pieces: u32,
}

impl PieceEnds {
    /// Whether `bytes` are piece `piece`: `before` is the state stated at the end of the piece
    /// before it ([`start`] for the first), `end` the one stated at its own end (for the last
    /// piece, the file's SHA-256).
    pub fn verifies(&self, piece: u32, before: &State, bytes: &[u8], end: &State) -> bool {
        let Some((offset, len)) = crate::swarm::piece_span(self.size, self.piece_len, piece) else { return false };
        if bytes.len() != len {
            return false;
        }
        if piece + 1 == self.pieces {
            finish(before, bytes, offset + len as u64) == *end
        } else {
            run(before, bytes).is_some_and(|state| state == *end)
        }
    }
}

/// Takes a file's SHA-256 as its bytes stream past, noting the state at the end of every
/// piece: what the server states to members, the last piece's end being the file's SHA-256
/// ([`Chain::finish`]).
#[derive(Debug, Clone)]
pub struct Chain {
    words: [u32; 8],
    /// Bytes of an unfinished block.
    pending: [u8; BLOCK],
    pending_len: usize,
    len: u64,
    piece_len: u64,
    /// The end of the latest whole piece, passed on once another piece begins: if none does,
    /// the last piece's end is the file's SHA-256 instead.
    unsent_end: Option<State>,
}

impl Chain {
    /// `piece_len` must be a whole number of blocks.
    pub fn new(piece_len: u32) -> Self {
        debug_assert!((piece_len as usize).is_multiple_of(BLOCK) && piece_len > 0);
        let piece_len = u64::from(piece_len);
        Self { words: INITIAL, pending: [0; BLOCK], pending_len: 0, len: 0, piece_len, unsent_end: None }
    }

    /// Hashes `bytes` on, calling `piece_end` with the end of every piece but the last, in
    /// order, once the piece after it begins.
    pub fn update<E>(&mut self, mut bytes: &[u8], mut piece_end: impl FnMut(State) -> Result<(), E>) -> Result<(), E> {
        while !bytes.is_empty() {
            if let Some(end) = self.unsent_end.take() {
                piece_end(end)?;
            }
            // Never across a piece's end, so the state there can be noted.
            let to_piece_end = (self.piece_len - self.len % self.piece_len) as usize;
            let (now, later) = bytes.split_at(to_piece_end.min(bytes.len()));
            self.absorb(now);
            bytes = later;
            if self.len.is_multiple_of(self.piece_len) {
                self.unsent_end = Some(to_bytes(&self.words));
            }
        }
        Ok(())
    }

    fn absorb(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.pending_len > 0 {
            let take = (BLOCK - self.pending_len).min(bytes.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&bytes[..take]);
            self.pending_len += take;
            bytes = &bytes[take..];
            if self.pending_len < BLOCK {
                return;
            }
            compress256(&mut self.words, &[self.pending]);
            self.pending_len = 0;
        }
        let (blocks, rest) = bytes.as_chunks::<BLOCK>();
        compress256(&mut self.words, blocks);
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// The file's SHA-256: its last piece's end.
    pub fn finish(self) -> [u8; 32] {
        finish(&to_bytes(&self.words), &self.pending[..self.pending_len], self.len)
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sha256(bytes: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(bytes).into()
    }

    /// Every piece's end as the server states it, from the streaming chain fed `feed` bytes
    /// at a time.
    fn stated(content: &[u8], piece_len: u32, feed: usize) -> Vec<State> {
        let mut chain = Chain::new(piece_len);
        let mut ends = Vec::new();
        for part in content.chunks(feed.max(1)) {
            chain
                .update(part, |end| {
                    ends.push(end);
                    Ok::<(), ()>(())
                })
                .unwrap();
        }
        let pieces = crate::swarm::piece_count(content.len() as u64, piece_len) as usize;
        assert_eq!(ends.len(), pieces.saturating_sub(1), "every end but the last, once");
        ends.push(chain.finish());
        ends
    }

    #[test]
    fn finishing_matches_sha256_at_every_padding_boundary() {
        for len in [0usize, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000] {
            let content: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            assert_eq!(finish(&start(), &content, len as u64), sha256(&content), "{len} bytes");
        }
    }

    proptest! {
        #[test]
        fn every_piece_verifies_in_any_order_and_the_last_end_is_the_files_sha256(
            len in 0usize..5000,
            blocks_per_piece in 1u32..8,
            feed in 1usize..700,
        ) {
            let piece_len = blocks_per_piece * BLOCK as u32;
            let content: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let ends = stated(&content, piece_len, feed);
            prop_assert_eq!(*ends.last().unwrap(), sha256(&content));
            let pieces = crate::swarm::piece_count(len as u64, piece_len) as u32;
            let spec = PieceEnds { size: len as u64, piece_len, pieces };
            for piece in (0..pieces).rev() {
                let (offset, piece_bytes) = crate::swarm::piece_span(len as u64, piece_len, piece).unwrap();
                let bytes = &content[offset as usize..offset as usize + piece_bytes];
                let before = if piece == 0 { start() } else { ends[piece as usize - 1] };
                prop_assert!(spec.verifies(piece, &before, bytes, &ends[piece as usize]));
                // One flipped bit anywhere, a byte short, or the wrong piece: refused.
                let mut flipped = bytes.to_vec();
                flipped[piece_bytes / 2] ^= 1;
                prop_assert!(!spec.verifies(piece, &before, &flipped, &ends[piece as usize]));
                prop_assert!(!spec.verifies(piece, &before, &bytes[..piece_bytes - 1], &ends[piece as usize]));
                if piece > 0 && piece_bytes == piece_len as usize {
                    let (earlier, earlier_bytes) = crate::swarm::piece_span(len as u64, piece_len, piece - 1).unwrap();
                    let before_earlier = if piece == 1 { start() } else { ends[piece as usize - 2] };
                    if content[earlier as usize..earlier as usize + earlier_bytes] != *bytes {
                        prop_assert!(!spec.verifies(piece - 1, &before_earlier, bytes, &ends[piece as usize - 1]));
                    }
                }
            }
        }
    }

    #[test]
    fn running_on_refuses_a_partial_block() {
        assert_eq!(run(&start(), &[0; 63]), None);
        assert!(run(&start(), &[0; 128]).is_some());
    }
}
