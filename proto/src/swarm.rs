//! Swarm delivery's protocol state: a file cut into pieces, which pieces a member holds, and
//! the member's decisions about which piece to ask for, from whom. No IO and no clock: the
//! caller feeds events with the time and carries out the requests it is given.
//!
//! ```text
//!   server ──NextPiece──▶ a piece no member has had yet (each piece leaves the server once)
//!      │
//!   member A ◀──Have/Bitfield──▶ member B      pieces pass between members, in order first
//!      │
//!   server ──PieceRequest──▶ a piece nobody reachable holds (its holder died, or is slow, or
//!                            cannot be reached), once every piece has gone out
//! ```
//!
//! The member asks the server for "a new piece" while it has any: the server hands out each
//! piece once, to whichever member asks first, so a fast member takes more and a slow one
//! fewer, and the server's link carries the file about once. (A member that does not pass
//! pieces on never asks for new ones: what it took would reach nobody else.) Everything else
//! comes from other members: a member's first missing piece first (so that no piece stays
//! missing while later ones pile up, and members hold alike runs from the start), then the
//! rarest of the next few; a piece a member has been slow to send is asked of another member
//! that holds it too, and once it has come from one, it is withdrawn from the other. Only
//! when the other members have made no progress for a grace period (after the server handed
//! out every piece) is a piece that no connected member holds, or that only a slow one does,
//! asked of the server by number.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The piece size the server cuts files into: large enough that per-piece overhead (a request,
/// a hash, a frame) is small, small enough that the first piece is passed on within
/// milliseconds on a LAN (42 ms at 100 Mbit/s).
pub const PIECE_LEN: u32 = 512 * 1024;
/// The largest piece a frame may carry.
pub const MAX_PIECE_LEN: usize = 512 * 1024;
/// Most pieces a file may have: what a 4 TiB file takes at [`PIECE_LEN`].
pub const MAX_PIECES: u64 = 8 * 1024 * 1024;

/// Pieces of a file of `size` bytes at `piece_len` bytes each.
pub fn piece_count(size: u64, piece_len: u32) -> u64 {
    size.div_ceil(u64::from(piece_len.max(1)))
}

/// Where piece `piece` lies in a file of `size` bytes: its offset and length.
pub fn piece_span(size: u64, piece_len: u32, piece: u32) -> Option<(u64, usize)> {
    let offset = u64::from(piece) * u64::from(piece_len);
    if offset >= size {
        return None;
    }
    let len = (size - offset).min(u64::from(piece_len));
    Some((offset, len as usize))
}

/// Where a member sits on the ring of members that swarm delivery is laid out along: the
/// server names each member its neighbours on it, and a member takes pieces in its order
/// ([`Schedule::place_on_ring`]). Everyone reads the same place from a certificate.
pub fn ring_place(certificate: &crate::Fingerprint) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&certificate.0[..8]);
    u64::from_be_bytes(first)
}

/// Up to this many members in a swarm, the server names each of them every other: a member
/// holds a connection to each, which costs little at this size, and takes from a few of them
/// at once ([`ACTIVE_SOURCES`]).
pub const EVERYONE_NAMED_UP_TO: usize = 32;
/// In a larger swarm, the members named to each on either side of it on the ring.
pub const RING_NEIGHBOURS: usize = 4;

/// Which members the server names to which, in a swarm of members at `places` on the ring:
/// entry `i` lists the indexes named to member `i`, in ascending order. Always symmetric
/// (each may serve only a member named to it, so a pair must be named to each other).
///
/// Up to [`EVERYONE_NAMED_UP_TO`] members, everyone is named to everyone. Beyond, naming
/// everyone would have every member hold a connection to every other (500 members: 125,000
/// TLS connections, each member near the common limit of 1,024 open files) and tell every
/// other of each piece it gets. Instead each member is named its [`RING_NEIGHBOURS`] nearest
/// on either side, and shortcuts: the first member at or after half the ring away, a
/// quarter, an eighth, and so on down to its neighbours (as Chord's fingers), and every
/// member whose shortcuts name it. A piece then crosses the swarm in about log2(n) hops, a
/// member holds about 2 (4 + log2(n / 4)) connections (20 on average at 500, at most 52 in
/// a test), and a member joining or leaving changes the lists of its neighbours and of the
/// few whose shortcuts it lands on, not everyone's.
pub fn ring_neighbours(places: &[u64]) -> Vec<Vec<usize>> {
    let n = places.len();
    let mut named: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut name_each_other = |a: usize, b: usize| {
        if a != b {
            named[a].push(b);
            named[b].push(a);
        }
    };
    if n <= EVERYONE_NAMED_UP_TO {
        for a in 0..n {
            for b in a + 1..n {
                name_each_other(a, b);
            }
        }
    } else {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_unstable_by_key(|&i| (places[i], i));
        let sorted: Vec<u64> = order.iter().map(|&i| places[i]).collect();
        for (rank, &member) in order.iter().enumerate() {
            for step in 1..=RING_NEIGHBOURS {
                name_each_other(member, order[(rank + step) % n]);
            }
            let mut halvings = 1;
            while halvings < 64 && (RING_NEIGHBOURS << halvings) < n {
                let target = places[member].wrapping_add(1u64 << (64 - halvings));
                let first_at_or_after = sorted.partition_point(|&place| place < target) % n;
                name_each_other(member, order[first_at_or_after]);
                halvings += 1;
            }
        }
    }
    for list in &mut named {
        list.sort_unstable();
        list.dedup();
    }
    named
}

/// One bit per piece; on the wire, the most significant bit of the first byte is piece 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bits {
    bytes: Vec<u8>,
    len: u32,
}

/// A bitfield that does not fit its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a bitfield of {got} bytes for {pieces} pieces")]
pub struct BitsError {
    got: usize,
    pieces: u32,
}

impl Bits {
    pub fn new(len: u32) -> Self {
        Self { bytes: vec![0; (len as usize).div_ceil(8)], len }
    }

    /// Parses a received bitfield: exactly as long as `len` pieces need, no bits past the end.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Result<Self, BitsError> {
        let bits = Self { bytes: bytes.to_vec(), len };
        let spare = (8 - len % 8) % 8;
        let tail_clean = spare == 0 || bytes.last().is_none_or(|last| last & ((1u8 << spare) - 1) == 0);
        if bytes.len() != (len as usize).div_ceil(8) || !tail_clean {
            return Err(BitsError { got: bytes.len(), pieces: len });
        }
        Ok(bits)
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, index: u32) -> bool {
        index < self.len && self.bytes[(index / 8) as usize] & (0x80 >> (index % 8)) != 0
    }

    pub fn set(&mut self, index: u32) {
        if index < self.len {
            self.bytes[(index / 8) as usize] |= 0x80 >> (index % 8);
        }
    }

    pub fn count(&self) -> u32 {
        self.bytes.iter().map(|b| b.count_ones()).sum()
    }

    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The indexes of the pieces held, in order.
    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&index| self.get(index))
    }
}

/// Who a piece is asked of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Server,
    /// A connection to another member, numbered by the caller.
    Peer(u64),
}

/// Pieces asked of one member at once.
pub const PEER_DEPTH: u32 = 4;
/// Members a member takes pieces from at once. More spread the load over more uplinks and
/// take a piece across the swarm in fewer hops (the simulated LAN, 16 members, 30 layouts
/// each, `members_over_many_layouts` in the tests: 1.18x the limit with 4, 1.15x with 5,
/// 1.13x with 8, 1.06x with all 15), but each connection that carries pieces costs every
/// host on the way per packet, and the packets of a slow flow are small: on the benchmark
/// LAN, where the CPU is shared by every host, 16
/// members took 1.21x-1.23x with 5 (eight runs, median 1.22x) against 1.22x-1.28x with 4
/// (ten, median 1.23x), 1.25x-1.28x with 6, 1.29x-1.31x with 8 and 1.36x-1.40x with all 15;
/// 1 GiB to 8 members (CPU-bound) was no slower with 5 than with 4 (runs alternating). Which
/// ones: the first with pieces for this member in its order on a ring every member sees
/// alike ([`Schedule::place_on_ring`]), so that each member is taken from by about as many as
/// it takes from.
pub const ACTIVE_SOURCES: usize = 5;
/// How often the slowest of the members taken from is let go, while there are others to take
/// from instead: a member that many others happen to take from is slow for each of them (and
/// one that stopped answering sends nothing at all); without this they would stay so.
pub const ROTATE_EVERY: Duration = Duration::from_secs(1);
/// How long a member let go is not asked again.
const REST: Duration = Duration::from_secs(1);
/// Pieces asked of all members together at once (32 MiB): a bound, far above what a LAN link
/// needs, on what one member can have waiting.
pub const MAX_IN_FLIGHT: u32 = 64;
/// How many candidate pieces are looked at, at most, to pick the rarest to ask a member for.
const RAREST_OF: usize = 32;
/// "New piece" requests to the server at once, at least: enough to keep a member's share of
/// the server's link busy while the next request is on its way.
pub const SERVER_NEW_DEPTH: u32 = 4;
/// ... and at most (24 MiB; with [`SERVER_PIECE_DEPTH`], within the 64 requests a server
/// queues for a member).
pub const SERVER_NEW_MAX_DEPTH: u32 = 48;
/// A member with no other member to take pieces from asks, beyond [`SERVER_NEW_DEPTH`], for
/// about this much of its rate from the server (measured over the last half second): the server is
/// its only source, and a fixed depth would leave a lone member on a fast link waiting for
/// each round trip. A member with others to take from keeps to [`SERVER_NEW_DEPTH`]: a piece
/// handed out to it would wait behind the others queued for it, while every other member
/// wants it next.
pub const SERVER_NEW_AHEAD: Duration = Duration::from_millis(100);
/// How far back the rate from the server is measured.
const SERVER_RATE_WINDOW: Duration = Duration::from_millis(500);
/// How many [`SERVER_NEW_AHEAD`]s the rate is measured over.
const AHEADS_PER_WINDOW: u32 = (SERVER_RATE_WINDOW.as_millis() / SERVER_NEW_AHEAD.as_millis()) as u32;
/// Pieces asked of the server by number at once.
pub const SERVER_PIECE_DEPTH: u32 = 8;
/// A request unanswered this long is given up, and the piece asked again elsewhere.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the other members must make no progress (no piece arrives from them, none of them
/// announces a new one) before the server is asked for pieces by number.
pub const SERVER_GRACE: Duration = Duration::from_millis(1500);
/// A piece asked of a member this long ago may be asked again elsewhere: of another member
/// that holds it, or (if none does, and the grace has passed) of the server. A slow member
/// must not hold the others back.
pub const PEER_PATIENCE: Duration = Duration::from_secs(3);
/// The waits above ([`ROTATE_EVERY`], [`REST`], [`SERVER_GRACE`], [`PEER_PATIENCE`]) suit a
/// member receiving at least this many pieces a second (8 MiB/s; a 100 Mbit/s link carries
/// 24). One receiving fewer, on a slower link, waits longer in proportion
/// ([`Schedule::pace`]): each piece takes longer to come, so a wait fixed in seconds would let
/// go of members, and ask pieces again of others and of the server, that were only as slow
/// as the link. Measured on the benchmark LAN at 25 Mbit/s, 16 members: 1.49x and 1.58x the
/// limit with the waits fixed, 1.34x with them four times as long, 1.38x with them growing
/// as here.
const PACE_PIECES_PER_SECOND: f64 = 16.0;
/// The longest the waits grow to: a member that stopped sending must still be let go and its
/// pieces asked elsewhere within seconds.
const MAX_PACE: f64 = 4.0;
/// How far back the pieces that came are counted, to know the pace.
const PACE_WINDOW: Duration = Duration::from_secs(2);
/// Fewer pieces than this in the window say too little: the waits stay as they are.
const PACE_MIN_PIECES: usize = 8;

/// When pieces came within a window of time, as a rate is measured: at most `most` kept,
/// which bounds memory whatever the rate (a count at the bound means "at least this fast").
#[derive(Debug)]
struct RecentArrivals {
    times: VecDeque<Instant>,
    window: Duration,
    most: usize,
    /// When the first of all came.
    first: Option<Instant>,
}

impl RecentArrivals {
    fn new(window: Duration, most: usize) -> Self {
        Self { times: VecDeque::new(), window, most, first: None }
    }

    fn record(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.times.push_back(now);
        self.forget_old(now);
    }

    /// How many came a second over the window before `now`, or over the time since the first
    /// came if that is shorter (right after the first pieces, a whole window would read as
    /// slow). With `most` kept, a rate at `most` per window means "at least this".
    fn per_second(&mut self, now: Instant) -> f64 {
        let count = self.count(now);
        let since_first = self.first.map_or(Duration::ZERO, |first| now.saturating_duration_since(first));
        let span = since_first.min(self.window).max(Duration::from_millis(1));
        count as f64 / span.as_secs_f64()
    }

    /// How many came within the window before `now`.
    fn count(&mut self, now: Instant) -> usize {
        self.forget_old(now);
        self.times.len()
    }

    fn forget_old(&mut self, now: Instant) {
        while self.times.front().is_some_and(|&at| now.saturating_duration_since(at) > self.window) {
            self.times.pop_front();
        }
        while self.times.len() > self.most {
            self.times.pop_front();
        }
    }
}

/// What a member knows about another member.
#[derive(Debug)]
struct PeerView {
    has: Bits,
    in_flight: u32,
    /// Let go as the slowest of those taken from: asked nothing until then.
    resting_until: Option<Instant>,
    /// How often it was let go: a member let go more often is taken from after the others.
    let_go: u32,
    /// Asked, beyond the members taken from, only for the first piece we miss, which nobody
    /// else has: it does not count as taken from.
    for_first_missing: bool,
    /// Pieces that came from it since the last rotation.
    arrived: u32,
    /// Where it sits on the ring of members ([`Schedule::place_on_ring`]).
    place: Option<u64>,
    /// Its turn, on the ring, among the members to take from ([`Schedule::order_ring`]).
    ring_turn: Option<u64>,
    /// When last asked it held no piece we lack (it is behind us): until it announces one,
    /// it keeps no place among the members taken from.
    nothing_for_us: bool,
}

impl PeerView {
    fn is_active(&self) -> bool {
        self.in_flight > 0 && self.resting_until.is_none() && !self.for_first_missing
    }

    fn is_resting(&self, now: Instant) -> bool {
        self.resting_until.is_some_and(|until| now < until)
    }
}

/// What the server should be asked now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerAsks {
    /// How many more "a new piece" requests to send.
    pub new_pieces: u32,
    /// Pieces to ask for by number.
    pub pieces: Vec<u32>,
}

/// One member's piece scheduler for one file.
#[derive(Debug)]
pub struct Schedule {
    have: Bits,
    /// Requests outstanding, per piece: of whom, since when.
    in_flight: HashMap<u32, Vec<(Source, Instant)>>,
    peers: HashMap<u64, PeerView>,
    /// How many connected members hold each piece.
    availability: Vec<u16>,
    server_new_in_flight: u32,
    /// The pieces that came from the server within the last [`SERVER_RATE_WINDOW`].
    server_arrivals: RecentArrivals,
    server_exhausted_at: Option<Instant>,
    /// Whether this member asks for new pieces (it passes pieces on).
    takes_new_pieces: bool,
    /// When a piece last arrived from, or was announced by, another member (or, before any
    /// did, when the schedule began).
    last_progress: Option<Instant>,
    /// Every piece below this is held.
    first_missing: u32,
    /// Spreads this member's choice among equally rare pieces away from other members'.
    seed: u32,
    /// When the slowest member taken from was last let go.
    last_rotation: Option<Instant>,
    /// The pieces that came within the last [`PACE_WINDOW`], from anyone.
    arrivals: RecentArrivals,
    /// Where this member sits on the ring of members ([`Schedule::place_on_ring`]).
    place: Option<u64>,
    /// Requests of other members for pieces that have come from elsewhere meanwhile, for the
    /// caller to tell those members of ([`Schedule::take_withdrawn`]).
    withdrawn: Vec<(u64, u32)>,
    /// The same requests, since when: a copy already on its way is still expected, and
    /// welcome as far as the protocol goes, though not needed.
    late: HashMap<(u32, u64), Instant>,
}

impl Schedule {
    /// A schedule for a member that passes pieces on, for a file of which `have` are held.
    pub fn new(have: Bits) -> Self {
        Self::with_role(have, true)
    }

    /// A schedule for a member that passes pieces on (`serves`) or does not.
    pub fn with_role(have: Bits, serves: bool) -> Self {
        let pieces = have.len() as usize;
        Self {
            have,
            in_flight: HashMap::new(),
            peers: HashMap::new(),
            availability: vec![0; pieces],
            server_new_in_flight: 0,
            // Never more than the deepest depth needs.
            server_arrivals: RecentArrivals::new(
                SERVER_RATE_WINDOW,
                (SERVER_NEW_MAX_DEPTH * AHEADS_PER_WINDOW) as usize,
            ),
            server_exhausted_at: None,
            takes_new_pieces: serves,
            last_progress: None,
            first_missing: 0,
            seed: 0,
            last_rotation: None,
            // More than this is a fast link: the waits are unchanged.
            arrivals: RecentArrivals::new(PACE_WINDOW, (PACE_PIECES_PER_SECOND * PACE_WINDOW.as_secs_f64()) as usize),
            place: None,
            withdrawn: Vec::new(),
            late: HashMap::new(),
        }
        .with_first_missing_found()
    }

    /// Sets the seed that spreads this member's choice among equally rare pieces: members
    /// with different seeds ask a member that holds everything for different pieces, and pass
    /// them on to each other, instead of all asking for the same ones.
    pub fn spread_by(&mut self, seed: u32) {
        self.seed = seed;
    }

    /// Places this member on a ring that every member sees alike (each takes its place from
    /// its certificate). A member then takes pieces from the [`ACTIVE_SOURCES`] members that
    /// have pieces for it in its ring order (`Schedule::order_ring`), and is taken from by
    /// about as many: every member's uplink carries a like share. With each member choosing
    /// in an order of its own instead, some were taken from by twice that many (their
    /// uplinks full, and slow for each taker) while others' stood idle: on the benchmark LAN,
    /// 16 members took 1.27x, 1.27x the limit that way and 1.22x, 1.19x on the ring (runs
    /// alternating).
    pub fn place_on_ring(&mut self, place: u64) {
        self.place = Some(place);
        self.order_ring();
    }

    /// Where a connected member sits on the ring ([`Schedule::place_on_ring`]).
    pub fn place_peer(&mut self, peer: u64, place: u64) {
        if let Some(view) = self.peers.get_mut(&peer) {
            view.place = Some(place);
            self.order_ring();
        }
    }

    /// Numbers the placed members in the order this member takes from them: the nearest
    /// before it on the ring, then the one halfway round, then the 2nd, 3rd, ... nearest.
    /// The one halfway round is a shortcut: a piece the server handed to one member crosses
    /// the ring in fewer hops, each of which costs it a transfer, a check and an "I have"
    /// before it goes on. 16 members on the benchmark LAN: 1.19x, 1.19x the limit against
    /// 1.26x, 1.24x taking from the four nearest (runs alternating).
    fn order_ring(&mut self) {
        let Some(mine) = self.place else { return };
        let mut placed: Vec<(u64, u64)> = self
            .peers
            .iter()
            .filter_map(|(&peer, view)| Some((mine.wrapping_sub(view.place?).wrapping_sub(1), peer)))
            .collect();
        placed.sort_unstable();
        let halfway = (placed.len() / 2) as u64;
        for (nearness, (_, peer)) in (0u64..).zip(placed) {
            let turn = match nearness {
                0 => 0,
                n if n == halfway => 1,
                n => n + 1,
            };
            if let Some(view) = self.peers.get_mut(&peer) {
                view.ring_turn = Some(turn);
            }
        }
    }

    fn with_first_missing_found(mut self) -> Self {
        self.advance_first_missing();
        self
    }

    fn advance_first_missing(&mut self) {
        while self.first_missing < self.have.len() && self.have.get(self.first_missing) {
            self.first_missing += 1;
        }
    }

    pub fn have(&self) -> &Bits {
        &self.have
    }

    pub fn is_done(&self) -> bool {
        self.have.is_full()
    }

    /// A member connected and told which pieces it holds (its bitfield, checked by the caller
    /// to be of the right length).
    pub fn peer_joined(&mut self, peer: u64, has: Bits) {
        self.peer_gone(peer);
        for piece in has.ones() {
            self.availability[piece as usize] = self.availability[piece as usize].saturating_add(1);
        }
        self.peers.insert(
            peer,
            PeerView {
                has,
                in_flight: 0,
                resting_until: None,
                let_go: 0,
                for_first_missing: false,
                arrived: 0,
                place: None,
                ring_turn: None,
                nothing_for_us: false,
            },
        );
    }

    /// A member now holds `piece` too.
    pub fn peer_has(&mut self, peer: u64, piece: u32, now: Instant) {
        if let Some(view) = self.peers.get_mut(&peer)
            && piece < view.has.len()
            && !view.has.get(piece)
        {
            view.has.set(piece);
            self.availability[piece as usize] = self.availability[piece as usize].saturating_add(1);
            if !self.have.get(piece) {
                view.nothing_for_us = false;
                self.last_progress = Some(now);
            }
        }
    }

    /// A member's connection ended: what it held is no longer to be had from it, and what was
    /// asked of it is asked elsewhere.
    pub fn peer_gone(&mut self, peer: u64) {
        let removed = self.peers.remove(&peer);
        if let Some(view) = &removed {
            for piece in view.has.ones() {
                self.availability[piece as usize] = self.availability[piece as usize].saturating_sub(1);
            }
        }
        self.in_flight.retain(|_, requests| {
            requests.retain(|(source, _)| *source != Source::Peer(peer));
            !requests.is_empty()
        });
        self.late.retain(|&(_, asked), _| asked != peer);
        self.withdrawn.retain(|&(asked, _)| asked != peer);
        // What was asked of it may be had from the others.
        for view in self.peers.values_mut() {
            view.nothing_for_us = false;
        }
        // A member joining calls this first (it may have joined before): the order changes
        // only if one left.
        if removed.is_some() {
            self.order_ring();
        }
    }

    /// The server has handed out every piece once.
    pub fn server_exhausted(&mut self, now: Instant) {
        self.server_new_in_flight = self.server_new_in_flight.saturating_sub(1);
        self.server_exhausted_at.get_or_insert(now);
    }

    /// A piece arrived from `source` and verified. Returns whether it was new to us.
    pub fn piece_arrived(&mut self, piece: u32, source: Source, now: Instant) -> bool {
        self.forget_request(piece, source);
        if let Source::Peer(peer) = source {
            self.late.remove(&(piece, peer));
            if let Some(view) = self.peers.get_mut(&peer) {
                view.arrived += 1;
            }
        }
        self.arrivals.record(now);
        match source {
            Source::Peer(_) => self.last_progress = Some(now),
            Source::Server => self.server_arrivals.record(now),
        }
        if piece >= self.have.len() || self.have.get(piece) {
            return false;
        }
        self.have.set(piece);
        self.advance_first_missing();
        self.withdraw_requests(piece, now);
        true
    }

    /// `piece` has come: what else was asked of other members for it is withdrawn, so that
    /// they are asked for other pieces, and (told by the caller) do not send it if they have
    /// not begun to. A piece is asked of a second member when the first is slow: on a slow
    /// link both used to send it, and a tenth of what members received was such copies.
    /// What was asked of the server stays asked: it answers every request.
    fn withdraw_requests(&mut self, piece: u32, now: Instant) {
        let Some(requests) = self.in_flight.get_mut(&piece) else { return };
        let mut withdrawn = Vec::new();
        requests.retain(|(source, _)| match source {
            Source::Peer(peer) => {
                withdrawn.push(*peer);
                false
            }
            Source::Server => true,
        });
        if requests.is_empty() {
            self.in_flight.remove(&piece);
        }
        for peer in withdrawn {
            if let Some(view) = self.peers.get_mut(&peer) {
                view.in_flight = view.in_flight.saturating_sub(1);
            }
            self.withdrawn.push((peer, piece));
            self.late.insert((piece, peer), now);
        }
    }

    /// Requests withdrawn since the last call, as (member, piece): the caller tells each member
    /// that the piece is held here now.
    pub fn take_withdrawn(&mut self) -> Vec<(u64, u32)> {
        std::mem::take(&mut self.withdrawn)
    }

    /// Whether `source` may send `piece`: it was asked for it, or was until the piece came from
    /// elsewhere (its copy may have been on its way).
    pub fn expects(&self, piece: u32, source: Source) -> bool {
        self.is_asked(piece, source) || matches!(source, Source::Peer(peer) if self.late.contains_key(&(piece, peer)))
    }

    /// A piece arrived from `source` and did not verify (or was refused): asked elsewhere.
    pub fn piece_failed(&mut self, piece: u32, source: Source) {
        self.forget_request(piece, source);
    }

    /// How much longer than at `PACE_PIECES_PER_SECOND` this member waits, from 1 (as fast
    /// or faster, or too few pieces yet to tell) to `MAX_PACE`.
    pub fn pace(&mut self, now: Instant) -> f64 {
        if self.arrivals.count(now) < PACE_MIN_PIECES {
            return 1.0;
        }
        (PACE_PIECES_PER_SECOND / self.arrivals.per_second(now)).clamp(1.0, MAX_PACE)
    }

    /// Pieces asked of other members now.
    fn asked_of_peers(&self) -> u32 {
        self.peers.values().map(|view| view.in_flight).sum()
    }

    fn forget_request(&mut self, piece: u32, source: Source) {
        let mut was_asked = false;
        if let Some(requests) = self.in_flight.get_mut(&piece) {
            if let Some(position) = requests.iter().position(|(asked, _)| *asked == source) {
                requests.remove(position);
                was_asked = true;
            }
            if requests.is_empty() {
                self.in_flight.remove(&piece);
            }
        }
        match source {
            Source::Peer(peer) if was_asked => {
                if let Some(view) = self.peers.get_mut(&peer) {
                    view.in_flight = view.in_flight.saturating_sub(1);
                }
            }
            // A piece from the server that was not asked for by number answers a "new piece".
            Source::Server if !was_asked => self.server_new_in_flight = self.server_new_in_flight.saturating_sub(1),
            _ => {}
        }
    }

    /// Whether `peer` holds `piece`, as far as it told us.
    pub fn peer_holds(&self, peer: u64, piece: u32) -> bool {
        self.peers.get(&peer).is_some_and(|view| view.has.get(piece))
    }

    /// Whether `piece` is asked of `source` now: anything else it sends was not asked for.
    pub fn is_asked(&self, piece: u32, source: Source) -> bool {
        self.in_flight.get(&piece).is_some_and(|requests| requests.iter().any(|(asked, _)| *asked == source))
    }

    /// Gives up requests older than [`REQUEST_TIMEOUT`], so their pieces are asked again, and
    /// lets go of the slowest member taken from every [`ROTATE_EVERY`].
    pub fn expire(&mut self, now: Instant) {
        self.rotate(now);
        self.late.retain(|_, since| now.saturating_duration_since(*since) < REQUEST_TIMEOUT);
        let peers = &mut self.peers;
        self.in_flight.retain(|_, requests| {
            requests.retain(|(source, since)| {
                let alive = now.saturating_duration_since(*since) < REQUEST_TIMEOUT;
                if let (false, Source::Peer(peer)) = (alive, source)
                    && let Some(view) = peers.get_mut(peer)
                {
                    view.in_flight = view.in_flight.saturating_sub(1);
                }
                alive
            });
            !requests.is_empty()
        });
    }

    fn rotate(&mut self, now: Instant) {
        let since = *self.last_rotation.get_or_insert(now);
        let pace = self.pace(now);
        if now.saturating_duration_since(since) < ROTATE_EVERY.mul_f64(pace) {
            return;
        }
        self.last_rotation = Some(now);
        let others = self.peers.values().filter(|view| !view.is_active() && view.resting_until.is_none()).count();
        let active = self.peers.iter().filter(|(_, view)| view.is_active());
        let slowest = active.clone().min_by_key(|(_, view)| view.arrived).map(|(&peer, _)| peer);
        if let Some(slowest) = slowest
            && active.count() >= ACTIVE_SOURCES
            && others > 0
            && let Some(view) = self.peers.get_mut(&slowest)
        {
            view.resting_until = Some(now + REST.mul_f64(pace));
            view.let_go += 1;
        }
        for view in self.peers.values_mut() {
            view.arrived = 0;
        }
    }

    /// Pieces to ask of `peer` now (and counted as asked), rarest first.
    pub fn asks_for_peer(&mut self, peer: u64, now: Instant) -> Vec<u32> {
        let patience = PEER_PATIENCE.mul_f64(self.pace(now));
        if let Some(view) = self.peers.get_mut(&peer) {
            if view.resting_until.is_some_and(|until| now >= until) {
                view.resting_until = None;
            }
            if view.in_flight == 0 {
                view.for_first_missing = false;
            }
        }
        let Some(view) = self.peers.get(&peer) else { return Vec::new() };
        // A member not taken from now is asked only while fewer than ACTIVE_SOURCES are (on
        // the ring: fewer with an earlier turn that have pieces for us and are not let go),
        // or (resting or not) for the first piece we miss when only it has that piece: a
        // slow member's pieces must not wait for it to be taken from again.
        let busy = match view.ring_turn {
            Some(turn) => {
                self.peers
                    .values()
                    .filter(|other| {
                        !other.is_resting(now)
                            && !other.nothing_for_us
                            && other.ring_turn.is_some_and(|earlier| earlier < turn)
                    })
                    .count()
                    >= ACTIVE_SOURCES
            }
            None => self.peers.values().filter(|view| view.is_active()).count() >= ACTIVE_SOURCES,
        };
        if !view.is_active() && (busy || view.resting_until.is_some()) {
            let first = self.first_missing;
            let only_it = first < self.have.len()
                && view.has.get(first)
                && self.availability[first as usize] == 1
                && !self.in_flight.contains_key(&first);
            if !only_it || view.in_flight > 0 {
                return Vec::new();
            }
            self.note_asked(peer, &[first], now);
            if let Some(view) = self.peers.get_mut(&peer) {
                view.for_first_missing = true;
            }
            return vec![first];
        }
        let room =
            PEER_DEPTH.saturating_sub(view.in_flight).min(MAX_IN_FLIGHT.saturating_sub(self.asked_of_peers())) as usize;
        if room == 0 {
            return Vec::new();
        }
        // Pieces it holds that we lack and nobody is asked for, looked for from our first
        // missing piece on, a byte of the bitfields at a time. The lowest found is asked first,
        // so that no piece stays missing while later ones pile up beyond it (a member then
        // holds a run from the start, as the others do). Then the rarest of the next few
        // found (a full rarest-first sort on every call costs more than it gains on a LAN),
        // ties spread by this member's seed, so that members asking one that holds everything
        // ask it for different pieces and then pass them on to each other.
        let (theirs, ours) = (view.has.as_bytes(), self.have.as_bytes());
        let mut fresh: Vec<(u16, u32, u32)> = Vec::new();
        let mut holds_any = false;
        for index in (self.first_missing / 8) as usize..theirs.len() {
            let mut wanted = theirs[index] & !ours[index];
            holds_any |= wanted != 0;
            while wanted != 0 {
                let bit = wanted.leading_zeros();
                wanted &= !(0x80u8 >> bit);
                let piece = (index * 8) as u32 + bit;
                if !self.in_flight.contains_key(&piece) {
                    let spread = piece.wrapping_add(self.seed).wrapping_mul(0x9E37_79B9);
                    fresh.push((self.availability[piece as usize], spread, piece));
                }
            }
            if fresh.len() >= RAREST_OF {
                break;
            }
        }
        if let Some(rest) = fresh.get_mut(1..) {
            rest.sort_unstable();
        }
        let mut chosen: Vec<u32> = fresh.into_iter().take(room).map(|(_, _, piece)| piece).collect();
        // Then pieces another member is slow to send.
        if chosen.len() < room {
            let mut slow: Vec<u32> = self
                .in_flight
                .iter()
                .filter(|(piece, requests)| {
                    view.has.get(**piece)
                        && requests.iter().all(|(source, since)| {
                            *source != Source::Peer(peer) && now.saturating_duration_since(*since) >= patience
                        })
                })
                .map(|(piece, _)| *piece)
                .collect();
            slow.sort_unstable();
            chosen.extend(slow.into_iter().take(room - chosen.len()));
        }
        if let Some(view) = self.peers.get_mut(&peer) {
            view.nothing_for_us = !holds_any;
        }
        self.note_asked(peer, &chosen, now);
        chosen
    }

    /// Counts `pieces` as asked of `peer` since `now`.
    fn note_asked(&mut self, peer: u64, pieces: &[u32], now: Instant) {
        for &piece in pieces {
            self.in_flight.entry(piece).or_default().push((Source::Peer(peer), now));
        }
        if let Some(view) = self.peers.get_mut(&peer) {
            view.in_flight += pieces.len() as u32;
        }
    }

    /// The members to look at for pieces, in the order to ask them: those taken from now
    /// first (so a free place among [`ACTIVE_SOURCES`] goes to another only when one of them
    /// has nothing more for us), then the others: on the ring, in turn (`Schedule::order_ring`);
    /// unplaced, those let go for slowness less often first (a slow member is not taken back
    /// again and again), and among equals in an order of this member's own, so that
    /// different members take from different members.
    pub fn peers_in_order(&self) -> Vec<u64> {
        let mut order: Vec<(bool, u32, u64, u64)> = self
            .peers
            .iter()
            .map(|(&peer, view)| match view.ring_turn {
                Some(turn) => (!view.is_active(), 0, turn, peer),
                None => {
                    let rank = (peer ^ u64::from(self.seed)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    (!view.is_active(), view.let_go, rank, peer)
                }
            })
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, _, _, peer)| peer).collect()
    }

    /// What to ask of the server now (and counted as asked).
    pub fn asks_for_server(&mut self, now: Instant) -> ServerAsks {
        let mut asks = ServerAsks::default();
        let last_progress = *self.last_progress.get_or_insert(now);
        if self.takes_new_pieces && self.server_exhausted_at.is_none() {
            let alone = self.peers.is_empty();
            let ahead = if alone { self.server_arrivals.count(now) as u32 / AHEADS_PER_WINDOW } else { 0 };
            let depth = (SERVER_NEW_DEPTH + ahead).min(SERVER_NEW_MAX_DEPTH);
            asks.new_pieces = depth.saturating_sub(self.server_new_in_flight);
            self.server_new_in_flight += asks.new_pieces;
            return asks;
        }
        let quiet_since = self.server_exhausted_at.map_or(last_progress, |exhausted| exhausted.max(last_progress));
        let pace = self.pace(now);
        let patience = PEER_PATIENCE.mul_f64(pace);
        if now.saturating_duration_since(quiet_since) < SERVER_GRACE.mul_f64(pace) {
            return asks;
        }
        let asked_of_server =
            self.in_flight.values().filter(|requests| requests.iter().any(|(s, _)| *s == Source::Server)).count();
        let room = (SERVER_PIECE_DEPTH as usize).saturating_sub(asked_of_server);
        for piece in 0..self.have.len() {
            if asks.pieces.len() >= room {
                break;
            }
            if self.have.get(piece) {
                continue;
            }
            let availability = self.availability[piece as usize];
            let requests = self.in_flight.get(&piece);
            // Only a slow member has it, and it has had its chance.
            let waiting_on_slow_peer = availability <= 1
                && requests.is_some_and(|requests| {
                    requests.iter().all(|(source, since)| {
                        matches!(source, Source::Peer(_)) && now.saturating_duration_since(*since) >= patience
                    })
                });
            let unasked_and_unheld = requests.is_none() && availability == 0;
            if unasked_and_unheld || waiting_on_slow_peer {
                asks.pieces.push(piece);
            }
        }
        for &piece in &asks.pieces {
            self.in_flight.entry(piece).or_default().push((Source::Server, now));
        }
        asks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn piece_arithmetic() {
        assert_eq!(piece_count(0, PIECE_LEN), 0);
        assert_eq!(piece_count(1, PIECE_LEN), 1);
        assert_eq!(piece_count(u64::from(PIECE_LEN), PIECE_LEN), 1);
        assert_eq!(piece_count(u64::from(PIECE_LEN) + 1, PIECE_LEN), 2);
        assert_eq!(piece_span(1000, 300, 3), Some((900, 100)));
        assert_eq!(piece_span(1000, 300, 4), None);
    }

    #[test]
    fn bitfields_parse_with_bounds() {
        let mut bits = Bits::new(10);
        bits.set(0);
        bits.set(9);
        bits.set(10); // past the end: ignored
        assert_eq!(bits.as_bytes(), [0x80, 0x40]);
        assert_eq!(Bits::from_bytes(bits.as_bytes(), 10), Ok(bits.clone()));
        assert!(Bits::from_bytes(&[0x80], 10).is_err(), "too short");
        assert!(Bits::from_bytes(&[0x80, 0x20], 10).is_err(), "a bit past the last piece");
        assert_eq!(bits.ones().collect::<Vec<_>>(), [0, 9]);
    }

    fn holding(pieces: u32, held: impl IntoIterator<Item = u32>) -> Bits {
        let mut bits = Bits::new(pieces);
        for piece in held {
            bits.set(piece);
        }
        bits
    }

    #[test]
    fn the_first_missing_piece_is_asked_first_even_when_others_are_rarer() {
        // Everyone holds pieces 0..10; member 1 also holds 10..100, which nobody else does.
        // Rarest first alone would ask member 1 for those and leave piece 0 for last, while
        // every piece that arrives beyond it waits in memory for the in-order whole-file hash.
        let now = Instant::now();
        let mut schedule = Schedule::new(holding(100, [0, 1, 2]));
        schedule.peer_joined(1, holding(100, 0..100));
        for peer in 2..6 {
            schedule.peer_joined(peer, holding(100, 0..10));
        }
        let asked = schedule.asks_for_peer(1, now);
        assert_eq!(asked.len(), PEER_DEPTH as usize);
        assert_eq!(asked[0], 3, "the first missing piece first: {asked:?}");
        assert!(asked[1..].iter().all(|&piece| piece >= 10), "then the rarest: {asked:?}");
        // The next member asked takes the next missing piece.
        assert_eq!(schedule.asks_for_peer(2, now)[0], 4);
    }

    #[test]
    fn a_piece_asked_of_two_members_is_withdrawn_from_the_other_when_it_comes() {
        let start = Instant::now();
        let mut schedule = Schedule::new(Bits::new(100));
        schedule.peer_joined(1, holding(100, [0]));
        assert_eq!(schedule.asks_for_peer(1, start), [0]);
        // Member 1 is slow: after its patience the piece is asked of member 2 too.
        schedule.peer_joined(2, holding(100, [0]));
        let later = start + PEER_PATIENCE;
        assert_eq!(schedule.asks_for_peer(2, later), [0]);
        assert!(schedule.take_withdrawn().is_empty(), "nothing has come yet");

        // It comes from member 2: the request of member 1 is withdrawn, to be told to it.
        assert!(schedule.piece_arrived(0, Source::Peer(2), later));
        assert_eq!(schedule.take_withdrawn(), [(1, 0)]);
        assert!(schedule.take_withdrawn().is_empty(), "told once");
        assert!(!schedule.is_asked(0, Source::Peer(1)));
        assert_eq!(schedule.peers[&1].in_flight, 0, "member 1 may be asked for other pieces");
        // A copy member 1 had begun is still expected, once, and is not new.
        assert!(schedule.expects(0, Source::Peer(1)));
        assert!(!schedule.expects(0, Source::Peer(3)), "never asked");
        assert!(!schedule.piece_arrived(0, Source::Peer(1), later));
        assert!(!schedule.expects(0, Source::Peer(1)), "a second copy is not");

        // One that never comes is forgotten with the requests that time out.
        schedule.peer_joined(1, holding(100, [1]));
        schedule.peer_joined(2, holding(100, [1]));
        schedule.asks_for_peer(1, later);
        schedule.asks_for_peer(2, later + PEER_PATIENCE);
        schedule.piece_arrived(1, Source::Peer(2), later + PEER_PATIENCE);
        assert!(schedule.expects(1, Source::Peer(1)));
        schedule.expire(later + PEER_PATIENCE + REQUEST_TIMEOUT);
        assert!(!schedule.expects(1, Source::Peer(1)));
    }

    #[test]
    fn on_the_ring_a_member_takes_from_the_nearest_before_it_and_the_one_halfway_round() {
        let now = Instant::now();
        let mut schedule = Schedule::new(holding(1000, 0..10));
        schedule.place_on_ring(100);
        // Members 1..=7 sit 1..=7 places before us (member 7 is also just after us); all hold
        // everything but member 2, which holds only what we hold (it is behind us).
        for peer in 1..=7u64 {
            let has = if peer == 2 { holding(1000, 0..10) } else { holding(1000, 0..1000) };
            schedule.peer_joined(peer, has);
            schedule.place_peer(peer, 100 - peer);
        }
        let ask_all = |schedule: &mut Schedule| -> Vec<u64> {
            let order = schedule.peers_in_order();
            order
                .into_iter()
                .filter(|&peer| schedule.peers[&peer].in_flight > 0 || !schedule.asks_for_peer(peer, now).is_empty())
                .collect()
        };
        // The nearest, then the one halfway round (4th of 7), then the next nearest.
        assert_eq!(schedule.peers_in_order(), [1, 4, 2, 3, 5, 6, 7]);
        assert_eq!(ask_all(&mut schedule), [1, 4, 3, 5, 6], "five with pieces for us, member 2 passed over");

        // Member 2 catches up and announces a piece we lack: it takes the last one's place.
        schedule.peer_has(2, 500, now);
        for piece in schedule.in_flight.keys().copied().collect::<Vec<_>>() {
            let from = [1, 3, 4, 5, 6].into_iter().find(|&peer| schedule.is_asked(piece, Source::Peer(peer))).unwrap();
            schedule.piece_arrived(piece, Source::Peer(from), now);
        }
        assert_eq!(ask_all(&mut schedule), [1, 4, 2, 3, 5]);

        // Member 1's connection ends: of the six left, member 2 is nearest and member 5 now
        // halfway round; member 6, the next nearest, takes member 1's place.
        schedule.peer_gone(1);
        assert_eq!(schedule.peers_in_order()[..4], [2, 5, 3, 4], "those with requests out first, in turn");
        assert_eq!(ask_all(&mut schedule), [2, 5, 3, 4, 6]);
    }

    #[test]
    fn a_member_takes_from_a_few_others_at_once_and_lets_the_slowest_go_each_second() {
        let start = Instant::now();
        let mut schedule = Schedule::new(Bits::new(1000));
        schedule.spread_by(7);
        for peer in 1..=ACTIVE_SOURCES as u64 + 2 {
            schedule.peer_joined(peer, holding(1000, 0..1000));
        }
        let ask_all = |schedule: &mut Schedule, now: Instant| -> Vec<u64> {
            let order = schedule.peers_in_order();
            order.into_iter().filter(|&peer| !schedule.asks_for_peer(peer, now).is_empty()).collect()
        };
        schedule.expire(start);
        let asked = ask_all(&mut schedule, start);
        assert_eq!(asked.len(), ACTIVE_SOURCES, "asked {asked:?}");
        // Asked again, the same ones are topped up, and nobody else is asked.
        let first: Vec<u32> = schedule.in_flight.keys().copied().collect();
        for &piece in &first {
            let from = asked.iter().copied().find(|&peer| schedule.is_asked(piece, Source::Peer(peer))).unwrap();
            schedule.piece_arrived(piece, Source::Peer(from), start);
        }
        let again = ask_all(&mut schedule, start);
        assert_eq!(again.iter().copied().collect::<HashSet<_>>(), asked.iter().copied().collect(), "asked {again:?}");

        // One of them sends nothing for a second: it is let go, and another takes its place.
        let silent = asked[0];
        let later = start + ROTATE_EVERY;
        let pieces: Vec<(u32, u64)> = schedule
            .in_flight
            .iter()
            .filter_map(|(&piece, requests)| match requests[0].0 {
                Source::Peer(peer) if peer != silent => Some((piece, peer)),
                _ => None,
            })
            .collect();
        for (piece, peer) in pieces {
            schedule.piece_arrived(piece, Source::Peer(peer), later);
        }
        // Receiving as fast as on a 100 Mbit/s link: the waits are as they are.
        for piece in 900..950 {
            schedule.piece_arrived(piece, Source::Peer(asked[1]), later);
        }
        assert_eq!(schedule.pace(later), 1.0);
        let topped_up = ask_all(&mut schedule, later);
        assert!(topped_up.iter().all(|peer| asked.contains(peer)), "asked {topped_up:?} beside {asked:?}");
        schedule.expire(later);
        assert!(schedule.asks_for_peer(silent, later).is_empty(), "the silent member is asked again at once");
        let new = ask_all(&mut schedule, later);
        assert_eq!(new.len(), 1, "asked {new:?}");
        assert!(!asked.contains(&new[0]), "{new:?} was taken from already: {asked:?}");
        // Once it has rested, it may be taken from again.
        assert!(schedule.peers.get(&silent).is_some_and(|view| view.resting_until.is_some()));
        schedule.asks_for_peer(silent, later + ROTATE_EVERY);
        assert!(schedule.peers.get(&silent).is_some_and(|view| view.resting_until.is_none()));
    }

    #[test]
    fn on_a_slower_link_the_waits_grow_in_proportion_up_to_a_bound() {
        let start = Instant::now();
        let pace_at = |per_second: u32| {
            let mut schedule = Schedule::new(Bits::new(1000));
            let pieces = per_second * PACE_WINDOW.as_secs() as u32;
            for piece in 0..pieces {
                let at = start + PACE_WINDOW.mul_f64(f64::from(piece) / f64::from(pieces));
                schedule.piece_arrived(piece, Source::Server, at);
            }
            schedule.pace(start + PACE_WINDOW)
        };
        assert_eq!(pace_at(48), 1.0, "faster than the reference");
        assert_eq!(pace_at(16), 1.0, "the reference pace");
        assert_eq!(pace_at(8), 2.0, "half as fast: waits twice as long");
        assert_eq!(pace_at(4), MAX_PACE, "a quarter as fast: the bound, the longest the waits get");
        assert_eq!(pace_at(1), 1.0, "too few pieces to tell");
        // What came longer ago than the window does not count.
        let mut schedule = Schedule::new(Bits::new(1000));
        for piece in 0..16 {
            schedule.piece_arrived(piece, Source::Server, start);
        }
        assert_eq!(schedule.pace(start + PACE_WINDOW), 2.0);
        assert_eq!(schedule.pace(start + PACE_WINDOW * 2), 1.0);
        // Right after the first pieces came, the rate is over the time since: ten pieces in
        // 50 ms is a fast link, not ten in a whole window.
        let mut schedule = Schedule::new(Bits::new(1000));
        for piece in 0..10 {
            schedule.piece_arrived(piece, Source::Server, start + Duration::from_millis(5 * u64::from(piece)));
        }
        assert_eq!(schedule.pace(start + Duration::from_millis(50)), 1.0);
        // ... and a slow one is slow from its first pieces on.
        let mut schedule = Schedule::new(Bits::new(1000));
        for piece in 0..8 {
            schedule.piece_arrived(piece, Source::Server, start + Duration::from_millis(250 * u64::from(piece)));
        }
        assert_eq!(schedule.pace(start + Duration::from_secs(2)), 4.0);
    }

    #[test]
    fn the_first_missing_piece_only_one_member_has_is_asked_of_it_beyond_those_taken_from() {
        let now = Instant::now();
        let mut schedule = Schedule::new(Bits::new(100));
        let taken_from = 1..=ACTIVE_SOURCES as u64;
        for peer in taken_from.clone() {
            schedule.peer_joined(peer, holding(100, 1..100));
        }
        schedule.peer_joined(9, holding(100, [0]));
        for peer in taken_from {
            assert!(!schedule.asks_for_peer(peer, now).is_empty());
        }
        assert_eq!(schedule.asks_for_peer(9, now), [0], "piece 0 waits for a member nobody takes from");
        assert!(schedule.asks_for_peer(9, now).is_empty(), "one such piece at a time");
        // It is not one of the members taken from: another with pieces to give is still not asked.
        schedule.peer_joined(10, holding(100, 50..100));
        assert!(schedule.asks_for_peer(10, now).is_empty());
    }

    #[test]
    fn members_with_different_seeds_take_from_different_members_first() {
        let orders: HashSet<Vec<u64>> = (0..8u32)
            .map(|member| {
                let mut schedule = Schedule::new(Bits::new(100));
                schedule.spread_by(member.wrapping_mul(0x6A09_E667));
                for peer in 1..=15 {
                    schedule.peer_joined(peer, Bits::new(100));
                }
                schedule.peers_in_order().into_iter().take(ACTIVE_SOURCES).collect()
            })
            .collect();
        assert!(orders.len() >= 6, "eight members chose only {} different first few", orders.len());
    }

    #[test]
    fn a_member_alone_asks_the_server_further_ahead_the_faster_pieces_come() {
        let start = Instant::now();
        let mut alone = Schedule::new(Bits::new(1000));
        assert_eq!(alone.asks_for_server(start).new_pieces, SERVER_NEW_DEPTH);
        // 200 pieces a second (100 MB/s): 100 ms of them, 20 more, kept asked for.
        for piece in 0..200 {
            alone.piece_arrived(piece, Source::Server, start + Duration::from_millis(u64::from(piece) * 5));
        }
        let now = start + Duration::from_millis(1000);
        assert_eq!(alone.asks_for_server(now).new_pieces, SERVER_NEW_DEPTH + 20);
        // A second later with nothing more: back to the least depth, which is already asked.
        assert_eq!(alone.asks_for_server(now + Duration::from_secs(2)).new_pieces, 0);

        // With another member to take from, the server is asked no further ahead.
        let mut with_peer = Schedule::new(Bits::new(1000));
        with_peer.peer_joined(1, Bits::new(1000));
        with_peer.asks_for_server(start);
        for piece in 0..200 {
            with_peer.piece_arrived(piece, Source::Server, start + Duration::from_millis(u64::from(piece) * 5));
        }
        assert_eq!(with_peer.asks_for_server(now).new_pieces, SERVER_NEW_DEPTH);
    }

    #[test]
    fn members_with_different_seeds_ask_a_full_holder_for_different_pieces() {
        let now = Instant::now();
        let asked: Vec<Vec<u32>> = (0..4u32)
            .map(|member| {
                let mut schedule = Schedule::new(Bits::new(1000));
                schedule.spread_by(member.wrapping_mul(0x6A09_E667));
                schedule.peer_joined(1, holding(1000, 0..1000));
                schedule.asks_for_peer(1, now)
            })
            .collect();
        // Each asks for piece 0 first, then for pieces of its own.
        let rest: HashSet<u32> = asked.iter().flat_map(|pieces| pieces[1..].iter().copied()).collect();
        assert!(asked.iter().all(|pieces| pieces[0] == 0), "{asked:?}");
        assert!(rest.len() >= 10, "the four members asked for only {} distinct pieces: {asked:?}", rest.len());
    }

    /// Places spread as certificates' are (splitmix64 of the index).
    fn scattered_places(members: usize, salt: u64) -> Vec<u64> {
        (0..members as u64)
            .map(|i| {
                let mut z = (i ^ salt).wrapping_add(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^ (z >> 31)
            })
            .collect()
    }

    /// Hops from member 0 to the farthest member, or `None` if some member cannot be reached.
    fn hops_across(named: &[Vec<usize>]) -> Option<usize> {
        let mut hops = vec![usize::MAX; named.len()];
        hops[0] = 0;
        let mut queue = VecDeque::from([0]);
        while let Some(member) = queue.pop_front() {
            for &next in &named[member] {
                if hops[next] == usize::MAX {
                    hops[next] = hops[member] + 1;
                    queue.push_back(next);
                }
            }
        }
        hops.into_iter().try_fold(0, |farthest, h| (h != usize::MAX).then(|| farthest.max(h)))
    }

    #[test]
    fn up_to_thirty_two_members_each_is_named_every_other() {
        for members in [0, 1, 2, 16, EVERYONE_NAMED_UP_TO] {
            let named = ring_neighbours(&scattered_places(members, 1));
            for (me, list) in named.iter().enumerate() {
                let others: Vec<usize> = (0..members).filter(|&other| other != me).collect();
                assert_eq!(*list, others, "member {me} of {members}");
            }
        }
    }

    #[test]
    fn in_a_larger_swarm_each_is_named_a_few_mutually_and_every_piece_crosses_in_few_hops() {
        for (members, most_hops) in [(33, 3), (100, 4), (500, 5), (4096, 6)] {
            for salt in [1 << 32, 2 << 32, 3 << 32] {
                let named = ring_neighbours(&scattered_places(members, salt));
                for (me, list) in named.iter().enumerate() {
                    assert!(!list.contains(&me), "member {me} of {members} is named to itself");
                    // Well under the connections a member accepts at once (256).
                    assert!(
                        (2 * RING_NEIGHBOURS..=128).contains(&list.len()),
                        "member {me} of {members} is named {} others",
                        list.len()
                    );
                    for &other in list {
                        assert!(named[other].contains(&me), "{other} is named to {me} but not {me} to {other}");
                    }
                }
                let mean = named.iter().map(Vec::len).sum::<usize>() as f64 / members as f64;
                let bound = 2.0 * (RING_NEIGHBOURS as f64 + (members as f64 / RING_NEIGHBOURS as f64).log2());
                assert!(mean <= bound, "{members} members are named {mean:.1} others on average");
                let hops = hops_across(&named).expect("every member can be reached");
                assert!(hops <= most_hops, "{hops} hops across {members} members");
            }
        }
    }

    #[test]
    fn a_member_joining_a_larger_swarm_changes_only_a_few_others_lists() {
        let places = scattered_places(501, 7);
        let before = ring_neighbours(&places[..500]);
        let after = ring_neighbours(&places);
        let changed = (0..500).filter(|&member| before[member] != after[member]).count();
        assert!(changed <= after[500].len() + 2 * RING_NEIGHBOURS, "{changed} of 500 lists changed");
    }

    // -----------------------------------------------------------------------------------------
    // A simulated LAN: every host has a link of its own rate each way (as the benchmark's token
    // buckets make them); transfers crossing a link share it equally, and each member runs this
    // schedule. Time is simulated in steps of 5 ms; the test runs in well under a second. It
    // costs no CPU, which on the benchmark's one machine is part of the limit.

    const RATE: f64 = 12.5e6; // bytes per second: 100 Mbit/s
    const SIZE: u64 = 256 << 20;
    const STEP: f64 = 0.005;

    #[derive(Debug)]
    struct Outcome {
        finish: Vec<Option<f64>>,
        server_uploads: u64,
        /// Pieces that came to a member that held them already.
        twice: u64,
    }

    /// A piece on its way: from a member (`None`: the server) to a member.
    #[derive(Debug)]
    struct Transfer {
        from: Option<usize>,
        to: usize,
        piece: u32,
        left: f64,
        /// When it begins to move.
        ready: f64,
    }

    /// How the pieces asked over one connection move.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Pieces {
        /// All at once, each a flow of its own.
        AllAtOnce,
        /// One after another, as on a TCP stream (closer to the benchmark).
        OneAfterAnother,
    }

    /// Runs `members` members fetching one file; `rates[i]` is member i's link rate, `dies` a
    /// member killed at a time. Returns when each finished and how many pieces the server sent.
    fn simulate(members: usize, rates: &[f64], dies: Option<(usize, f64)>) -> Outcome {
        simulate_with(members, rates, dies, Pieces::AllAtOnce)
    }

    fn simulate_with(members: usize, rates: &[f64], dies: Option<(usize, f64)>, pieces_move: Pieces) -> Outcome {
        simulate_waiting(members, rates, dies, pieces_move, Waits::NONE)
    }

    fn simulate_waiting(
        members: usize,
        rates: &[f64],
        dies: Option<(usize, f64)>,
        pieces_move: Pieces,
        waits: Waits,
    ) -> Outcome {
        let places: Vec<u64> = (0..members as u64).collect();
        simulate_swarm(SIZE, &places, &ring_neighbours(&places), rates, dies, pieces_move, waits)
    }

    /// What a busy host adds to each piece's way, beyond the links' time (seconds).
    #[derive(Debug, Clone, Copy)]
    struct Waits {
        /// From asking to the piece beginning to move (the request's way and the source's
        /// queues).
        request: f64,
        /// From the piece's last byte to its being held and announced to the others (checked,
        /// written, and the "I have" on its way).
        announce: f64,
    }

    impl Waits {
        const NONE: Waits = Waits { request: 0.0, announce: 0.0 };
    }

    /// The simulation itself: a file of `size` bytes to members at `places` on the ring, each
    /// taking from and serving the members `named` to it.
    fn simulate_swarm(
        size: u64,
        places: &[u64],
        named: &[Vec<usize>],
        rates: &[f64],
        dies: Option<(usize, f64)>,
        pieces_move: Pieces,
        waits: Waits,
    ) -> Outcome {
        let members = places.len();
        let pieces = piece_count(size, PIECE_LEN) as u32;
        let start = Instant::now();
        let at = |t: f64| start + Duration::from_secs_f64(t);
        let mut schedules: Vec<Schedule> = (0..members).map(|_| Schedule::new(Bits::new(pieces))).collect();
        for (me, schedule) in schedules.iter_mut().enumerate() {
            schedule.spread_by(me as u32 * 7919);
        }
        for (me, schedule) in schedules.iter_mut().enumerate() {
            schedule.place_on_ring(places[me]);
            for &other in &named[me] {
                schedule.peer_joined(other as u64, Bits::new(pieces));
                schedule.place_peer(other as u64, places[other]);
            }
        }
        let mut next_new = 0u32;
        let mut transfers: Vec<Transfer> = Vec::new();
        let mut finish = vec![None; members];
        let mut dead = vec![false; members];
        let mut server_uploads = 0u64;
        let mut twice = 0u64;
        // Pieces that have come whole, and when they are held and announced.
        let mut landing: Vec<(f64, Transfer)> = Vec::new();
        let mut now = 0.0f64;
        let mut trace = Trace::new(members);
        while now < 300.0 && (0..members).any(|m| finish[m].is_none() && !dead[m]) {
            if let Some((who, when)) = dies
                && now >= when
                && !dead[who]
            {
                dead[who] = true;
                transfers.retain(|t| t.to != who && t.from != Some(who));
                for &other in &named[who] {
                    schedules[other].peer_gone(who as u64);
                }
            }
            // Everyone asks; what is asked begins to move once the request has had its way.
            let asked = |from: Option<usize>, to: usize, piece: u32| Transfer {
                from,
                to,
                piece,
                left: f64::from(PIECE_LEN),
                ready: now + waits.request,
            };
            for me in (0..members).filter(|&m| !dead[m] && finish[m].is_none()) {
                schedules[me].expire(at(now));
                let asks = schedules[me].asks_for_server(at(now));
                for _ in 0..asks.new_pieces {
                    if next_new < pieces {
                        transfers.push(asked(None, me, next_new));
                        next_new += 1;
                    } else {
                        schedules[me].server_exhausted(at(now));
                    }
                }
                for piece in asks.pieces {
                    transfers.push(asked(None, me, piece));
                }
                for other in schedules[me].peers_in_order().into_iter().map(|peer| peer as usize) {
                    for piece in schedules[me].asks_for_peer(other as u64, at(now)) {
                        transfers.push(asked(Some(other), me, piece));
                    }
                }
            }
            // Links carry a step's worth, shared max-min fairly among the transfers crossing
            // them (as TCP flows roughly are): the most crowded link fixes its flows' rate,
            // and what they leave unused on their other link goes to the rest.
            let links = 2 * members + 1; // uplinks 0..members, the server's uplink, downlinks
            let up_link = |from: Option<usize>| from.unwrap_or(members);
            let down_link = |to: usize| members + 1 + to;
            let mut capacity: Vec<f64> = (0..links)
                .map(|link| match link {
                    l if l < members => rates[l],
                    // The server's link is as fast as the fastest member's.
                    l if l == members => rates.iter().copied().fold(0.0, f64::max),
                    l => rates[l - members - 1],
                })
                .collect();
            // A piece still on its way to being sent does not move.
            let mut rate: Vec<Option<f64>> =
                transfers.iter().map(|transfer| (transfer.ready > now).then_some(0.0)).collect();
            if pieces_move == Pieces::OneAfterAnother {
                // Only the first piece asked over each connection moves.
                let mut moving = HashSet::new();
                for (t, transfer) in transfers.iter().enumerate() {
                    if rate[t].is_none() && !moving.insert((transfer.from, transfer.to)) {
                        rate[t] = Some(0.0);
                    }
                }
            }
            loop {
                let mut count = vec![0u32; links];
                for (t, transfer) in transfers.iter().enumerate() {
                    if rate[t].is_none() {
                        count[up_link(transfer.from)] += 1;
                        count[down_link(transfer.to)] += 1;
                    }
                }
                let tightest = (0..links)
                    .filter(|&link| count[link] > 0)
                    .map(|link| (capacity[link] / f64::from(count[link]), link))
                    .min_by(|a, b| a.0.total_cmp(&b.0));
                let Some((share, link)) = tightest else { break };
                for (t, transfer) in transfers.iter().enumerate() {
                    let (up, down) = (up_link(transfer.from), down_link(transfer.to));
                    if rate[t].is_none() && (up == link || down == link) {
                        rate[t] = Some(share);
                        capacity[up] -= share;
                        capacity[down] -= share;
                    }
                }
            }
            for (t, transfer) in transfers.iter_mut().enumerate() {
                transfer.left -= rate[t].unwrap_or(0.0) * STEP;
                trace.carried(transfer.from, transfer.to, rate[t].unwrap_or(0.0) * STEP);
            }
            now += STEP;
            trace.each_second(now, &schedules);
            let (done, going): (Vec<Transfer>, Vec<Transfer>) = transfers.into_iter().partition(|t| t.left <= 0.0);
            transfers = going;
            landing.extend(done.into_iter().map(|t| (now + waits.announce, t)));
            let (landed, waiting): (Vec<_>, Vec<_>) = landing.into_iter().partition(|(at, _)| *at <= now);
            landing = waiting;
            for (_, t) in landed {
                let source = t.from.map_or(Source::Server, |m| Source::Peer(m as u64));
                if t.from.is_none() {
                    server_uploads += 1;
                }
                if schedules[t.to].piece_arrived(t.piece, source, at(now)) {
                    for &other in named[t.to].iter().filter(|&&other| !dead[other]) {
                        schedules[other].peer_has(t.to as u64, t.piece, at(now));
                    }
                    // Members told of it do not send a copy they have not begun.
                    for (peer, piece) in schedules[t.to].take_withdrawn() {
                        transfers.retain(|other| {
                            (other.to, other.from, other.piece) != (t.to, Some(peer as usize), piece)
                                || other.left < f64::from(PIECE_LEN)
                        });
                    }
                } else {
                    twice += 1;
                }
                if schedules[t.to].is_done() && finish[t.to].is_none() {
                    finish[t.to] = Some(now);
                }
            }
        }
        Outcome { finish, server_uploads, twice }
    }

    /// With GSHARE_SIM_TRACE set, a simulation prints each second how busy every link was
    /// (in % of its rate) and how many members take from each member: the way to see where a
    /// schedule leaves links idle (`GSHARE_SIM_TRACE=1 cargo test -p gshare-proto --release
    /// sixteen -- --nocapture`).
    struct Trace {
        on: bool,
        down: Vec<f64>,
        up: Vec<f64>,
        server: f64,
    }

    impl Trace {
        fn new(members: usize) -> Self {
            let on = std::env::var_os("GSHARE_SIM_TRACE").is_some();
            Self { on, down: vec![0.0; members], up: vec![0.0; members], server: 0.0 }
        }

        fn carried(&mut self, from: Option<usize>, to: usize, bytes: f64) {
            self.down[to] += bytes;
            *from.map_or(&mut self.server, |from| &mut self.up[from]) += bytes;
        }

        fn each_second(&mut self, now: f64, schedules: &[Schedule]) {
            if !self.on || now.floor() == (now - STEP).floor() {
                return;
            }
            let percent =
                |bytes: &[f64]| bytes.iter().map(|b| format!("{:3.0}", b / RATE * 100.0)).collect::<Vec<_>>().join(" ");
            let mut takers = vec![0; schedules.len()];
            for schedule in schedules {
                for (&peer, _) in schedule.peers.iter().filter(|(_, view)| view.is_active()) {
                    takers[peer as usize] += 1;
                }
            }
            eprintln!("{now:5.1} s  down {}  server {}", percent(&self.down), percent(&[self.server]));
            eprintln!("         up   {}  takers {takers:?}", percent(&self.up));
            self.down.fill(0.0);
            self.up.fill(0.0);
            self.server = 0.0;
        }
    }

    fn limit() -> f64 {
        SIZE as f64 / RATE
    }

    #[test]
    fn sixteen_members_take_about_the_time_of_one_and_the_server_sends_the_file_once() {
        let outcome = simulate(16, &[RATE; 16], None);
        let slowest = outcome.finish.iter().map(|f| f.expect("every member finishes")).fold(0.0, f64::max);
        let pieces = piece_count(SIZE, PIECE_LEN);
        eprintln!(
            "16 members: slowest {:.2}x the limit; the server sent {:.2}x the file",
            slowest / limit(),
            outcome.server_uploads as f64 / pieces as f64,
        );
        assert!(slowest < 1.3 * limit(), "slowest member took {slowest:.1} s, the limit is {:.1} s", limit());
        assert!(
            outcome.server_uploads <= pieces * 3 / 2,
            "the server sent {} pieces of {pieces}",
            outcome.server_uploads
        );
    }

    /// With pieces on one connection moving one after another, as on the benchmark's TCP
    /// streams, the simulation comes close to the benchmark (16 members: 1.25x to 1.42x over
    /// ten runs, against 1.27x to 1.36x measured; the benchmark's target is 1.2x).
    #[test]
    fn sixteen_members_with_pieces_one_after_another_on_each_connection() {
        let outcome = simulate_with(16, &[RATE; 16], None, Pieces::OneAfterAnother);
        let slowest = outcome.finish.iter().map(|f| f.expect("every member finishes")).fold(0.0, f64::max);
        eprintln!("16 members, pieces one after another: slowest {:.2}x the limit", slowest / limit());
        assert!(slowest < 1.6 * limit(), "slowest member took {slowest:.1} s, the limit is {:.1} s", limit());
    }

    /// On links a quarter as fast (25 Mbit/s, the server's too), pieces come four times as
    /// slowly: the waits grow with it ([`Schedule::pace`]), and a piece asked of a second
    /// member because the first was slow is not sent by the first if it has not begun it
    /// ([`Schedule::take_withdrawn`]). Before both, the benchmark took 1.49x to 1.58x the
    /// limit there, and a tenth of what members received were such copies (the simulation
    /// without withdrawing: 8% to 12%; with it, 5% to 6%).
    #[test]
    fn on_slow_links_members_wait_longer_and_few_pieces_come_twice() {
        let rates = [RATE / 4.0; 16];
        let outcome = simulate_with(16, &rates, None, Pieces::OneAfterAnother);
        let received = piece_count(SIZE, PIECE_LEN) * 16;
        let slowest = outcome.finish.iter().map(|f| f.expect("every member finishes")).fold(0.0, f64::max);
        let ratio = slowest / (4.0 * limit());
        eprintln!("25 Mbit/s: slowest {ratio:.2}x the limit; {} of {received} pieces came twice", outcome.twice);
        assert!(ratio < 1.7, "the slowest member took {ratio:.2}x the limit");
        assert!(outcome.twice * 10 < received, "{} of {received} pieces came twice", outcome.twice);
    }

    /// The waits a busy host adds to each piece, as traced on the benchmark's 16-member runs
    /// (its 2 CPUs full): a request takes about 100 ms to set its piece moving, and a piece
    /// about 150 ms after its last byte to be checked, written and announced. They cost this
    /// schedule little (1.22x-1.24x; the benchmark's 1.3x-1.45x has other causes), but they
    /// are what sank a pipeline along a ring of members (branch `experiment/ring-pull-push`:
    /// 1.04x here without them, 1.26x-1.65x with them, 1.37x-1.76x on the benchmark): judge a
    /// design with many hops with them.
    #[test]
    fn sixteen_members_on_busy_hosts() {
        let waits = Waits { request: 0.1, announce: 0.15 };
        let outcome = simulate_waiting(16, &[RATE; 16], None, Pieces::OneAfterAnother, waits);
        let slowest = outcome.finish.iter().map(|f| f.expect("every member finishes")).fold(0.0, f64::max);
        let pieces = piece_count(SIZE, PIECE_LEN);
        eprintln!("16 members on busy hosts: slowest {:.2}x the limit", slowest / limit());
        assert!(slowest < 2.0 * limit(), "slowest member took {slowest:.1} s");
        assert!(
            outcome.server_uploads <= pieces * 3 / 2,
            "the server sent {} pieces of {pieces}",
            outcome.server_uploads
        );
    }

    /// Beyond [`EVERYONE_NAMED_UP_TO`] each member is named only its neighbours and a few
    /// shortcuts (13 here): pieces still reach everyone as fast as when everyone is named to
    /// everyone (1.66x the limit against 1.82x, which costs this test 30 s more to show: with
    /// 128 pieces for 48 members the start is a large part of the time; at 128 MiB, 1.55x
    /// against 1.60x), and the server still sends the file about once.
    #[test]
    fn forty_eight_members_each_named_a_few_take_about_the_time_of_one() {
        let members = 48;
        let size = 64 << 20;
        let places = scattered_places(members, 5 << 32);
        let named = ring_neighbours(&places);
        let outcome =
            simulate_swarm(size, &places, &named, &vec![RATE; members], None, Pieces::OneAfterAnother, Waits::NONE);
        let limit = size as f64 / RATE;
        let slowest = outcome.finish.iter().map(|f| f.expect("every member finishes")).fold(0.0, f64::max);
        let pieces = piece_count(size, PIECE_LEN);
        eprintln!(
            "48 members, each named {} others: slowest {:.2}x the limit; the server sent {:.2}x the file",
            named[0].len(),
            slowest / limit,
            outcome.server_uploads as f64 / pieces as f64,
        );
        assert!(slowest < 2.0 * limit, "slowest member took {slowest:.1} s, the limit is {limit:.1} s");
        assert!(
            outcome.server_uploads <= pieces * 3 / 2,
            "the server sent {} pieces of {pieces}",
            outcome.server_uploads
        );
    }

    /// Not part of the suite (it takes about half a minute, in release): the simulated LAN
    /// over many layouts of scattered places, with the busy-host waits, to judge a change to
    /// the schedule by more than one layout (each run's order also varies with the schedules'
    /// hash maps). `GSHARE_SIM_MEMBERS` (16) and `GSHARE_SIM_LAYOUTS` (30) set the size, and
    /// `GSHARE_SIM_REQUEST_WAIT` (0.1) and `GSHARE_SIM_ANNOUNCE_WAIT` (0.15) the busy-host
    /// waits, in seconds: `cargo test -p gshare-proto --release many_layouts -- --ignored
    /// --nocapture`. What the waits cost, at 16 members (1.148x with both as set): a
    /// request's 0, 0.05, 0.2, 0.3 s 1.130x, 1.138x, 1.153x, 1.173x; an announcement's 0.05 s,
    /// 0.3 s 1.125x, 1.165x. So every 0.1 s a piece waits at each hop costs about 0.01x-0.02x.
    #[test]
    #[ignore = "a measurement, not a check: run it by name"]
    fn members_over_many_layouts() {
        let setting = |name: &str, default: usize| {
            std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
        };
        let wait =
            |name: &str, default: f64| std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default);
        let (members, layouts) = (setting("GSHARE_SIM_MEMBERS", 16), setting("GSHARE_SIM_LAYOUTS", 30));
        let waits =
            Waits { request: wait("GSHARE_SIM_REQUEST_WAIT", 0.1), announce: wait("GSHARE_SIM_ANNOUNCE_WAIT", 0.15) };
        let mut ratios: Vec<f64> = (0..layouts as u64)
            .map(|layout| {
                let places = scattered_places(members, layout << 32);
                let named = ring_neighbours(&places);
                let rates = vec![RATE; members];
                let outcome = simulate_swarm(SIZE, &places, &named, &rates, None, Pieces::OneAfterAnother, waits);
                outcome.finish.iter().map(|f| f.expect("every member finishes")).fold(0.0, f64::max) / limit()
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        eprintln!(
            "{members} members over {layouts} layouts: mean {mean:.3}x the limit, median {:.3}x, {:.3}x to {:.3}x",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
        );
        assert!(ratios[ratios.len() - 1] < 2.0, "the slowest layout took {:.2}x the limit", ratios[ratios.len() - 1]);
    }

    #[test]
    fn a_member_killed_in_the_middle_does_not_stall_the_others() {
        let outcome = simulate(8, &[RATE; 8], Some((3, limit() / 2.0)));
        for (member, finish) in outcome.finish.iter().enumerate() {
            if member != 3 {
                let finish = finish.expect("every living member finishes");
                assert!(finish < 1.6 * limit(), "member {member} took {finish:.1} s");
            }
        }
    }

    #[test]
    fn a_slow_member_does_not_hold_back_the_fast_ones() {
        let mut rates = [RATE; 8];
        rates[5] = RATE / 10.0;
        let outcome = simulate(8, &rates, None);
        for (member, finish) in outcome.finish.iter().enumerate() {
            let finish = finish.expect("every member finishes");
            if member != 5 {
                assert!(finish < 1.5 * limit(), "fast member {member} took {finish:.1} s");
            }
        }
    }
}
