//! The server's side of swarm delivery: which member sessions take part in which file's
//! swarm, and which pieces of it have left the server.
//!
//! A member session joins a file's swarm when it starts taking the file in pieces, and stays
//! in it (passing pieces on to the others) until the session ends. The server names, to each
//! member of a swarm, the members it may take pieces from and give pieces to, and nobody else:
//! in a swarm of up to 32 members every other member, in a larger one its neighbours on a
//! ring and a few shortcuts across it ([`ring_neighbours`]). The lists change as sessions come
//! and go (a removed or revoked member's sessions end at once), and every session in the swarm
//! is told of its new list.
//!
//! "A new piece" requests are answered from [`Swarms::next_piece`]: each piece is handed out
//! once, to whichever member asks first, so the server's link carries the file about once
//! however many members there are. When the last member of a swarm leaves, its record goes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::sync::watch;

use gshare_proto::frame::{FileKey, PeerInfo};
use gshare_proto::swarm::{Bits, ring_neighbours, ring_place};
use gshare_proto::{Fingerprint, UserName};

/// A member session taking part in swarms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SwarmMember {
    pub session: u64,
    pub user: UserName,
    pub certificate: Fingerprint,
    /// Where it accepts other members, if it does.
    pub address: Option<SocketAddr>,
}

#[derive(Debug)]
struct FileSwarm {
    /// Pieces handed out at least once.
    dispatched: Bits,
    /// Every piece below this has been handed out: the search for the next starts here, so
    /// handing out a file of millions of pieces is not a scan from the start each time.
    first_undispatched: u32,
    /// By session.
    members: HashMap<u64, SwarmMember>,
    /// The members named to each certificate in the swarm, worked out again whenever its
    /// members change (rather than for each session that asks: 500 sessions asking after each
    /// of 500 joins).
    named: HashMap<Fingerprint, Vec<PeerInfo>>,
}

impl FileSwarm {
    /// Takes session `session` out, and works the lists out again if others remain (an
    /// empty swarm is about to be dropped). Whether it was in.
    fn without(&mut self, session: u64) -> bool {
        let was_in = self.members.remove(&session).is_some();
        if was_in && !self.members.is_empty() {
            self.name_peers();
        }
        was_in
    }

    fn name_peers(&mut self) {
        // One entry per certificate: a certificate with several sessions is one member, and
        // its address is that of the session that listens (the earliest, if several do: the
        // same one each time the lists are worked out, or members would be told of a change
        // that is none).
        let mut sessions: Vec<&SwarmMember> = self.members.values().collect();
        sessions.sort_unstable_by_key(|member| member.session);
        let mut certificates: BTreeMap<Fingerprint, Option<SocketAddr>> = BTreeMap::new();
        for member in sessions {
            let address = certificates.entry(member.certificate).or_default();
            *address = address.or(member.address);
        }
        let certificates: Vec<(Fingerprint, Option<SocketAddr>)> = certificates.into_iter().collect();
        let places: Vec<u64> = certificates.iter().map(|(certificate, _)| ring_place(certificate)).collect();
        self.named = ring_neighbours(&places)
            .into_iter()
            .zip(&certificates)
            .map(|(named, (certificate, _))| {
                let peers = named
                    .into_iter()
                    .map(|i| PeerInfo { certificate: certificates[i].0, address: certificates[i].1 })
                    .collect();
                (*certificate, peers)
            })
            .collect();
    }
}

/// Every file's swarm.
#[derive(Debug)]
pub(crate) struct Swarms {
    files: Mutex<HashMap<FileKey, FileSwarm>>,
    /// Bumped whenever a swarm's members change, so sessions send fresh peer lists.
    changed: watch::Sender<u64>,
}

impl Default for Swarms {
    fn default() -> Self {
        Self { files: Mutex::new(HashMap::new()), changed: watch::Sender::new(0) }
    }
}

impl Swarms {
    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<FileKey, FileSwarm>> {
        // Every update is one step on the map; a poisoned lock still holds a consistent map.
        self.files.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Wakes when any swarm's members change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Adds `member` to the swarm of `file` (of `pieces` pieces); harmless if it is in it.
    pub fn join(&self, file: FileKey, pieces: u32, member: SwarmMember) {
        let mut files = self.files();
        let swarm = files.entry(file).or_insert_with(|| FileSwarm {
            dispatched: Bits::new(pieces),
            first_undispatched: 0,
            members: HashMap::new(),
            named: HashMap::new(),
        });
        if let std::collections::hash_map::Entry::Vacant(entry) = swarm.members.entry(member.session) {
            entry.insert(member);
            swarm.name_peers();
            drop(files);
            self.bump();
        }
    }

    /// Takes session `session` out of the swarm of `file`.
    pub fn leave(&self, file: &FileKey, session: u64) {
        let mut files = self.files();
        let Some(swarm) = files.get_mut(file) else { return };
        let changed = swarm.without(session);
        if swarm.members.is_empty() {
            files.remove(file);
        }
        drop(files);
        if changed {
            self.bump();
        }
    }

    /// Takes session `session` out of every swarm (the session ended).
    pub fn leave_all(&self, session: u64) {
        let mut files = self.files();
        let mut changed = false;
        files.retain(|_, swarm| {
            changed |= swarm.without(session);
            !swarm.members.is_empty()
        });
        drop(files);
        if changed {
            self.bump();
        }
    }

    /// The members that session `session` may exchange pieces of `file` with (see
    /// [`ring_neighbours`]), one entry per certificate.
    pub fn peers(&self, file: &FileKey, session: u64) -> Vec<PeerInfo> {
        let files = self.files();
        let Some(swarm) = files.get(file) else { return Vec::new() };
        let Some(me) = swarm.members.get(&session) else { return Vec::new() };
        swarm.named.get(&me.certificate).cloned().unwrap_or_default()
    }

    /// A piece of `file` never handed out before that the asking member does not hold; marked
    /// handed out. `None` when every piece has gone out.
    pub fn next_piece(&self, file: &FileKey, held: &Bits) -> Option<u32> {
        let mut files = self.files();
        let swarm = files.get_mut(file)?;
        let pieces = swarm.dispatched.len();
        while swarm.first_undispatched < pieces && swarm.dispatched.get(swarm.first_undispatched) {
            swarm.first_undispatched += 1;
        }
        let piece = (swarm.first_undispatched..pieces).find(|&p| !swarm.dispatched.get(p) && !held.get(p))?;
        swarm.dispatched.set(piece);
        Some(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(session: u64, certificate: u8, port: Option<u16>) -> SwarmMember {
        SwarmMember {
            session,
            user: format!("u{certificate}").parse().unwrap(),
            certificate: Fingerprint([certificate; 32]),
            address: port.map(|port| SocketAddr::from(([192, 0, 2, certificate], port))),
        }
    }

    #[test]
    fn members_see_each_other_and_pieces_go_out_once() {
        let swarms = Swarms::default();
        let file = [1; 32];
        let mut watch = swarms.watch();
        swarms.join(file, 3, member(1, 1, Some(7444)));
        swarms.join(file, 3, member(2, 2, None));
        assert!(watch.has_changed().unwrap());
        watch.borrow_and_update();
        assert_eq!(swarms.peers(&file, 1), [PeerInfo { certificate: Fingerprint([2; 32]), address: None }]);
        assert_eq!(swarms.peers(&file, 2)[0].address, Some("192.0.2.1:7444".parse().unwrap()));
        assert!(swarms.peers(&file, 9).is_empty(), "a session not in the swarm is told of nobody");

        let mut held = Bits::new(3);
        held.set(0);
        assert_eq!(swarms.next_piece(&file, &held), Some(1));
        assert_eq!(swarms.next_piece(&file, &Bits::new(3)), Some(0));
        assert_eq!(swarms.next_piece(&file, &Bits::new(3)), Some(2));
        assert_eq!(swarms.next_piece(&file, &Bits::new(3)), None);

        swarms.leave_all(2);
        assert!(watch.has_changed().unwrap());
        assert!(swarms.peers(&file, 1).is_empty());
        swarms.leave(&file, 1);
        assert_eq!(swarms.next_piece(&file, &Bits::new(3)), None, "an empty swarm is forgotten");
    }

    #[test]
    fn a_certificate_with_several_sessions_is_one_member_at_the_earliest_address_that_listens() {
        let swarms = Swarms::default();
        let file = [1; 32];
        swarms.join(file, 3, member(1, 1, None));
        swarms.join(file, 3, member(2, 1, Some(7444)));
        swarms.join(file, 3, member(3, 2, None));
        swarms.join(file, 3, member(4, 1, Some(7555)));
        let expected =
            [PeerInfo { certificate: Fingerprint([1; 32]), address: Some("192.0.2.1:7444".parse().unwrap()) }];
        assert_eq!(swarms.peers(&file, 3), expected);
        for _ in 0..8 {
            // The same address every time the lists are worked out again.
            swarms.join(file, 3, member(5, 3, None));
            assert_eq!(swarms.peers(&file, 3)[..1], expected);
            swarms.leave(&file, 5);
        }
        assert_eq!(swarms.peers(&file, 1), [PeerInfo { certificate: Fingerprint([2; 32]), address: None }]);
        swarms.leave(&file, 2);
        assert_eq!(swarms.peers(&file, 3)[0].address, Some("192.0.2.1:7555".parse().unwrap()));
        swarms.leave(&file, 4);
        assert_eq!(swarms.peers(&file, 3)[0].address, None, "no session of it listens now");
    }

    #[test]
    fn in_a_swarm_of_hundreds_each_member_is_told_of_a_few_who_are_told_of_it() {
        let swarms = Swarms::default();
        let file = [1; 32];
        let certificate = |session: u64| {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&session.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
            Fingerprint(bytes)
        };
        for session in 0..300 {
            let user = format!("u{session}").parse().unwrap();
            let address = Some(SocketAddr::from(([192, 0, 2, 1], 1000 + session as u16)));
            swarms.join(file, 3, SwarmMember { session, user, certificate: certificate(session), address });
        }
        let watch = swarms.watch();
        for session in 0..300 {
            let peers = swarms.peers(&file, session);
            assert!((8..=64).contains(&peers.len()), "session {session} is told of {} members", peers.len());
            for peer in &peers {
                let other = (0..300).find(|&s| certificate(s) == peer.certificate).expect("a member of the swarm");
                assert_eq!(peer.address, Some(SocketAddr::from(([192, 0, 2, 1], 1000 + other as u16))));
                assert!(
                    swarms.peers(&file, other).iter().any(|p| p.certificate == certificate(session)),
                    "{session} may take from {other}, but {other} may not serve {session}"
                );
            }
        }
        swarms.leave_all(17);
        assert!(watch.has_changed().unwrap(), "sessions are told when a member leaves");
        for session in (0..300).filter(|&s| s != 17) {
            assert!(swarms.peers(&file, session).iter().all(|p| p.certificate != certificate(17)));
        }
    }
}
