//! File delivery end to end: what is sent reaches exactly the members, verified, across
//! offline periods, interrupted transfers and server crashes, and never anyone else.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::path::Path;
use std::time::Duration;

use gshare_tests::{ClientHome, Listener, ServerProcess, TestNet, random_file, text, wait_until};

const PASSWORD: &str = "correct horse battery staple";
const LONG: Duration = Duration::from_secs(60);

/// A server with `users` (name, groups), each enrolled, in the order given.
fn server_with(users: &[(&str, &str)]) -> (TestNet, ServerProcess, Vec<ClientHome>) {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    for (user, groups) in users {
        server.add_user(user, groups, PASSWORD);
    }
    let homes = users.iter().map(|(user, _)| ClientHome::enrolled(&net, &server, user, PASSWORD)).collect();
    (net, server, homes)
}

fn join(home: &ClientHome, group: &str) {
    let output = home.run(&["join", "--group", group]);
    assert!(output.status.success(), "join: {}", text(&output.stderr));
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Bytes written so far into temporary files: what is allocated on disk, since a file taken in
/// pieces is as long as the whole file from the start, with holes where pieces are missing.
fn part_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
                .map(|e| e.metadata().map_or(0, |m| (m.blocks() * 512).min(m.len())))
                .sum()
        })
        .unwrap_or(0)
}

fn status(server: &ServerProcess) -> serde_json::Value {
    let output = server.command(&["status", "--json"], "");
    assert!(output.status.success(), "{}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The state of every delivery, as `user:state`.
fn delivery_states(server: &ServerProcess) -> Vec<String> {
    let status = status(server);
    let mut states = Vec::new();
    for file in status["files"].as_array().unwrap() {
        for delivery in file["deliveries"].as_array().unwrap() {
            states.push(format!("{}:{}", delivery["user"].as_str().unwrap(), delivery["state"].as_str().unwrap()));
        }
    }
    states
}

#[test]
fn one_file_reaches_three_members_and_nobody_else() {
    let users = [
        ("alice", "Developers"),
        ("bob", "Developers"),
        ("carol", "Developers"),
        ("dave", "Designers"),
        ("eve", "Designers"),
    ];
    let (_net, server, homes) = server_with(&users);
    let outs: Vec<tempfile::TempDir> = homes.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let mut listeners = Vec::new();
    for (i, (_, group)) in users.iter().enumerate().take(4) {
        let mut listener = Listener::start(&homes[i], &[group], outs[i].path());
        listener.wait_for("waiting for files", LONG);
        listeners.push(listener);
    }
    // eve holds a valid certificate but may not join Developers.
    let mut eve = Listener::start(&homes[4], &["Developers"], outs[4].path());
    assert!(!eve.wait_exit(LONG).success());
    assert!(eve.output().contains("server refused join: user \"eve\" may not join \"Developers\""), "{}", eve.output());

    let source = tempfile::tempdir().unwrap();
    let file = random_file(source.path(), "report.bin", 3 * 1024 * 1024 + 17, 1);
    let output = server.send("Developers", &[&file], true);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}\n{}", text(&output.stderr), server.log());
    for user in ["alice", "bob", "carol"] {
        assert!(stdout.contains(&format!("{user}: delivered report.bin")), "{stdout}");
    }
    let sent = std::fs::read(&file).unwrap();
    for out in &outs[..3] {
        assert_eq!(files_in(out.path()), ["report.bin"]);
        assert!(std::fs::read(out.path().join("report.bin")).unwrap() == sent, "bytes differ");
    }
    assert!(files_in(outs[3].path()).is_empty(), "a member of another group received it");
    assert!(files_in(outs[4].path()).is_empty(), "a non-member received it");
    assert!(std::fs::read_dir(server.state_dir().join("spool")).unwrap().next().is_none(), "spool entry released");
}

#[test]
fn an_offline_member_receives_its_files_when_it_connects_even_after_a_server_restart() {
    let (_net, mut server, homes) = server_with(&[("alice", "Developers")]);
    join(&homes[0], "Developers");
    let source = tempfile::tempdir().unwrap();
    let first = random_file(source.path(), "first.txt", 1000, 2);
    let second = random_file(source.path(), "second.txt", 0, 3);
    let output = server.send("Developers", &[&first, &second], false);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(delivery_states(&server), ["alice:pending", "alice:pending"]);

    server.restart();
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&homes[0], &["Developers"], out.path());
    listener.wait_for("received first.txt", LONG);
    listener.wait_for("received second.txt", LONG);
    assert_eq!(std::fs::read(out.path().join("first.txt")).unwrap(), std::fs::read(&first).unwrap());
    assert_eq!(std::fs::read(out.path().join("second.txt")).unwrap(), b"");
    assert!(wait_until(LONG, || delivery_states(&server) == ["alice:delivered", "alice:delivered"]));
}

/// The only spool entry, as a path.
fn spool_entry(server: &ServerProcess) -> std::path::PathBuf {
    let entries: Vec<_> = std::fs::read_dir(server.state_dir().join("spool"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.to_string_lossy().ends_with(".ends"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].clone()
}

fn spool_is_empty(server: &ServerProcess) -> bool {
    std::fs::read_dir(server.state_dir().join("spool")).unwrap().next().is_none()
}

/// The reason `status` gives for the first file's first delivery.
fn first_reason(server: &ServerProcess) -> String {
    status(server)["files"][0]["deliveries"][0]["reason"].as_str().unwrap_or_default().to_owned()
}

/// Members take a file while its spool copy is still on its way to the disk; `send` says it
/// is recorded only once the copy is there. If the machine went down in between, the next
/// start checks the copy: one that did not survive fails its deliveries with a sentence and is
/// never sent.
#[test]
fn a_spool_copy_lost_before_it_reached_the_disk_fails_its_deliveries_at_the_next_start() {
    let (_net, mut server, homes) = server_with(&[("alice", "Developers")]);
    join(&homes[0], "Developers");
    let source = tempfile::tempdir().unwrap();
    let file = random_file(source.path(), "ledger.csv", 100_000, 4);
    assert!(server.send("Developers", &[&file], false).status.success());
    let spool = spool_entry(&server);
    assert!(!spool.with_extension("unsynced").exists(), "send said recorded before the copy was durable");
    // What a power cut in that window leaves behind: the mark, and bytes never written.
    server.kill();
    std::fs::write(spool.with_extension("unsynced"), b"").unwrap();
    std::fs::write(&spool, vec![0u8; 4096]).unwrap();
    server.start_again();

    assert_eq!(delivery_states(&server), ["alice:failed"]);
    assert!(first_reason(&server).contains("did not survive; send the file again"), "{}", first_reason(&server));
    assert!(spool_is_empty(&server), "the lost copy was kept");
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&homes[0], &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);
    assert!(files_in(out.path()).is_empty(), "{:?}", files_in(out.path()));
}

#[test]
fn a_spool_entry_changed_on_disk_is_found_at_the_first_mismatch_and_never_sent_again() {
    let (_net, server, homes) = server_with(&[("alice", "Developers")]);
    join(&homes[0], "Developers");
    let source = tempfile::tempdir().unwrap();
    let file = random_file(source.path(), "ledger.csv", 100_000, 4);
    assert!(server.send("Developers", &[&file], false).status.success());
    // Flip one bit of the spooled copy behind the server's back.
    let spool = spool_entry(&server);
    let mut bytes = std::fs::read(&spool).unwrap();
    bytes[50_000] ^= 0x01;
    std::fs::write(&spool, bytes).unwrap();

    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&homes[0], &["Developers"], out.path());
    listener.wait_for("SHA-256 mismatch", LONG);
    assert!(wait_until(LONG, || delivery_states(&server) == ["alice:failed"]), "{}", server.log());
    assert!(first_reason(&server).contains("spool entry corrupt"), "{}", first_reason(&server));
    let status_text = text(&server.command(&["status"], "").stdout);
    assert!(status_text.contains("spool entry corrupt"), "{status_text}");
    assert!(wait_until(LONG, || spool_is_empty(&server)), "the corrupt entry was kept");
    assert_eq!(
        listener.output().matches("SHA-256 mismatch").count(),
        1,
        "offered again after the check:\n{}",
        listener.output()
    );
    assert!(files_in(out.path()).is_empty(), "{:?}", files_in(out.path()));

    // The operator's way out: send the file again, from its source.
    assert!(server.send("Developers", &[&file], false).status.success());
    listener.wait_for("received ledger.csv", LONG);
    assert_eq!(std::fs::read(out.path().join("ledger.csv")).unwrap(), std::fs::read(&file).unwrap());
}

#[test]
fn a_spool_entry_cut_short_on_disk_fails_its_deliveries_and_the_member_keeps_nothing() {
    let (_net, server, homes) = server_with(&[("alice", "Developers")]);
    join(&homes[0], "Developers");
    let source = tempfile::tempdir().unwrap();
    let file = random_file(source.path(), "backup.tar", 3 * 1024 * 1024, 8);
    assert!(server.send("Developers", &[&file], false).status.success());
    let spool = spool_entry(&server);
    std::fs::OpenOptions::new().write(true).open(&spool).unwrap().set_len(1024 * 1024 + 5).unwrap();

    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&homes[0], &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);
    assert!(wait_until(LONG, || delivery_states(&server) == ["alice:failed"]), "{}", server.log());
    assert!(first_reason(&server).contains("spool entry corrupt"), "{}", first_reason(&server));
    assert!(wait_until(LONG, || spool_is_empty(&server)), "the corrupt entry was kept");
    assert!(wait_until(LONG, || files_in(out.path()).is_empty()), "{:?}", files_in(out.path()));
    assert!(!listener.output().contains("received backup.tar"), "{}", listener.output());
}

#[test]
fn a_killed_listener_resumes_where_it_stopped() {
    let (_net, server, homes) = server_with(&[("alice", "Developers")]);
    join(&homes[0], "Developers");
    let source = tempfile::tempdir().unwrap();
    let size = 256 * 1024 * 1024;
    let file = random_file(source.path(), "image.iso", size, 5);
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&homes[0], &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);
    // In the background: the file is offered before `send` returns, and may be received whole
    // by the time it does.
    let mut sending = server.send_command("Developers", &[&file], false).spawn().unwrap();
    assert!(wait_until(LONG, || part_size(out.path()) >= 16 * 1024 * 1024), "the transfer never started");
    listener.kill();
    assert!(sending.wait().unwrap().success(), "send failed");
    let held = part_size(out.path());
    assert!(held < size as u64, "the transfer finished before the kill");

    let mut listener = Listener::start(&homes[0], &["Developers"], out.path());
    listener.wait_for("received image.iso", LONG);
    assert!(std::fs::read(out.path().join("image.iso")).unwrap() == std::fs::read(&file).unwrap(), "bytes differ");
    // The second attempt started from the pieces the member held, and fetched fewer bytes
    // than the file.
    let log = server.log();
    let field = |line: &str, name: &str| -> u64 {
        line.split(&format!("{name}=")).nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
    };
    let sending: Vec<&str> = log.lines().filter(|l| l.contains("sending in pieces")).collect();
    let resumed_with = field(sending.last().unwrap(), "held");
    assert!(resumed_with > 0, "the second session started from nothing:\n{log}");
    let totals: Vec<&str> = log.lines().filter(|l| l.contains("swarm totals")).collect();
    let carried = field(totals.last().unwrap(), "from_server") + field(totals.last().unwrap(), "from_peers");
    assert!(carried < size as u64, "the second session carried {carried} bytes, the whole file is {size}");
    assert_eq!(files_in(out.path()), ["image.iso"]);
}

#[test]
fn a_server_crash_right_after_recording_loses_nothing() {
    let (_net, mut server, homes) = server_with(&[("alice", "Developers")]);
    join(&homes[0], "Developers");
    let source = tempfile::tempdir().unwrap();
    let file = random_file(source.path(), "minutes.txt", 4096, 6);
    assert!(server.send("Developers", &[&file], false).status.success());
    server.kill();
    server.start_again();
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&homes[0], &["Developers"], out.path());
    listener.wait_for("received minutes.txt", LONG);
    assert_eq!(std::fs::read(out.path().join("minutes.txt")).unwrap(), std::fs::read(&file).unwrap());
    assert_eq!(files_in(out.path()), ["minutes.txt"]);
}

#[test]
fn a_server_crash_in_the_middle_of_a_transfer_delivers_every_file_once() {
    let (_net, mut server, homes) = server_with(&[("alice", "Developers")]);
    join(&homes[0], "Developers");
    let source = tempfile::tempdir().unwrap();
    let size = 256 * 1024 * 1024;
    let big = random_file(source.path(), "big.bin", size, 7);
    let small = random_file(source.path(), "small.bin", 10, 8);
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&homes[0], &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);
    // A file is offered before `send` returns (its spool copy goes to the disk meanwhile), so
    // `send` runs in the background: the crash comes while big.bin is received and small.bin
    // waits behind it, whether or not `send` has heard back by then.
    let mut sending = server.send_command("Developers", &[&big, &small], false).spawn().unwrap();
    server.wait_for_log("file recorded file=small.bin", LONG);
    assert!(wait_until(LONG, || part_size(out.path()) >= 16 * 1024 * 1024), "the transfer never started");
    server.kill();
    let _ = sending.wait();
    assert!(part_size(out.path()) < size as u64, "the transfer finished before the crash");
    server.start_again();
    listener.wait_for("received big.bin", LONG);
    listener.wait_for("received small.bin", LONG);
    assert!(std::fs::read(out.path().join("big.bin")).unwrap() == std::fs::read(&big).unwrap(), "bytes differ");
    assert_eq!(files_in(out.path()), ["big.bin", "small.bin"], "each file exactly once");
    assert!(wait_until(LONG, || delivery_states(&server) == ["alice:delivered", "alice:delivered"]));
}

#[test]
fn a_send_of_many_files_answers_for_each_in_order_and_delivers_them_all() {
    // More files than the server lets go to the disk at once: each is recorded and offered
    // as it is read, and `send` hears of each in the order given, once its copy is durable.
    let (_net, server, homes) = server_with(&[("alice", "Developers")]);
    join(&homes[0], "Developers");
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&homes[0], &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);
    let source = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("part-{i:02}.bin")).collect();
    let files: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| random_file(source.path(), name, 50_000 + i * 1_000, 40 + i as u64))
        .collect();
    let paths: Vec<&Path> = files.iter().map(|file| file.as_path()).collect();
    let sent = server.send("Developers", &paths, false);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let said = text(&sent.stdout);
    let answered: Vec<&str> =
        said.lines().filter_map(|line| line.split_whitespace().nth(2)).map(|name| name.trim_end_matches(':')).collect();
    assert_eq!(answered, names, "{said}");
    assert!(wait_until(LONG, || files_in(out.path()) == names), "{:?}", files_in(out.path()));
    for (name, file) in names.iter().zip(&files) {
        assert!(std::fs::read(out.path().join(name)).unwrap() == std::fs::read(file).unwrap(), "{name} differs");
    }
}

#[test]
fn removing_a_user_closes_their_session_and_drops_their_pending_deliveries() {
    let (_net, server, homes) = server_with(&[("alice", "Developers"), ("bob", "Developers")]);
    join(&homes[1], "Developers");
    let out = tempfile::tempdir().unwrap();
    let mut alice = Listener::start(&homes[0], &["Developers"], out.path());
    alice.wait_for("waiting for files", LONG);
    let source = tempfile::tempdir().unwrap();
    let file = random_file(source.path(), "notes.txt", 10, 9);
    assert!(server.send("Developers", &[&file], true).status.success());
    assert!(server.command(&["user", "remove", "bob"], "").status.success());
    assert!(delivery_states(&server).contains(&"bob:dropped".to_owned()), "{:?}", delivery_states(&server));

    assert!(server.command(&["user", "remove", "alice"], "").status.success());
    let status = alice.wait_exit(LONG);
    assert!(!status.success());
    assert!(alice.output().contains("access revoked"), "{}", alice.output());
}
