//! Rough edges a new user hit, each named after what broke: a listener started on an out
//! directory it cannot use, and two listeners on one home.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::process::Command;
use std::time::Duration;

use gshare_tests::{ClientHome, Listener, ServerProcess, TestNet, text};

const PASSWORD: &str = "correct horse battery staple";
const LONG: Duration = Duration::from_secs(60);

fn enrolled_member() -> (TestNet, ServerProcess, ClientHome) {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    server.add_user("alice", "Developers", PASSWORD);
    let home = ClientHome::enrolled(&net, &server, "alice", PASSWORD);
    (net, server, home)
}

/// Runs `listen --out OUT` and expects it to exit at once, non-zero, with one line.
fn listen_refused(home: &ClientHome, out: &std::path::Path) -> String {
    let mut listener = Listener::start(home, &["Developers"], out);
    assert!(!listener.wait_exit(LONG).success(), "{}", listener.output());
    let said = listener.output();
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    said
}

#[test]
fn listen_out_on_a_file_or_a_missing_directory_says_so_instead_of_starting() {
    let (_net, _server, home) = enrolled_member();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"x").unwrap();
    let said = listen_refused(&home, &file);
    assert!(said.contains(&format!("{}: is not a directory", file.display())), "{said}");
    let missing = dir.path().join("nowhere");
    let said = listen_refused(&home, &missing);
    assert!(said.contains(&format!("{}: does not exist; create it first", missing.display())), "{said}");
    assert!(!missing.exists(), "a missing --out was created");
}

#[test]
fn listen_out_on_a_directory_it_cannot_write_exits_naming_it() {
    let (_net, _server, home) = enrolled_member();
    let dir = tempfile::tempdir().unwrap();
    // Root writes through permission bits, so a read-only filesystem stands in where it can.
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"]).arg(dir.path()).status();
    let read_only = mounted.is_ok_and(|status| status.success());
    if !read_only {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let said = listen_refused(&home, dir.path());
    if read_only {
        let _ = Command::new("umount").arg(dir.path()).status();
    }
    assert!(said.contains(&format!("{}: cannot write in it", dir.path().display())), "{said}");
}

#[test]
fn a_second_listen_on_the_same_home_says_who_holds_it_and_exits() {
    let (_net, _server, home) = enrolled_member();
    let (first_out, second_out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut first = Listener::start(&home, &["Developers"], first_out.path());
    first.wait_for("waiting for files", LONG);
    let said = listen_refused(&home, second_out.path());
    assert!(said.contains("another `gshare-client listen` (process "), "{said}");
    assert!(said.contains(&home.path().display().to_string()), "{said}");
    // Once the first is gone, the home is free again.
    first.kill();
    let mut again = Listener::start(&home, &["Developers"], second_out.path());
    again.wait_for("waiting for files", LONG);
    assert!(!text(again.output().as_bytes()).contains("error"), "{}", again.output());
}

#[test]
fn enroll_with_a_fingerprint_no_answering_server_has_names_the_ca_that_did_answer() {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    server.add_user("alice", "Developers", PASSWORD);
    let home = ClientHome::new(&net);
    let wrong = format!("SHA256:{}", "ab".repeat(32));
    let output = home.run_with_stdin(
        &["enroll", "--user", "alice", "--ca-fingerprint", &wrong, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(!output.status.success());
    let said = text(&output.stderr);
    assert_eq!(said.trim().lines().count(), 1, "one sentence, no log records: {said}");
    let actual = server.fingerprint();
    assert!(said.contains(&format!("announces the CA {actual}, not the expected")), "{said}");
    assert!(said.contains("nothing was sent"), "{said}");
    assert!(!home.path().join("client.crt").exists());
}

#[test]
fn ctrl_c_during_send_wait_while_the_server_spools_loses_nothing_of_the_batch() {
    let (_net, server, home) = enrolled_member();
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&home, &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);
    let source = tempfile::tempdir().unwrap();
    let first = gshare_tests::random_file(source.path(), "first.iso", 200 * 1024 * 1024, 31);
    let second = gshare_tests::random_file(source.path(), "second.iso", 200 * 1024 * 1024, 32);
    let send = server.send_command("Developers", &[&first, &second], true).spawn().unwrap();
    let spool = server.state_dir().join("spool");
    let spooling = || {
        std::fs::read_dir(&spool)
            .is_ok_and(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with(".ingest-")))
    };
    assert!(gshare_tests::wait_until(LONG, spooling), "the server never started spooling");
    let interrupted = Command::new("kill").args(["-INT", &send.id().to_string()]).status().unwrap();
    assert!(interrupted.success());
    let output = send.wait_with_output().unwrap();
    assert!(!output.status.success());
    let said = text(&output.stderr);
    assert!(said.contains("interrupted; the server goes on with the request it accepted"), "{said}");

    // Both files arrive, as if send had waited.
    listener.wait_for("received first.iso", LONG);
    listener.wait_for("received second.iso", LONG);
    assert!(std::fs::read(out.path().join("second.iso")).unwrap() == std::fs::read(&second).unwrap());
}

#[test]
fn send_names_files_by_the_number_status_shows_and_pending_names_each_member_once() {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    server.add_user("alice", "Developers", PASSWORD);
    server.add_user("bob", "Developers", PASSWORD);
    let alice = ClientHome::enrolled(&net, &server, "alice", PASSWORD);
    assert!(alice.run(&["join", "--group", "Developers"]).status.success());
    let bob = ClientHome::enrolled(&net, &server, "bob", PASSWORD);
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&bob, &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);

    let source = tempfile::tempdir().unwrap();
    let a = gshare_tests::random_file(source.path(), "a.txt", 1000, 41);
    let b = gshare_tests::random_file(source.path(), "b.txt", 1000, 42);
    let output = server.send("Developers", &[&a, &b], true);
    let said = text(&output.stdout);
    assert!(output.status.success(), "{said}\n{}", text(&output.stderr));
    assert!(said.contains("file #1 a.txt: 1000 bytes") && said.contains("file #2 b.txt: 1000 bytes"), "{said}");
    assert!(said.contains("to 2 member(s): ") && said.contains("`status --file 2` follows it"), "{said}");
    let pending: Vec<&str> = said.lines().filter(|line| line.starts_with("pending")).collect();
    assert_eq!(pending.len(), 1, "{said}");
    assert_eq!(pending[0].matches("alice").count(), 1, "{said}");

    let one = text(&server.command(&["status", "--file", "2"], "").stdout);
    assert!(one.contains("#2 b.txt") && !one.contains("a.txt"), "{one}");
    assert!(one.contains("bob") && one.contains("connected now"), "{one}");
    let missing = server.command(&["status", "--file", "9"], "");
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("no file #9"), "{}", text(&missing.stderr));
}

#[test]
fn cancel_stops_a_transfer_and_members_not_yet_served_never_get_the_file() {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    server.add_user("alice", "Developers", PASSWORD);
    server.add_user("bob", "Developers", PASSWORD);
    let alice = ClientHome::enrolled(&net, &server, "alice", PASSWORD);
    let bob = ClientHome::enrolled(&net, &server, "bob", PASSWORD);
    assert!(bob.run(&["join", "--group", "Developers"]).status.success());
    let alice_out = tempfile::tempdir().unwrap();
    let mut on_alice = Listener::start(&alice, &["Developers"], alice_out.path());
    on_alice.wait_for("waiting for files", LONG);

    let source = tempfile::tempdir().unwrap();
    let big = gshare_tests::random_file(source.path(), "big.iso", 512 * 1024 * 1024, 51);
    assert!(server.send("Developers", &[&big], false).status.success());
    let started = || {
        std::fs::read_dir(alice_out.path())
            .is_ok_and(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".part")))
    };
    assert!(gshare_tests::wait_until(LONG, started), "the transfer never started");
    let cancelled = server.command(&["cancel", "1"], "");
    assert!(cancelled.status.success(), "{}", text(&cancelled.stderr));
    assert!(text(&cancelled.stdout).contains("cancelled file #1 for 2 member(s)"), "{}", text(&cancelled.stdout));
    on_alice.wait_for("withdrawn by the server (cancelled by the operator); nothing kept", LONG);
    assert!(gshare_tests::wait_until(LONG, || std::fs::read_dir(alice_out.path()).unwrap().next().is_none()));
    let spool = server.state_dir().join("spool");
    assert!(gshare_tests::wait_until(LONG, || std::fs::read_dir(&spool).unwrap().next().is_none()), "spool kept");
    let status = text(&server.command(&["status", "--file", "1"], "").stdout);
    assert_eq!(status.matches("cancelled by the operator").count(), 2, "{status}");

    // bob was offline: he gets what comes after, never the cancelled file.
    let bob_out = tempfile::tempdir().unwrap();
    let mut on_bob = Listener::start(&bob, &["Developers"], bob_out.path());
    on_bob.wait_for("waiting for files", LONG);
    let small = gshare_tests::random_file(source.path(), "after.txt", 100, 52);
    assert!(server.send("Developers", &[&small], false).status.success());
    on_bob.wait_for("received after.txt", LONG);
    assert!(!bob_out.path().join("big.iso").exists());
    assert!(server.command(&["cancel", "9"], "").status.code() == Some(1));
}

/// An executable script at `dir/name` with `body` (a program like any other: the hook runs it
/// without a shell; the kernel reads its first line).
/// `listen --group Developers --out OUT --exec HOOK`, its output collected (info records
/// included), once it is waiting for files.
fn listen_with_hook(home: &ClientHome, out: &std::path::Path, hook: &std::path::Path) -> Listener {
    let mut command = home.command();
    command.args(["listen", "--group", "Developers", "--out"]).arg(out).arg("--exec").arg(hook);
    command.env("RUST_LOG", "info").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let output = gshare_tests::OutputLines::collect(vec![
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ]);
    let mut listener = Listener::from_parts(child, output);
    listener.wait_for("waiting for files", LONG);
    listener
}

fn script(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_hook_runs_after_each_verified_file_with_its_details_and_never_holds_up_receiving() {
    let (_net, server, home) = enrolled_member();
    let tools = tempfile::tempdir().unwrap();
    let log = tools.path().join("hook.log");
    let record = format!(
        "if [ \"$GSHARE_NAME\" = slow.txt ]; then sleep 30; fi\n\
         echo \"$1|$GSHARE_FILE|$GSHARE_NAME|$GSHARE_GROUP|$GSHARE_SIZE|$GSHARE_SHA256\" >> {}\n\
         [ \"$GSHARE_NAME\" != broken.txt ]",
        log.display()
    );
    let hook = script(tools.path(), "on-receive", &record);
    let out = tempfile::tempdir().unwrap();
    let mut listener = listen_with_hook(&home, out.path(), &hook);

    let source = tempfile::tempdir().unwrap();
    // The first hook never ends; the files after it arrive all the same.
    for (name, seed) in [("slow.txt", 61), ("report.csv", 62), ("broken.txt", 63)] {
        let file = gshare_tests::random_file(source.path(), name, 5000, seed);
        assert!(server.send("Developers", &[&file], false).status.success());
        listener.wait_for(&format!("received {name}"), LONG);
    }
    listener.wait_for(&format!("the hook {} failed for", hook.display()), LONG);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(gshare_tests::wait_until(LONG, || logged().contains("report.csv")), "{}", logged());
    let stored = out.path().join("report.csv");
    let sha256: String = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(&stored).unwrap())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let line = logged().lines().find(|l| l.contains("report.csv")).unwrap().to_owned();
    assert_eq!(line, format!("{0}|{0}|report.csv|Developers|5000|{sha256}", stored.display()));
    assert!(!logged().contains("slow.txt"), "the slow hook finished?");
}

#[test]
fn a_hook_that_does_not_exist_is_refused_at_start() {
    let (_net, _server, home) = enrolled_member();
    let out = tempfile::tempdir().unwrap();
    let output = home.run(&[
        "listen",
        "--group",
        "Developers",
        "--out",
        out.path().to_str().unwrap(),
        "--exec",
        "/nonexistent/hook",
    ]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("/nonexistent/hook: no such program"), "{}", text(&output.stderr));
}

#[test]
fn the_same_file_sent_twice_is_kept_once_and_a_different_one_of_that_name_gets_a_number() {
    let (_net, server, home) = enrolled_member();
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&home, &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);
    let source = tempfile::tempdir().unwrap();
    let file = gshare_tests::random_file(source.path(), "plan.txt", 70_000, 71);
    assert!(server.send("Developers", &[&file], false).status.success());
    listener.wait_for("received plan.txt", LONG);
    assert!(server.send("Developers", &[&file], false).status.success());
    listener.wait_for("the same bytes are already here as plan.txt; no second copy", LONG);
    let other_dir = tempfile::tempdir().unwrap();
    let other = gshare_tests::random_file(other_dir.path(), "plan.txt", 70_000, 72);
    assert!(server.send("Developers", &[&other], false).status.success());
    listener.wait_for("saved this one as plan (1).txt", LONG);
    let mut names: Vec<String> =
        std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["plan (1).txt", "plan.txt"]);
}

#[test]
fn a_member_removed_mid_file_keeps_no_partial_file_once_it_is_back() {
    // Found by the soak: the removal dropped the delivery, so nothing ever finished or cleaned
    // up the temporary file.
    let (net, mut server, home) = enrolled_member();
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&home, &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);
    let source = tempfile::tempdir().unwrap();
    let big = gshare_tests::random_file(source.path(), "big.iso", 512 * 1024 * 1024, 81);
    assert!(server.send("Developers", &[&big], false).status.success());
    let partial = || {
        std::fs::read_dir(out.path())
            .is_ok_and(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".part")))
    };
    assert!(gshare_tests::wait_until(LONG, partial), "the transfer never started");
    assert!(server.command(&["user", "remove", "alice"], "").status.success());
    server.wait_for_log("user store reloaded", LONG);
    assert!(!listener.wait_exit(LONG).success());
    assert!(partial(), "the partial file went with the listener; nothing left to test");

    server.add_user("alice", "Developers", PASSWORD);
    let again = home.enroll(&server, "alice", PASSWORD);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let _ = net;
    let mut listener = Listener::start(&home, &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);
    assert!(gshare_tests::wait_until(LONG, || !partial()), "the dropped delivery's partial file stayed");
    // Its note in the journal goes last (after the file), so status stops showing it.
    let settled = || !text(&home.run(&["status"]).stdout).contains("in progress");
    assert!(gshare_tests::wait_until(LONG, settled), "{}", text(&home.run(&["status"]).stdout));
}

#[test]
fn progress_of_a_file_in_pieces_reaches_status_and_send_wait_prints_lines_not_floods() {
    let (_net, server, home) = enrolled_member();
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&home, &["Developers"], out.path());
    listener.wait_for("connected to the server at", LONG);
    let source = tempfile::tempdir().unwrap();
    let big = gshare_tests::random_file(source.path(), "big.iso", 768 * 1024 * 1024, 101);
    let send = server.send_command("Developers", &[&big], true).spawn().unwrap();
    // While it runs, status shows how far the member got: it reports the pieces it holds.
    let partway = || {
        let status: serde_json::Value =
            serde_json::from_slice(&server.command(&["status", "--json"], "").stdout).unwrap_or_default();
        let delivery = &status["files"][0]["deliveries"][0];
        delivery["state"] == "pending" && delivery["bytes_done"].as_u64().unwrap_or(0) > 0
    };
    assert!(gshare_tests::wait_until(LONG, partway), "no progress seen while the file arrived");
    let output = send.wait_with_output().unwrap();
    let said = text(&output.stdout);
    assert!(output.status.success(), "{said}\n{}", text(&output.stderr));
    assert!(said.contains("alice: delivered big.iso"), "{said}");
    // A line every few seconds at most, never one per chunk.
    let lines = said.lines().filter(|line| line.contains("progress:")).count();
    assert!(lines <= 12, "{said}");
}

#[test]
fn a_directory_tree_arrives_under_its_relative_paths_and_its_links_are_skipped() {
    let (_net, server, home) = enrolled_member();
    let out = tempfile::tempdir().unwrap();
    let tools = tempfile::tempdir().unwrap();
    let log = tools.path().join("hook.log");
    let hook = script(tools.path(), "on-receive", &format!("echo \"$GSHARE_NAME|$1\" >> {}", log.display()));
    let mut listener = listen_with_hook(&home, out.path(), &hook);

    let source = tempfile::tempdir().unwrap();
    let tree = source.path().join("project");
    std::fs::create_dir_all(tree.join("src/util")).unwrap();
    std::fs::create_dir_all(tree.join("empty")).unwrap();
    let files = [("README.md", 1_000, 81), ("src/main.rs", 70_000, 82), ("src/util/strings.rs", 3_000_000, 83)];
    for (path, size, seed) in files {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        gshare_tests::random_file(&tree.join(dir), name, size, seed);
    }
    let secret = gshare_tests::random_file(source.path(), "secret.key", 100, 84);
    std::os::unix::fs::symlink(&secret, tree.join("src/key")).unwrap();
    std::os::unix::fs::symlink(source.path(), tree.join("up")).unwrap();

    let sent = server.send("Developers", &[&tree], true);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let said = text(&sent.stderr);
    assert!(said.contains("src/key: a symbolic link; skipped (links are never followed)"), "{said}");
    assert!(said.contains("up: a symbolic link; skipped"), "{said}");
    for (path, _, _) in files {
        assert!(text(&sent.stdout).contains(&format!("project/{path}: ")), "{}", text(&sent.stdout));
    }
    for (path, _, _) in files {
        listener.wait_for(&format!("received project/{path} "), LONG);
        let arrived = std::fs::read(out.path().join("project").join(path)).unwrap();
        assert!(arrived == std::fs::read(tree.join(path)).unwrap(), "{path} differs");
    }
    // Only the files: no link, no empty directory, nothing of what the links pointed at.
    let mut received: Vec<String> = walk(out.path());
    received.sort();
    assert_eq!(received, ["project/README.md", "project/src/main.rs", "project/src/util/strings.rs"]);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(gshare_tests::wait_until(LONG, || logged().lines().count() == 3), "{}", logged());
    let expected = format!("project/src/main.rs|{}", out.path().join("project/src/main.rs").display());
    assert!(logged().lines().any(|line| line == expected), "{}", logged());
}

/// Every regular file under `dir`, as paths relative to it, never following a link.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let name = entry.file_name().into_string().unwrap();
        if kind.is_dir() {
            found.extend(walk(&entry.path()).into_iter().map(|inner| format!("{name}/{inner}")));
        } else {
            assert!(kind.is_file(), "{name} is neither a file nor a directory");
            found.push(name);
        }
    }
    found
}
