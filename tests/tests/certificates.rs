//! The certificate lifecycle: members renew before expiry and keep receiving, the server
//! reissues its own certificate under connected members, one device is revoked without its
//! user, an expired member is told what to do, and a renewal cut by kill -9 leaves one
//! consistent pair. Validity periods are seconds here, set in the config.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use gshare_tests::{ClientHome, Listener, ServerProcess, TestNet, free_tcp_port, random_file, text, wait_until};

const PASSWORD: &str = "correct horse battery staple";
const LONG: Duration = Duration::from_secs(60);

/// A server with the test defaults plus `extra` TOML (a `[certificates]` table, say).
fn server_with(net: &TestNet, extra: &str) -> ServerProcess {
    let port = free_tcp_port();
    let config = format!("{}\n{extra}", gshare_tests::default_server_toml(net, port));
    let mut server = ServerProcess::start_with(net, &config, &[]);
    server.tls_address = Some(format!("127.0.0.1:{port}"));
    server
}

/// `validity_days` for a validity of `secs` seconds.
fn days(secs: f64) -> f64 {
    secs / 86_400.0
}

/// `cert list --json`, for one user.
fn certificates(server: &ServerProcess, user: &str) -> Vec<serde_json::Value> {
    let output = server.command(&["cert", "list", "--user", user, "--json"], "");
    assert!(output.status.success(), "{}", text(&output.stderr));
    serde_json::from_slice::<Vec<serde_json::Value>>(&output.stdout).unwrap()
}

fn join(home: &ClientHome, group: &str) -> std::process::Output {
    home.run(&["join", "--group", group])
}

/// A copy of a member's home as it is now: the same key and certificate, another directory.
fn copy_home(net: &TestNet, home: &ClientHome) -> ClientHome {
    let copy = ClientHome::new(net);
    for name in ["client.key", "client.crt", "ca.crt", "client.toml"] {
        std::fs::copy(home.path().join(name), copy.path().join(name)).unwrap();
    }
    copy
}

fn send_and_receive(server: &ServerProcess, listener: &mut Listener, out: &Path, name: &str, seed: u64) {
    let source = tempfile::tempdir().unwrap();
    let file = random_file(source.path(), name, 300_000, seed);
    let sent = server.send("Developers", &[&file], false);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    listener.wait_for(&format!("received {name}"), LONG);
    assert_eq!(std::fs::read(out.join(name)).unwrap(), std::fs::read(&file).unwrap());
}

#[test]
fn a_listening_member_renews_by_itself_before_expiry_and_keeps_receiving() {
    let net = TestNet::loopback();
    let mut server = server_with(&net, &format!("[certificates]\nvalidity_days = {}\n", days(30.0)));
    server.add_user("alice", "Developers", PASSWORD);
    let home = ClientHome::with_extra(&net, "renew_at = 0.3");
    let enrolled = home.enroll(&server, "alice", PASSWORD);
    assert!(enrolled.status.success(), "{}", text(&enrolled.stderr));
    let before = copy_home(&net, &home);
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&home, &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);

    listener.wait_for("certificate renewed", LONG);
    let issued = certificates(&server, "alice");
    assert!(issued.len() >= 2, "{issued:?}");
    assert_eq!(issued[1]["renewed_from"], issued[0]["serial"], "{issued:?}");
    assert_ne!(
        std::fs::read(home.path().join("client.key")).unwrap(),
        std::fs::read(before.path().join("client.key")).unwrap()
    );
    // The session came back with the new certificate, and files keep arriving.
    send_and_receive(&server, &mut listener, out.path(), "after-renewal.txt", 1);
    // The old certificate is still good until it expires (a second device, or a copy).
    let old = join(&before, "Developers");
    assert!(old.status.success(), "the old certificate no longer works: {}", text(&old.stderr));
}

#[test]
fn renewal_is_refused_to_a_removed_user_and_to_a_revoked_certificate() {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    server.add_user("bob", "Developers", PASSWORD);
    server.add_user("carol", "Developers", PASSWORD);
    let bob = ClientHome::enrolled(&net, &server, "bob", PASSWORD);
    let carol = ClientHome::enrolled(&net, &server, "carol", PASSWORD);
    let renewed = carol.run(&["renew"]);
    assert!(renewed.status.success(), "{}", text(&renewed.stderr));
    assert!(text(&renewed.stdout).contains("certificate renewed"), "{}", text(&renewed.stdout));

    let removed = server.command(&["user", "remove", "bob"], "");
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    let refused = bob.run(&["renew"]);
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("refused the renewal"), "{}", text(&refused.stderr));

    let current = certificates(&server, "carol").last().unwrap()["serial"].as_str().unwrap().to_owned();
    let revoked = server.command(&["cert", "revoke", &current], "");
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let refused = carol.run(&["renew"]);
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("revoked"), "{}", text(&refused.stderr));
    assert_eq!(certificates(&server, "carol").len(), 2, "a refused renewal issued a certificate");
}

#[test]
fn a_renewal_killed_between_moving_the_key_and_the_certificate_leaves_one_consistent_pair() {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    server.add_user("dave", "Developers", PASSWORD);
    let home = ClientHome::enrolled(&net, &server, "dave", PASSWORD);
    let old_key = std::fs::read(home.path().join("client.key")).unwrap();
    for point in ["renew-before-save", "replace-moved-one"] {
        let killed = home.command().arg("renew").env("GSHARE_CRASH_AT", point).output().unwrap();
        assert_eq!(killed.status.signal(), Some(9), "{point}: {}", text(&killed.stderr));
    }
    // The crash left the new key in place beside the old certificate; the next start finishes
    // the move, and the pair works.
    assert!(home.path().join(".replacing").exists());
    let joined = join(&home, "Developers");
    assert!(joined.status.success(), "{}", text(&joined.stderr));
    assert!(!home.path().join(".replacing").exists());
    assert_ne!(std::fs::read(home.path().join("client.key")).unwrap(), old_key, "the renewal was undone");
    let current = certificates(&server, "dave");
    assert_eq!(current.len(), 3, "{current:?}");
    let in_use = text(&home.run(&["renew"]).stdout);
    assert!(in_use.contains("certificate renewed"), "{in_use}");
}

#[test]
fn an_expired_member_is_told_the_date_and_to_enroll_again() {
    let net = TestNet::loopback();
    let mut server = server_with(&net, &format!("[certificates]\nvalidity_days = {}\n", days(2.0)));
    server.add_user("erin", "Developers", PASSWORD);
    let home = ClientHome::enrolled(&net, &server, "erin", PASSWORD);
    let expires = certificates(&server, "erin")[0]["expires_at"].as_i64().unwrap();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(wait_until(LONG, || now() > expires), "the certificate never expired");

    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&home, &["Developers"], out.path());
    assert!(!listener.wait_exit(LONG).success());
    let said = listener.output();
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    assert!(said.contains("this member's certificate expired on 20"), "{said}");
    assert!(said.contains("enroll again: gshare-client enroll --user erin"), "{said}");
}

#[test]
fn the_server_certificate_reissued_under_connected_members_changes_nothing_for_them() {
    let net = TestNet::loopback();
    let extra = format!("[certificates]\nserver_validity_days = {}\nserver_renew_days = {}\n", days(24.0), days(20.0));
    let mut server = server_with(&net, &extra);
    server.add_user("frank", "Developers", PASSWORD);
    let home = ClientHome::enrolled(&net, &server, "frank", PASSWORD);
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&home, &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);
    let before = std::fs::read(server.state_dir().join("identity/server.crt")).unwrap();
    server.wait_for_log("server certificate reissued", LONG);
    assert_ne!(std::fs::read(server.state_dir().join("identity/server.crt")).unwrap(), before);
    send_and_receive(&server, &mut listener, out.path(), "during.txt", 2);
    // A new connection meets the new certificate.
    listener.kill();
    let mut listener = Listener::start(&home, &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);
    send_and_receive(&server, &mut listener, out.path(), "after.txt", 3);
}

#[test]
fn revoking_one_device_cuts_it_off_at_once_and_leaves_the_other_receiving() {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    server.add_user("grace", "Developers", PASSWORD);
    let laptop = ClientHome::enrolled(&net, &server, "grace", PASSWORD);
    let desktop = ClientHome::enrolled(&net, &server, "grace", PASSWORD);
    let (laptop_out, desktop_out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut on_laptop = Listener::start(&laptop, &["Developers"], laptop_out.path());
    on_laptop.wait_for("waiting for files", LONG);
    let mut on_desktop = Listener::start(&desktop, &["Developers"], desktop_out.path());
    on_desktop.wait_for("waiting for files", LONG);

    let listing = text(&server.command(&["cert", "list", "--user", "grace"], "").stdout);
    assert_eq!(listing.lines().count(), 2, "{listing}");
    let laptop_certificate = certificates(&server, "grace")[0]["fingerprint"].as_str().unwrap().to_owned();
    let revoked = server.command(&["cert", "revoke", &laptop_certificate], "");
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    assert!(text(&revoked.stdout).contains("open sessions are closed"), "{}", text(&revoked.stdout));

    assert!(!on_laptop.wait_exit(LONG).success());
    assert!(on_laptop.output().contains("revoked"), "{}", on_laptop.output());
    send_and_receive(&server, &mut on_desktop, desktop_out.path(), "still.txt", 4);
    assert!(!laptop_out.path().join("still.txt").exists());
    let listing = text(&server.command(&["cert", "list", "--user", "grace"], "").stdout);
    assert!(listing.contains("revoked") && listing.contains("valid"), "{listing}");
}

#[test]
fn a_member_sees_whom_it_is_enrolled_as_its_expiry_groups_and_files() {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    server.add_user("heidi", "Developers", PASSWORD);
    let home = ClientHome::enrolled(&net, &server, "heidi", PASSWORD);
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&home, &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);
    send_and_receive(&server, &mut listener, out.path(), "notes.md", 5);

    let output = home.run(&["status", "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["user"], "heidi");
    assert_eq!(status["server"], server.tls_address.clone().unwrap());
    assert_eq!(status["ca_fingerprint"], server.fingerprint());
    assert_eq!(status["certificate_fingerprint"], certificates(&server, "heidi")[0]["fingerprint"]);
    assert_eq!(status["expires_at"], certificates(&server, "heidi")[0]["expires_at"]);
    assert_eq!(status["joined"], serde_json::json!(["Developers"]));
    assert_eq!(status["received"][0]["name"], "notes.md");
    let shown = text(&home.run(&["status"]).stdout);
    assert!(
        shown.contains("enrolled as heidi") && shown.contains("notes.md") && shown.contains("expires 20"),
        "{shown}"
    );
}
