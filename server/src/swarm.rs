//! The server's side of swarm delivery: which member sessions take part in which file's
//! swarm, and which pieces of it have left the server.
//!
//! A member session joins a file's swarm when it starts taking the file in pieces, and stays
//! in it (passing pieces on to the others) until the session ends. The server names, to each
//! member of a swarm, every other member of it: those are the members it may take pieces from
//! and give pieces to, and nobody else. The list changes as sessions come and go (a removed or
//! revoked member's sessions end at once), and every session in the swarm is told.
//!
//! "A new piece" requests are answered from [`Swarms::next_piece`]: each piece is handed out
//! once, to whichever member asks first, so the server's link carries the file about once
//! however many members there are. When the last member of a swarm leaves, its record goes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::sync::watch;

use gshare_proto::frame::{FileKey, PeerInfo};
use gshare_proto::swarm::Bits;
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
    members: Vec<SwarmMember>,
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
            members: Vec::new(),
        });
        if !swarm.members.iter().any(|m| m.session == member.session) {
            swarm.members.push(member);
            drop(files);
            self.bump();
        }
    }

    /// Takes session `session` out of the swarm of `file`.
    pub fn leave(&self, file: &FileKey, session: u64) {
        let mut files = self.files();
        let Some(swarm) = files.get_mut(file) else { return };
        let before = swarm.members.len();
        swarm.members.retain(|m| m.session != session);
        let changed = swarm.members.len() != before;
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
            let before = swarm.members.len();
            swarm.members.retain(|m| m.session != session);
            changed |= swarm.members.len() != before;
            !swarm.members.is_empty()
        });
        drop(files);
        if changed {
            self.bump();
        }
    }

    /// The members that session `session` may exchange pieces of `file` with: everyone else in
    /// the swarm, one entry per certificate.
    pub fn peers(&self, file: &FileKey, session: u64) -> Vec<PeerInfo> {
        let files = self.files();
        let Some(swarm) = files.get(file) else { return Vec::new() };
        let Some(me) = swarm.members.iter().find(|m| m.session == session) else { return Vec::new() };
        let mut peers: Vec<PeerInfo> = Vec::new();
        for member in swarm.members.iter().filter(|m| m.certificate != me.certificate) {
            match peers.iter_mut().find(|p| p.certificate == member.certificate) {
                // A certificate with several sessions: the one that listens.
                Some(known) => known.address = known.address.or(member.address),
                None => peers.push(PeerInfo { certificate: member.certificate, address: member.address }),
            }
        }
        peers
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
}
