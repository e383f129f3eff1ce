//! What a member's session refuses: sessions without a valid, unrevoked certificate from our
//! CA (against the real server), and hostile offers (from a fake server with the real server's
//! identity): unsafe names, a symlink under the name, and sizes that do not match the data.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::time::Duration;

use gshare_certs::CertificateAuthority;
use gshare_proto::frame::Frame;
use gshare_tests::raw::{FakeServer, HostileOffer, client_config, first_answer, runtime, sha256};
use gshare_tests::{ClientHome, Listener, ServerProcess, TestNet};

const PASSWORD: &str = "correct horse battery staple";

fn alice_joined() -> (TestNet, ServerProcess, ClientHome) {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    server.add_user("alice", "Developers", PASSWORD);
    let alice = ClientHome::enrolled(&net, &server, "alice", PASSWORD);
    assert!(alice.run(&["join", "--group", "Developers"]).status.success());
    (net, server, alice)
}

fn pem_der(path: &std::path::Path) -> Vec<u8> {
    gshare_certs::authority::pem_certificate_der(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn subscribe() -> Frame {
    Frame::Subscribe { groups: vec!["Developers".parse().unwrap()] }
}

fn refusal(answer: Result<Option<Frame>, String>) -> String {
    match answer {
        Ok(Some(Frame::Refused { reason })) => reason.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn sessions_need_a_valid_unrevoked_certificate_from_our_ca() {
    let (_net, mut server, alice) = alice_joined();
    let address = server.tls_address.clone().unwrap();
    let ca = pem_der(&alice.path().join("ca.crt"));
    let certificate = pem_der(&alice.path().join("client.crt"));
    let key = std::fs::read_to_string(alice.path().join("client.key")).unwrap();
    let rt = runtime();

    let none = rt.block_on(first_answer(&address, client_config(&ca, None), subscribe()));
    assert!(refusal(none).contains("needs the member's client certificate"));

    // A certificate for alice from another CA: the handshake itself fails.
    let other = CertificateAuthority::generate("other", time::OffsetDateTime::now_utc()).unwrap();
    let (other_key, request) = gshare_certs::authority::member_key_and_request("alice").unwrap();
    let foreign = other
        .issue_member_certificate("alice", &request, Duration::from_secs(86_400), time::OffsetDateTime::now_utc())
        .unwrap();
    let answer = rt.block_on(first_answer(&address, client_config(&ca, Some((&foreign.der, &other_key))), subscribe()));
    assert!(!matches!(answer, Ok(Some(Frame::Subscribed))), "{answer:?}");
    server.wait_for_log("TLS handshake failed", Duration::from_secs(10));

    let not_joined = rt.block_on(first_answer(
        &address,
        client_config(&ca, Some((&certificate, &key))),
        Frame::Subscribe { groups: vec!["Designers".parse().unwrap()] },
    ));
    assert!(refusal(not_joined).contains("is not a member of \"Designers\""));

    assert!(server.command(&["user", "remove", "alice"], "").status.success());
    let revoked = rt.block_on(first_answer(&address, client_config(&ca, Some((&certificate, &key))), subscribe()));
    assert!(refusal(revoked).contains("was revoked"));
}

#[test]
fn hostile_offers_are_refused_and_nothing_is_written_outside_the_out_directory() {
    let (_net, server, alice) = alice_joined();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let outside = root.path().join("outside.txt");
    std::fs::write(&outside, b"precious").unwrap();
    std::os::unix::fs::symlink(&outside, out.join("report.txt")).unwrap();
    // A directory of a sent tree planted as a symlink out of the out directory.
    std::os::unix::fs::symlink(root.path(), out.join("linked")).unwrap();

    let bad_names: Vec<&[u8]> = vec![
        b"../x",
        b"/etc/passwd",
        b"a/../../x",
        b"a//b",
        b"a/",
        b"a/./b",
        b"a/.gshare-1-00.part",
        b"..",
        b".",
        b"",
        b"a\0b",
        b"bell\x07",
        b"\x1b[31mred",
        b"C:evil",
        b"back\\slash",
    ];
    let mut first: Vec<HostileOffer> = bad_names.iter().map(|name| HostileOffer::honest(name, b"hello")).collect();
    first.push(HostileOffer::honest(b"report.txt", b"hello"));
    first.push(HostileOffer::honest(b"linked/deep.txt", b"hello"));
    // Declares fewer bytes than it sends.
    first.push(HostileOffer {
        name: b"small.txt".to_vec(),
        declared_size: 3,
        sha256: sha256(b"hel"),
        data: b"hello".to_vec(),
    });
    // Declares more bytes than it sends, then hangs up.
    let second = vec![HostileOffer {
        name: b"large.txt".to_vec(),
        declared_size: 10,
        sha256: sha256(b"helloworld"),
        data: b"hello".to_vec(),
    }];
    let fake = FakeServer::start(&server.state_dir().join("identity"), vec![first, second]);

    let settings = std::fs::read_to_string(alice.path().join("client.toml")).unwrap();
    let server_line = settings.lines().find(|l| l.starts_with("server")).unwrap().to_owned();
    std::fs::write(
        alice.path().join("client.toml"),
        settings.replace(&server_line, &format!("server = \"{}\"", fake.address)),
    )
    .unwrap();
    let mut listener = Listener::start(&alice, &["Developers"], &out);

    for name in &bad_names {
        let report = fake.next_report(Duration::from_secs(30));
        assert_eq!(report.name, name.to_vec());
        assert_eq!(report.answers, ["decline"], "{:?}: {}", String::from_utf8_lossy(name), listener.output());
    }
    let symlinked = fake.next_report(Duration::from_secs(30));
    assert_eq!(symlinked.answers, ["resume 0", "ack"]);
    let through_directory = fake.next_report(Duration::from_secs(30));
    assert_eq!(through_directory.answers, ["resume 0", "ack"], "{}", listener.output());
    let small = fake.next_report(Duration::from_secs(30));
    assert_eq!(small.answers, ["resume 0", "failed"], "{}", listener.output());
    let large = fake.next_report(Duration::from_secs(30));
    assert_eq!(large.answers, ["resume 0", "closed"], "{}", listener.output());
    listener.wait_for("closed in the middle of a file", Duration::from_secs(30));

    assert_eq!(std::fs::read(&outside).unwrap(), b"precious", "written through the symlink");
    assert!(std::fs::symlink_metadata(out.join("report.txt")).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(out.join("report (1).txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read(out.join("linked (1)/deep.txt")).unwrap(), b"hello", "beside the link, not through it");
    let mut in_out: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    in_out.sort();
    // The unfinished large.txt may wait for a resume, under its temporary name only.
    assert_eq!(
        in_out.iter().filter(|n| !n.ends_with(".part")).collect::<Vec<_>>(),
        ["linked", "linked (1)", "report (1).txt", "report.txt"],
        "{in_out:?}"
    );
    let mut in_root: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    in_root.sort();
    assert_eq!(in_root, ["out", "outside.txt"]);
    assert!(listener.output().contains("refused a file named \"../x\""), "{}", listener.output());
    assert!(listener.output().contains("\\u{1b}[31mred"), "control characters are escaped: {}", listener.output());
}
