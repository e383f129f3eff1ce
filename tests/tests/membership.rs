//! Joining and leaving groups end to end, and everything that must not change a membership:
//! refusals, forged and replayed requests, removed users, and edits of users.toml by hand.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::time::Duration;

use gshare_certs::CertificateAuthority;
use gshare_proto::datagram::decode;
use gshare_proto::membership::MembershipRequest;
use gshare_proto::{Datagram, Fingerprint, Message, Nonce, UnixMillis};
use gshare_tests::{ClientHome, GroupObserver, STARTUP_TIMEOUT, ServerProcess, TestNet, text};

const PASSWORD: &str = "correct horse battery staple";

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A server with alice (Developers only), enrolled.
fn alice_enrolled() -> (TestNet, ServerProcess, ClientHome) {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    server.add_user("alice", "Developers", PASSWORD);
    let alice = ClientHome::enrolled(&net, &server, "alice", PASSWORD);
    (net, server, alice)
}

fn certificate_fingerprint(home: &ClientHome) -> Fingerprint {
    let pem = std::fs::read_to_string(home.path().join("client.crt")).unwrap();
    gshare_certs::fingerprint(&gshare_certs::authority::pem_certificate_der(&pem).unwrap())
}

fn join_datagram(certificate: Fingerprint, group: &str, signer: &CertificateAuthority) -> Vec<u8> {
    let request = MembershipRequest { certificate, group: group.parse().unwrap() };
    Datagram {
        timestamp: UnixMillis(now_ms()),
        nonce: Nonce(gshare_certs::random_bytes().unwrap()),
        message: Message::JoinRequest(request),
    }
    .encode(Some(signer.signer()))
    .unwrap()
}

#[test]
fn an_allowed_join_is_recorded_and_survives_a_restart() {
    let (_net, mut server, alice) = alice_enrolled();
    let output = alice.run(&["join", "--group", "Developers"]);
    assert!(output.status.success(), "{}\n{}", text(&output.stderr), server.log());
    assert_eq!(text(&output.stdout).trim(), "joined Developers");
    let again = alice.run(&["join", "--group", "Developers"]);
    assert!(again.status.success(), "joining twice is harmless: {}", text(&again.stderr));
    assert_eq!(server.members("Developers"), ["alice"]);

    server.restart();
    assert_eq!(server.members("Developers"), ["alice"]);
    let output = alice.run(&["leave", "--group", "Developers"]);
    assert_eq!(text(&output.stdout).trim(), "left Developers", "{}", text(&output.stderr));
    assert!(server.members("Developers").is_empty());
}

#[test]
fn groups_the_user_may_not_join_and_unknown_groups_are_refused_with_the_reason() {
    let (_net, server, alice) = alice_enrolled();
    let output = alice.run(&["join", "--group", "Designers"]);
    assert!(!output.status.success());
    assert_eq!(text(&output.stderr).trim(), "error: server refused join: user \"alice\" may not join \"Designers\"");
    let output = alice.run(&["join", "--group", "Marketing"]);
    assert!(!output.status.success());
    assert_eq!(
        text(&output.stderr).trim(),
        "error: server refused join: there is no group \"Marketing\" on this server"
    );
    assert!(server.members("Designers").is_empty());
    assert!(server.log().contains("Join refused"));
}

#[test]
fn a_request_signed_by_another_key_changes_nothing() {
    let (net, mut server, alice) = alice_enrolled();
    let observer = GroupObserver::join(&net);
    let impostor = CertificateAuthority::generate("impostor", time::OffsetDateTime::now_utc()).unwrap();
    observer.send(&join_datagram(certificate_fingerprint(&alice), "Developers", &impostor));
    server.wait_for_log("reason=\"bad signature\"", Duration::from_secs(10));
    assert!(server.members("Developers").is_empty());
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let (net, mut server, _alice) = alice_enrolled();
    // mallory enrolls with a server of her own, then asks ours.
    let other_net = TestNet::loopback();
    let mut other = ServerProcess::start(&other_net);
    other.add_user("mallory", "Developers", PASSWORD);
    let mallory = ClientHome::enrolled(&other_net, &other, "mallory", PASSWORD);
    let settings = std::fs::read_to_string(mallory.path().join("client.toml")).unwrap();
    let settings = settings.replace(&other_net.multicast_toml(), &net.multicast_toml());
    std::fs::write(mallory.path().join("client.toml"), settings).unwrap();

    let output = mallory.run(&["join", "--group", "Developers"]);
    // Our server's refusal is signed by our CA, which mallory's client does not trust.
    assert!(!output.status.success());
    server.wait_for_log("unknown certificate", Duration::from_secs(10));
    assert!(server.members("Developers").is_empty());
}

#[test]
fn a_replayed_join_changes_nothing() {
    let (net, mut server, alice) = alice_enrolled();
    let observer = GroupObserver::join(&net);
    let output = alice.run(&["join", "--group", "Developers"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let captured = observer
        .receive_until(Duration::from_secs(5), |bytes| {
            matches!(decode(bytes).ok()?.datagram.message, Message::JoinRequest(_)).then(|| bytes.to_vec())
        })
        .expect("the join request crossed the group");
    let output = alice.run(&["leave", "--group", "Developers"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(server.members("Developers").is_empty());

    observer.send(&captured);
    server.wait_for_log("reason=\"replayed\"", Duration::from_secs(10));
    assert!(server.members("Developers").is_empty(), "the replay re-joined alice");
}

#[test]
fn after_user_remove_the_user_is_revoked_and_refused() {
    let (_net, server, alice) = alice_enrolled();
    assert!(alice.run(&["join", "--group", "Developers"]).status.success());
    let output = server.command(&["user", "remove", "alice"], "");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).trim(), "removed user alice; revoked 1 certificate(s)");
    assert!(server.members("Developers").is_empty());

    let output = alice.run(&["join", "--group", "Developers"]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("server refused join: the certificate of user \"alice\" was revoked"),
        "{}",
        text(&output.stderr)
    );
    assert!(server.members("Developers").is_empty());
}

#[test]
fn a_user_added_by_hand_enrolls_without_a_restart() {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    // Make a hash with the CLI against a scratch config, then paste it into the live file.
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("server.toml"), "groups = [\"Developers\", \"Designers\"]\n").unwrap();
    let output = gshare_tests::run_with_stdin(
        std::process::Command::new(gshare_tests::server_bin())
            .arg("--config")
            .arg(scratch.path().join("server.toml"))
            .args(["user", "add", "bob", "--groups", "Designers", "--password-stdin"]),
        &format!("{PASSWORD}\n"),
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let entry = std::fs::read_to_string(scratch.path().join("users.toml")).unwrap();
    std::fs::write(server.users_file(), format!("# written by hand\n{entry}")).unwrap();
    server.wait_for_log("user store reloaded", STARTUP_TIMEOUT);

    let bob = ClientHome::enrolled(&net, &server, "bob", PASSWORD);
    assert!(bob.run(&["join", "--group", "Designers"]).status.success());
    assert_eq!(server.members("Designers"), ["bob"]);
}

#[test]
fn a_user_removed_by_hand_can_no_longer_join_and_a_bad_edit_keeps_the_last_good_store() {
    let (_net, mut server, alice) = alice_enrolled();
    assert!(alice.run(&["join", "--group", "Developers"]).status.success());
    let original = std::fs::read_to_string(server.users_file()).unwrap();

    std::fs::write(server.users_file(), format!("{original}\n[users.broken\n")).unwrap();
    let line = server.wait_for_log("user store not reloaded", STARTUP_TIMEOUT);
    assert!(line.contains("users.toml: line"), "{line}");
    assert!(alice.run(&["leave", "--group", "Developers"]).status.success(), "the last good store stays in force");
    assert!(alice.run(&["join", "--group", "Developers"]).status.success());

    std::fs::write(server.users_file(), "# nobody left\n").unwrap();
    server.wait_for_log("revoked: removed from the user store", STARTUP_TIMEOUT);
    assert!(server.members("Developers").is_empty());
    let output = alice.run(&["join", "--group", "Developers"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("revoked"), "{}", text(&output.stderr));
}

#[test]
fn disabling_a_user_by_hand_locks_them_out_until_enabled_again() {
    let (_net, mut server, alice) = alice_enrolled();
    assert!(alice.run(&["join", "--group", "Developers"]).status.success());
    let users = std::fs::read_to_string(server.users_file()).unwrap();
    std::fs::write(
        server.users_file(),
        users.replace("groups = [\"Developers\"]", "groups = [\"Developers\"]\ndisabled = true"),
    )
    .unwrap();
    server.wait_for_log("membership ended: no longer allowed", STARTUP_TIMEOUT);
    assert!(server.members("Developers").is_empty());
    let output = alice.run(&["join", "--group", "Developers"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("user \"alice\" is disabled"), "{}", text(&output.stderr));
    let renewal = alice.run(&["renew"]);
    assert!(!renewal.status.success(), "a disabled user renewed");
    // Enrolling again is refused too: a disabled user is treated as absent.
    let output = alice.enroll(&server, "alice", PASSWORD);
    assert!(text(&output.stderr).contains("wrong user name or password"), "{}", text(&output.stderr));

    // Enabled again, with the command: the same certificate works.
    let enabled = server.command(&["user", "enable", "alice"], "");
    assert!(enabled.status.success(), "{}", text(&enabled.stderr));
    let joins = || alice.run(&["join", "--group", "Developers"]).status.success();
    assert!(gshare_tests::wait_until(STARTUP_TIMEOUT, joins), "still locked out after user enable");
}

#[test]
fn user_disable_and_user_groups_change_what_a_user_may_do_at_once() {
    let (_net, mut server, alice) = alice_enrolled();
    assert!(alice.run(&["join", "--group", "Developers"]).status.success());
    let changed = server.command(&["user", "groups", "alice", "--groups", "Designers"], "");
    assert!(changed.status.success(), "{}", text(&changed.stderr));
    server.wait_for_log("membership ended: no longer allowed", STARTUP_TIMEOUT);
    assert!(server.members("Developers").is_empty());
    assert!(!alice.run(&["join", "--group", "Developers"]).status.success());
    assert!(alice.run(&["join", "--group", "Designers"]).status.success());
    let listed = text(&server.command(&["user", "list"], "").stdout);
    assert!(listed.contains("alice  Designers"), "{listed}");

    let disabled = server.command(&["user", "disable", "alice"], "");
    assert!(disabled.status.success(), "{}", text(&disabled.stderr));
    assert!(text(&server.command(&["user", "list"], "").stdout).contains("(disabled)"));
    assert!(wait_until_refused(&alice));
}

/// Whether a join by `home` is refused within the test's patience (the server rereads
/// users.toml within a second).
fn wait_until_refused(home: &ClientHome) -> bool {
    gshare_tests::wait_until(STARTUP_TIMEOUT, || !home.run(&["join", "--group", "Designers"]).status.success())
}
