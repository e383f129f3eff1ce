//! `gshare-server user add|passwd|remove|list`: edits keep the operator's comments, passwords
//! come only from a terminal or standard input, and mistakes are refused with a reason.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const PASSWORD: &str = "a long enough password";

/// A config directory with the example users.toml (all comments) and a minimal server.toml.
fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/users.toml");
    std::fs::copy(example, dir.path().join("users.toml")).unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "groups = [\"Developers\", \"Designers\"]\n").unwrap();
    (dir, config)
}

fn server(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gshare-server"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn ok(output: Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn refused(output: Output) -> String {
    assert!(!output.status.success());
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn add_passwd_list_and_remove_keep_the_comments() {
    let (dir, config) = setup();
    let users = dir.path().join("users.toml");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o640)).unwrap();
    let comments: Vec<String> =
        std::fs::read_to_string(&users).unwrap().lines().filter(|l| l.starts_with('#')).map(str::to_owned).collect();
    assert!(!comments.is_empty());
    let line = format!("{PASSWORD}\n");
    assert_eq!(
        ok(server(&config, &["user", "add", "alice", "--groups", "Developers,Designers", "--password-stdin"], &line))
            .trim(),
        "added user alice (groups: Developers, Designers)"
    );
    ok(server(&config, &["user", "add", "bob", "--groups", "Designers", "--password-stdin"], &line));
    let before = std::fs::read_to_string(&users).unwrap();
    ok(server(&config, &["user", "passwd", "alice", "--password-stdin"], "another long password\n"));
    let after = std::fs::read_to_string(&users).unwrap();
    assert_ne!(before, after, "the hash changed");
    assert!(!after.contains(PASSWORD) && !after.contains("another long password"), "only hashes are stored");
    assert_eq!(ok(server(&config, &["user", "list"], "")), "alice  Designers,Developers\nbob  Designers\n");
    ok(server(&config, &["user", "remove", "bob"], ""));
    assert_eq!(ok(server(&config, &["user", "list"], "")), "alice  Designers,Developers\n");
    let text = std::fs::read_to_string(&users).unwrap();
    for comment in &comments {
        assert!(text.contains(comment.as_str()), "lost {comment:?}:\n{text}");
    }
    let mode = std::fs::metadata(&users).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "an existing file keeps the mode its operator gave it");
}

#[test]
fn the_password_never_appears_in_the_process_arguments() {
    let (_dir, config) = setup();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gshare-server"))
        .arg("--config")
        .arg(&config)
        .args(["user", "add", "carol", "--groups", "Developers", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While it waits for the password, everyone on the machine can read its command line.
    // Wait for the exec to finish: until then /proc shows the forking parent's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let cmdline = loop {
        let raw = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains("user add carol") {
            break cmdline;
        }
        assert!(std::time::Instant::now() < deadline, "the process never showed its command line: {cmdline:?}");
        std::thread::yield_now();
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(!cmdline.contains(PASSWORD));
    // And there is no flag that would take it.
    let stderr =
        refused(server(&config, &["user", "add", "dave", "--groups", "Developers", "--password", PASSWORD], ""));
    assert!(stderr.contains("unexpected argument '--password'"), "{stderr}");
}

#[test]
fn mistakes_are_refused_with_a_reason_and_change_nothing() {
    let (dir, config) = setup();
    let users = dir.path().join("users.toml");
    let original = std::fs::read_to_string(&users).unwrap();
    let line = format!("{PASSWORD}\n");
    let stderr = refused(server(
        &config,
        &["user", "add", "alice", "--groups", "Developers,Desingers", "--password-stdin"],
        &line,
    ));
    assert_eq!(stderr.trim(), "error: group \"Desingers\" is not one of this server's groups (Developers, Designers)");
    let stderr =
        refused(server(&config, &["user", "add", "alice", "--groups", "Developers", "--password-stdin"], "short\n"));
    assert!(stderr.contains("at least 8 characters"), "{stderr}");
    let stderr =
        refused(server(&config, &["user", "add", "bad/name", "--groups", "Developers", "--password-stdin"], &line));
    assert!(stderr.contains("invalid value 'bad/name'"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&users).unwrap(), original, "a refused edit changes nothing");

    ok(server(&config, &["user", "add", "alice", "--groups", "Developers", "--password-stdin"], &line));
    let stderr =
        refused(server(&config, &["user", "add", "alice", "--groups", "Developers", "--password-stdin"], &line));
    assert!(stderr.contains("user alice already exists"), "{stderr}");
    let stderr = refused(server(&config, &["user", "passwd", "zoe", "--password-stdin"], &line));
    assert!(stderr.contains("no user zoe"), "{stderr}");
    let stderr = refused(server(&config, &["user", "remove", "zoe"], ""));
    assert!(stderr.contains("no user zoe"), "{stderr}");

    // Without a terminal and without --password-stdin there is nobody to ask.
    let output = Command::new("setsid")
        .arg(env!("CARGO_BIN_EXE_gshare-server"))
        .arg("--config")
        .arg(&config)
        .args(["user", "add", "erin", "--groups", "Developers"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = refused(output);
    assert!(stderr.contains("no terminal to ask for the password"), "{stderr}");
}
