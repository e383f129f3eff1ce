//! Memory stays bounded by buffers, not by file size or member count: 1 GiB to 4 members keeps
//! the server's peak resident memory under 100 MiB (VmHWM from /proc).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::time::Duration;

use gshare_tests::{ClientHome, Listener, ServerProcess, TestNet, text};

const PASSWORD: &str = "correct horse battery staple";
const GIB: u64 = 1024 * 1024 * 1024;

#[test]
fn one_gib_to_four_members_keeps_the_server_under_100_mib() {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    let users = ["m1", "m2", "m3", "m4"];
    for user in users {
        server.add_user(user, "Developers", PASSWORD);
    }
    let outs: Vec<tempfile::TempDir> = users.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let mut listeners = Vec::new();
    for (user, out) in users.iter().zip(&outs) {
        let home = ClientHome::enrolled(&net, &server, user, PASSWORD);
        let mut listener = Listener::start(&home, &["Developers"], out.path());
        listener.wait_for("waiting for files", Duration::from_secs(60));
        listeners.push((home, listener));
    }
    // Enrollment checks passwords with argon2id (about 19 MiB each, released afterwards);
    // what must stay bounded is the transfer, so measure from here.
    eprintln!("server peak RSS during setup: {} MiB", server.peak_rss_kib() / 1024);
    server.reset_peak_rss();
    // A sparse file: quick to make; every member still hashes all of it.
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("disk.img");
    std::fs::File::create(&path).unwrap().set_len(GIB).unwrap();
    let output = server.send("Developers", &[&path], true);
    assert!(output.status.success(), "{}\n{}", text(&output.stderr), server.log());
    for ((_, listener), out) in listeners.iter_mut().zip(&outs) {
        listener.wait_for("received disk.img (1073741824 bytes, SHA-256 verified)", Duration::from_secs(600));
        assert_eq!(std::fs::metadata(out.path().join("disk.img")).unwrap().len(), GIB);
    }
    let peak = server.peak_rss_kib();
    eprintln!("server peak RSS: {} MiB", peak / 1024);
    assert!(peak < 100 * 1024, "server peak RSS {peak} KiB is not under 100 MiB");
}
