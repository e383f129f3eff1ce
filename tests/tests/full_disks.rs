//! Full disks, on filesystems made for the test (size-limited tmpfs mounts; root only, skipped
//! with a SKIPPED line elsewhere): a member's disk filling in the middle of a file, and a
//! server whose spool cannot hold what it is asked to send. And a listener whose own output
//! goes to a full disk (`/dev/full`, anywhere).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gshare_tests::{ClientHome, Listener, ServerProcess, TestNet, free_tcp_port, random_file, text, wait_until};

const PASSWORD: &str = "correct horse battery staple";
const LONG: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

/// A tmpfs of a fixed size mounted on a temporary directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts `size_mib` MiB, or says the test is skipped and returns `None` where mounting is
    /// not allowed.
    fn mount(test: &str, size_mib: u64) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        if !output.status.success() {
            eprintln!("SKIPPED {test}: cannot mount a tmpfs ({})", text(&output.stderr).trim());
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Grows the filesystem to `size_mib` MiB: space freed, without touching what is on it.
    fn grow(&self, size_mib: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size_mib}m"), "tmpfs"])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn status(server: &ServerProcess) -> serde_json::Value {
    let output = server.command(&["status", "--json"], "");
    assert!(output.status.success(), "{}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `(state, reason)` of the first file's first delivery.
fn first_delivery(server: &ServerProcess) -> (String, String) {
    let status = status(server);
    let delivery = &status["files"][0]["deliveries"][0];
    (
        delivery["state"].as_str().unwrap_or_default().to_owned(),
        delivery["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn a_member_whose_disk_fills_mid_file_says_no_space_and_gets_the_file_once_there_is_room() {
    let Some(disk) = SmallDisk::mount("a_member_whose_disk_fills_mid_file", 8) else { return };
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    server.add_user("alice", "Developers", PASSWORD);
    let home = ClientHome::enrolled(&net, &server, "alice", PASSWORD);
    let mut listener = Listener::start(&home, &["Developers"], disk.path());
    listener.wait_for("waiting for files", LONG);

    let source = tempfile::tempdir().unwrap();
    let file = random_file(source.path(), "dataset.bin", (12 * MIB) as usize, 21);
    let sent = server.send("Developers", &[&file], false);
    assert!(sent.status.success(), "{}", text(&sent.stderr));

    listener.wait_for("no space left on the member's disk", LONG);
    assert!(
        wait_until(LONG, || {
            let (state, reason) = first_delivery(&server);
            state == "pending" && reason.contains("no space")
        }),
        "{}",
        status(&server)
    );
    let shown = text(&server.command(&["status"], "").stdout);
    assert!(shown.contains("no space"), "{shown}");
    assert!(!names_in(disk.path()).contains(&"dataset.bin".to_owned()), "a partial file took the final name");
    assert_eq!(first_delivery(&server).0, "pending", "a full disk must not use up the delivery's attempts");

    // Two attempts that found the disk full: the member says so once, not at each.
    server.wait_for_log("member cannot store the file", LONG);
    server.wait_for_log("member cannot store the file", LONG);
    disk.grow(32);
    listener.wait_for("received dataset.bin", LONG);
    let said = listener.output();
    assert_eq!(said.matches("no space left on the member's disk").count(), 1, "said at every retry:\n{said}");
    assert!(said.contains("dataset.bin: there is room again"), "{said}");
    assert!(std::fs::read(disk.path().join("dataset.bin")).unwrap() == std::fs::read(&file).unwrap(), "bytes differ");
    assert_eq!(names_in(disk.path()), ["dataset.bin"], "a temporary file was left behind");
    assert!(wait_until(LONG, || first_delivery(&server).0 == "delivered"), "{}", status(&server));
}

#[test]
fn a_listener_whose_output_goes_to_a_full_disk_goes_on_receiving() {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    server.add_user("alice", "Developers", PASSWORD);
    let home = ClientHome::enrolled(&net, &server, "alice", PASSWORD);
    let out = tempfile::tempdir().unwrap();
    // Every write to /dev/full fails with "no space left on device".
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let mut listener = home
        .command()
        .args(["listen", "--group", "Developers", "--out"])
        .arg(out.path())
        .env("RUST_LOG", "info")
        .stdout(full())
        .stderr(full())
        .spawn()
        .unwrap();
    // `send --wait` waits for connected members only: connected first (its output, where it
    // would say so, goes to the full disk), so that the files are there when it returns.
    let connected = || text(&server.command(&["status"], "").stdout).contains("connected now");
    assert!(wait_until(LONG, connected), "the listener never connected");
    let source = tempfile::tempdir().unwrap();
    for (seed, name) in [(31, "first.bin"), (32, "second.bin")] {
        let file = random_file(source.path(), name, 300_000, seed);
        let sent = server.send("Developers", &[&file], true);
        assert!(sent.status.success(), "{}", text(&sent.stderr));
        assert_eq!(std::fs::read(out.path().join(name)).unwrap(), std::fs::read(&file).unwrap(), "bytes differ");
        assert!(listener.try_wait().unwrap().is_none(), "the listener stopped: {:?}", listener.try_wait());
    }
    let _ = listener.kill();
    let _ = listener.wait();
}

/// A server whose state directory (database and spool) is on `disk`.
fn server_on(disk: &SmallDisk, net: &TestNet) -> ServerProcess {
    let state: PathBuf = disk.path().join("state");
    let port = free_tcp_port();
    let config = gshare_tests::default_server_toml(net, port);
    let mut server =
        ServerProcess::start_with(net, &format!("state_dir = {:?}\n{config}", state.to_str().unwrap()), &[]);
    server.tls_address = Some(format!("127.0.0.1:{port}"));
    server
}

#[test]
fn a_send_the_spool_cannot_hold_is_refused_whole_and_records_nothing() {
    let Some(disk) = SmallDisk::mount("a_send_the_spool_cannot_hold", 64) else { return };
    let net = TestNet::loopback();
    let mut server = server_on(&disk, &net);
    server.add_user("alice", "Developers", PASSWORD);
    let home = ClientHome::enrolled(&net, &server, "alice", PASSWORD);
    let joined = home.run(&["join", "--group", "Developers"]);
    assert!(joined.status.success(), "{}", text(&joined.stderr));

    let source = tempfile::tempdir().unwrap();
    let huge = random_file(source.path(), "huge.iso", (80 * MIB) as usize, 22);
    let refused = server.send("Developers", &[&huge], false);
    let stderr = text(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("spool") && stderr.contains("bytes free") && stderr.contains("nothing was recorded"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    // Each fits alone, not both together: neither is recorded.
    let first = random_file(source.path(), "first.bin", (25 * MIB) as usize, 23);
    let second = random_file(source.path(), "second.bin", (25 * MIB) as usize, 24);
    let refused = server.send("Developers", &[&first, &second], false);
    assert!(!refused.status.success(), "{}", text(&refused.stdout));
    assert!(text(&refused.stderr).contains("nothing was recorded"), "{}", text(&refused.stderr));
    assert_eq!(status(&server)["files"].as_array().unwrap().len(), 0, "{}", status(&server));
    let spool: Vec<String> = names_in(&disk.path().join("state/spool"));
    assert!(spool.is_empty(), "{spool:?}");

    // What fits still goes, and the database took no harm.
    let small = random_file(source.path(), "small.txt", 4096, 25);
    let sent = server.send("Developers", &[&small], false);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let files = status(&server)["files"].as_array().unwrap().clone();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["name"], "small.txt");
    let integrity =
        Command::new("sqlite3").arg(disk.path().join("state/gshare.db")).arg("PRAGMA integrity_check").output();
    if let Ok(integrity) = integrity
        && integrity.status.success()
    {
        assert_eq!(text(&integrity.stdout).trim(), "ok");
    }
}
