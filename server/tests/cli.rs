//! The `gshare-server` command line: config mistakes and identity problems give a clear
//! one-line reason and a non-zero exit; `fingerprint` prints a stable `SHA256:hex`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::path::Path;
use std::process::{Command, Output};

fn server(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gshare-server")).arg("--config").arg(config).args(args).output().unwrap()
}

/// Writes `text` as server.toml in a new directory and runs the server on it with `args`.
fn with_config(text: &str, args: &[&str]) -> (tempfile::TempDir, Output) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, text).unwrap();
    let output = server(&config, args);
    (dir, output)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let output = server(Path::new("/nonexistent/server.toml"), &[]);
    assert!(!output.status.success());
    let stderr = stderr(&output);
    assert!(stderr.starts_with("error: /nonexistent/server.toml: cannot read the file"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn an_unknown_key_names_its_line() {
    let (_dir, output) = with_config("groups = [\"Developers\"]\n\nlisten = \"127.0.0.1:7443\"\n", &["fingerprint"]);
    assert!(!output.status.success());
    let stderr = stderr(&output);
    assert!(stderr.contains("server.toml: line 3: listen: unknown field `listen`"), "{stderr}");
}

#[test]
fn a_bad_address_names_its_line_and_key() {
    let (_dir, output) = with_config("groups = [\"Developers\"]\n[tls]\nlisten = \"127.0.0.1:99999\"\n", &[]);
    assert!(!output.status.success());
    let stderr = stderr(&output);
    assert!(stderr.contains("server.toml: line 3: tls.listen: invalid socket address"), "{stderr}");

    let (_dir, output) = with_config("groups = [\"Developers\"]\n[multicast]\ngroup = \"192.0.2.1\"\n", &[]);
    assert!(stderr_contains(&output, "line 3: multicast.group: 192.0.2.1 is not a multicast address"));
}

fn stderr_contains(output: &Output, needle: &str) -> bool {
    let text = stderr(output);
    let found = !output.status.success() && text.contains(needle);
    if !found {
        eprintln!("expected {needle:?} in:\n{text}");
    }
    found
}

#[test]
fn fingerprint_creates_the_ca_once_and_prints_the_same_value_after() {
    let (dir, first) = with_config("groups = [\"Developers\"]\n", &["fingerprint"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let fingerprint = String::from_utf8(first.stdout).unwrap();
    let fingerprint = fingerprint.trim();
    assert!(fingerprint.starts_with("SHA256:") && fingerprint.len() == 71, "{fingerprint}");
    let second = server(&dir.path().join("server.toml"), &["fingerprint"]);
    assert_eq!(String::from_utf8(second.stdout).unwrap().trim(), fingerprint);
    // The same value openssl prints for the certificate, byte for byte.
    let pem = std::fs::read_to_string(dir.path().join("state/identity/ca.crt")).unwrap();
    let der = gshare_certs::authority::pem_certificate_der(&pem).unwrap();
    assert_eq!(gshare_certs::fingerprint(&der).to_string(), fingerprint);
}

#[test]
fn a_missing_ca_key_stops_the_server_instead_of_making_a_new_ca() {
    let (dir, first) = with_config("groups = [\"Developers\"]\n", &["fingerprint"]);
    assert!(first.status.success());
    std::fs::remove_file(dir.path().join("state/identity/ca.key")).unwrap();
    let output = server(&dir.path().join("server.toml"), &[]);
    assert!(stderr_contains(&output, "missing ca.key"));
    assert!(!dir.path().join("state/identity/ca.key").exists(), "no new key may appear");
}

#[test]
fn an_interface_that_is_not_on_this_host_is_a_clear_error() {
    // TEST-NET-1 is never assigned here; joining on it fails locally, so nothing is sent.
    let (_dir, output) = with_config("groups = [\"Developers\"]\n[multicast]\ninterface = \"192.0.2.99\"\n", &[]);
    assert!(stderr_contains(&output, "on interface 192.0.2.99"));
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn status_and_user_remove_create_the_state_directory_world_readable() {
    // Regression: `status` (and `user remove`) before the server ever ran created the state
    // directory 0755 and the database with the umask's mode.
    let (dir, output) = with_config("groups = [\"Developers\"]\n", &["status"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let state = dir.path().join("state");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("gshare.db")), 0o600);
}

#[test]
fn loose_modes_in_an_existing_state_directory_are_corrected() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, output) = with_config("groups = [\"Developers\"]\n", &["fingerprint"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let state = dir.path().join("state");
    let loose = |path: &Path, mode: u32| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    loose(&state, 0o755);
    loose(&state.join("identity/ca.key"), 0o644);
    let output = server(&dir.path().join("server.toml"), &["status"]);
    assert!(output.status.success(), "{}", stderr(&output));
    loose(&state.join("gshare.db"), 0o644);
    let output = server(&dir.path().join("server.toml"), &["fingerprint"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = server(&dir.path().join("server.toml"), &["status"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("identity/ca.key")), 0o600);
    assert_eq!(mode(&state.join("gshare.db")), 0o600);
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_instead_of_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "groups = [\"Developers\"]\n").unwrap();
    for args in [&["user", "list"][..], &["cert", "list"], &["cert", "list", "--json"]] {
        // The reader is gone before the command writes a byte, as with `| head -0`.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = Command::new(env!("CARGO_BIN_EXE_gshare-server"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{args:?}: {}", stderr(&output));
        assert!(
            !stderr(&output).contains("panicked") && !stderr(&output).contains("error"),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn send_of_an_empty_directory_a_fifo_or_a_missing_file_names_which() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "groups = [\"Developers\"]\n").unwrap();
    let fifo = dir.path().join("pipe");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let cases = [
        (empty, "holds no regular file to send"),
        (fifo, "is not a regular file or a directory (a FIFO, socket or device)"),
        (dir.path().join("gone.txt"), "no such file or directory"),
    ];
    for (path, expected) in cases {
        let output = server(&config, &["send", "--group", "Developers", path.to_str().unwrap()]);
        assert!(!output.status.success());
        assert!(stderr(&output).contains(&format!("{}: {expected}", path.display())), "{}", stderr(&output));
    }
}

#[test]
fn config_may_follow_the_command_or_come_from_gshare_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "groups = [\"Developers\"]\n").unwrap();
    let binary = env!("CARGO_BIN_EXE_gshare-server");
    let after = Command::new(binary).args(["user", "list", "--config"]).arg(&config).output().unwrap();
    assert!(after.status.success(), "{}", stderr(&after));
    let from_env = Command::new(binary).args(["user", "list"]).env("GSHARE_CONFIG", &config).output().unwrap();
    assert!(from_env.status.success(), "{}", stderr(&from_env));
    let neither = Command::new(binary).args(["user", "list"]).env_remove("GSHARE_CONFIG").output().unwrap();
    assert!(!neither.status.success());
    assert!(stderr(&neither).contains("give --config FILE (or set GSHARE_CONFIG)"), "{}", stderr(&neither));
}

#[test]
fn a_user_store_others_can_read_gets_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "groups = [\"Developers\"]\n").unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(&users, "").unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = server(&config, &["user", "list"]);
    assert!(output.status.success());
    assert!(stderr(&output).contains("can be read by other users (mode 0644)"), "{}", stderr(&output));
    assert!(stderr(&output).contains(&format!("chmod o-rwx {}", users.display())), "{}", stderr(&output));
    // Group-readable is the operator's choice (fellow administrators): no warning.
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(!stderr(&server(&config, &["user", "list"])).contains("warning"));
}

#[test]
fn generate_writes_completions_and_manual_pages_without_a_config() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_gshare-server")).arg("generate").arg(out.path()).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    for name in
        ["gshare-server.1", "gshare-server-cert-revoke.1", "gshare-server.bash", "_gshare-server", "gshare-server.fish"]
    {
        assert!(out.path().join(name).is_file(), "{name} missing");
    }
    let bash = std::fs::read_to_string(out.path().join("gshare-server.bash")).unwrap();
    assert!(bash.contains("revoke") && bash.contains("--config"), "completions lack commands");
    let page = std::fs::read_to_string(out.path().join("gshare-server-cancel.1")).unwrap();
    assert!(page.contains("Cancel a sent file"), "{page}");
}
