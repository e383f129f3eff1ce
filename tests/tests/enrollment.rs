//! Enrollment end to end: the real server and client over real TLS on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use gshare_tests::{ClientHome, ServerProcess, TestNet, text};

const PASSWORD: &str = "correct horse battery staple";

fn started_with_alice() -> (TestNet, ServerProcess) {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    server.add_user("alice", "Developers", PASSWORD);
    (net, server)
}

#[test]
fn the_right_password_gets_a_certificate_and_a_private_key_file() {
    let (net, server) = started_with_alice();
    let home = ClientHome::new(&net);
    let output = home.enroll(&server, "alice", PASSWORD);
    assert!(output.status.success(), "{}\n{}", text(&output.stderr), server.log());
    assert!(text(&output.stdout).contains(&server.fingerprint()));
    let key = home.path().join("client.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&key).unwrap().contains("BEGIN PRIVATE KEY"));
    assert!(std::fs::read_to_string(home.path().join("client.crt")).unwrap().contains("BEGIN CERTIFICATE"));
    let settings = std::fs::read_to_string(home.path().join("client.toml")).unwrap();
    assert!(settings.contains(&server.fingerprint()) && settings.contains("[multicast]"), "{settings}");

    // Pinned now: groups shows the server as verified.
    let output = home.run(&["groups", "--wait", "1s"]);
    assert!(text(&output.stdout).contains("status: verified"), "{}", text(&output.stdout));
}

#[test]
fn a_wrong_password_and_an_unknown_user_get_the_same_refusal() {
    let (net, server) = started_with_alice();
    let wrong = ClientHome::new(&net).enroll(&server, "alice", "not the password");
    let unknown = ClientHome::new(&net).enroll(&server, "mallory", PASSWORD);
    for output in [&wrong, &unknown] {
        assert!(!output.status.success());
        assert_eq!(text(&output.stderr).trim(), "error: server refused enrollment: wrong user name or password");
    }
    assert!(server.log().contains("enrollment refused"));
}

#[test]
fn repeated_failures_engage_the_rate_limit_even_for_the_right_password() {
    let (net, server) = started_with_alice();
    for _ in 0..3 {
        let output = ClientHome::new(&net).enroll(&server, "alice", "guess");
        assert!(text(&output.stderr).contains("wrong user name or password"), "{}", text(&output.stderr));
    }
    let output = ClientHome::new(&net).enroll(&server, "alice", PASSWORD);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("too many failed attempts; try again in"), "{}", text(&output.stderr));
}

#[test]
fn a_wrong_ca_fingerprint_is_refused_before_the_password_is_sent() {
    let (net, server) = started_with_alice();
    let home = ClientHome::new(&net);
    let wrong = format!("SHA256:{}", "00".repeat(32));
    // No standard input at all: the client must stop before it would read the password.
    let output = home
        .command()
        .args(["enroll", "--user", "alice", "--server", server.tls_address.as_deref().unwrap()])
        .args(["--ca-fingerprint", &wrong, "--password-stdin"])
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!(
            "the server's CA is {}, not the expected {wrong}; nothing was sent",
            server.fingerprint()
        )),
        "{stderr}"
    );
    assert!(!server.log().contains("user=alice"), "the server saw a request:\n{}", server.log());
    assert!(!home.path().join("client.key").exists());
}

#[test]
fn without_a_terminal_or_a_fingerprint_enrollment_refuses() {
    let (net, server) = started_with_alice();
    let home = ClientHome::new(&net);
    // setsid: no controlling terminal, so /dev/tty cannot be opened, as under cron or CI.
    let output = Command::new("setsid")
        .arg(gshare_tests::client_bin())
        .arg("--home")
        .arg(home.path())
        .args(["enroll", "--user", "alice", "--server", server.tls_address.as_deref().unwrap(), "--password-stdin"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("cannot confirm the server's CA without a terminal; pass --ca-fingerprint"), "{stderr}");
}

#[test]
fn enrollment_finds_the_server_from_its_announcement() {
    let (net, server) = started_with_alice();
    let home = ClientHome::new(&net);
    let fingerprint = server.fingerprint();
    let output = home.run_with_stdin(
        &["enroll", "--user", "alice", "--ca-fingerprint", &fingerprint, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains(server.tls_address.as_deref().unwrap()));
}

/// Runs `gshare-client --home HOME ARGS` on a pseudo-terminal (with `script`), typing `input`.
fn at_a_terminal(home: &ClientHome, args: &str, input: &str) -> Option<std::process::Output> {
    let client = format!("{} --home {} {args}", gshare_tests::client_bin().display(), home.path().display());
    let mut command = Command::new("script");
    command.args(["-qec", &client, "/dev/null"]);
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED: `script` (util-linux) is not installed, so no pseudo-terminal");
        return None;
    }
    Some(gshare_tests::run_with_stdin(&mut command, input))
}

#[test]
fn at_a_terminal_the_person_confirms_the_fingerprint() {
    let (net, server) = started_with_alice();
    let address = server.tls_address.clone().unwrap();
    let args = format!("enroll --user alice --server {address}");

    let declined = ClientHome::new(&net);
    let Some(output) = at_a_terminal(&declined, &args, "n\n") else { return };
    let screen = text(&output.stdout);
    assert!(screen.contains(&server.fingerprint()) && screen.contains("[y/N]"), "{screen}");
    assert!(screen.contains("error: the CA fingerprint was not confirmed; nothing was sent"), "{screen}");
    assert!(!server.log().contains("user=alice"), "the server saw a request:\n{}", server.log());

    let accepted = ClientHome::new(&net);
    let output = at_a_terminal(&accepted, &args, &format!("y\n{PASSWORD}\n")).unwrap();
    let screen = text(&output.stdout);
    assert!(screen.contains("Password for alice:") && screen.contains("enrolled with"), "{screen}");
    assert!(accepted.path().join("client.crt").exists());
}
