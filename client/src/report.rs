//! The text `gshare-client groups` prints. Everything shown came from a verified announcement,
//! and group names and addresses are validated newtypes, so nothing here can carry a terminal
//! escape sequence.

use std::fmt::Write;

use crate::discover::FoundServer;

/// One block per server: address, fingerprint, whether it is the pinned CA, and its groups.
pub fn servers(servers: &[FoundServer]) -> String {
    let mut out = String::new();
    for (index, server) in servers.iter().enumerate() {
        if index > 0 {
            out.push('\n');
        }
        // Writing to a String cannot fail.
        let _ = writeln!(out, "server {}", server.address);
        let _ = writeln!(out, "  ca:     {}", server.fingerprint);
        let status = if server.pinned {
            "verified: signed by the CA pinned at enrollment"
        } else {
            "unverified: no CA pinned yet; compare the fingerprint with the one your operator published"
        };
        let _ = writeln!(out, "  status: {status}");
        if !server.is_complete() {
            let _ = writeln!(
                out,
                "  note:   only {} of {} parts of the group list arrived; run again for the rest",
                server.parts_received.len(),
                server.parts
            );
        }
        let _ = writeln!(out, "  groups:");
        for group in server.groups() {
            let _ = writeln!(out, "    {group}");
        }
    }
    out
}
