//! End to end on loopback: the real server announces, the real client lists, and what does not
//! verify (forged, stale, future-dated, replayed, from another CA, garbage) is never shown.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::time::Duration;

use gshare_certs::CertificateAuthority;
use gshare_proto::datagram::{self, decode};
use gshare_proto::{Announcement, Datagram, GroupName, Message, Nonce, ServerAddress, UnixMillis};
use gshare_tests::{ClientHome, GroupObserver, ServerProcess, TestNet, text};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// An announcement carrying `certificate`, listing `groups`, signed by `signer`.
fn announcement(certificate: &[u8], signer: &CertificateAuthority, groups: &[&str], timestamp: u64) -> Vec<u8> {
    let groups: Vec<GroupName> = groups.iter().map(|g| g.parse().unwrap()).collect();
    let server = ServerAddress::new("127.0.0.1:7443").unwrap();
    let part = Announcement::split(certificate, &server, &groups).unwrap().remove(0);
    let nonce = Nonce(gshare_certs::random_bytes().unwrap());
    Datagram { timestamp: UnixMillis(timestamp), nonce, message: Message::Announcement(part) }
        .encode(Some(signer.signer()))
        .unwrap()
}

#[test]
fn groups_lists_the_servers_groups_and_fingerprint() {
    let net = TestNet::loopback();
    let server = ServerProcess::start(&net);
    let fingerprint = server.fingerprint();
    assert!(fingerprint.starts_with("SHA256:") && fingerprint.len() == 7 + 64, "{fingerprint}");

    let output = ClientHome::new(&net).run(&["groups", "--wait", "1s"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.contains("    Developers\n") && stdout.contains("    Designers\n"), "{stdout}");
    assert!(stdout.contains(&fingerprint), "{stdout}");
    assert!(stdout.contains("unverified"), "an unpinned client must say the answer is unverified:\n{stdout}");
}

#[test]
fn groups_ends_as_soon_as_the_servers_that_answered_have_said_everything() {
    let net = TestNet::loopback();
    let server = ServerProcess::start(&net);
    let started = std::time::Instant::now();
    // A long window: it ends when the one server's whole announcement is in, not after it.
    let output = ClientHome::new(&net).run(&["groups", "--wait", "60s"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains(&server.fingerprint()));
    assert!(started.elapsed() < Duration::from_secs(50), "groups waited out its window");
}

#[test]
fn a_pinned_client_shows_its_server_as_verified_and_ignores_other_cas() {
    let net = TestNet::loopback();
    let server = ServerProcess::start(&net);
    let fingerprint = server.fingerprint();

    let pinned = ClientHome::with_extra(&net, &format!("ca_fingerprint = \"{fingerprint}\""));
    let output = pinned.run(&["groups", "--wait", "1s"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.contains("status: verified") && stdout.contains("Developers"), "{stdout}");

    let other = CertificateAuthority::generate("other", time::OffsetDateTime::now_utc()).unwrap();
    let pinned_elsewhere = ClientHome::with_extra(&net, &format!("ca_fingerprint = \"{}\"", other.fingerprint()));
    let output = pinned_elsewhere.run(&["groups", "--wait", "1s"]);
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(text(&output.stdout).is_empty());
    assert!(stderr.contains("from another CA"), "{stderr}");
    assert!(stderr.contains("error: no gshare server with the pinned CA"), "{stderr}");
}

#[test]
fn forged_stale_future_and_replayed_announcements_are_not_shown() {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    let ca = server.certificate_authority();
    let observer = GroupObserver::join(&net);

    // Capture a genuine announcement, to replay it later.
    observer.send(&datagram::list_request(UnixMillis(now_ms()), Nonce([1; 16])));
    let genuine = observer
        .receive_until(Duration::from_secs(10), |bytes| {
            matches!(decode(bytes).ok()?.datagram.message, Message::Announcement(_)).then(|| bytes.to_vec())
        })
        .expect("the server announces after a list request");
    // From here on the test alone answers: `groups` stops 0.3 s after the first complete
    // announcement, and the server's own answer could beat the datagrams below to it (on a
    // busy machine, by more than that).
    server.kill();

    let impostor = CertificateAuthority::generate("impostor", time::OffsetDateTime::now_utc()).unwrap();
    let forged = announcement(ca.certificate_der(), &impostor, &["Intruders"], now_ms());
    let stale = announcement(ca.certificate_der(), &ca, &["Yesterday"], now_ms() - 120_000);
    let future = announcement(ca.certificate_der(), &ca, &["Tomorrow"], now_ms() + 120_000);

    let home = ClientHome::new(&net);
    let client = home
        .command()
        .args(["groups", "--wait", "2s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The client joins the group before it sends its list request; once we see that, it listens.
    observer
        .receive_until(Duration::from_secs(10), |bytes| {
            matches!(decode(bytes).ok()?.datagram.message, Message::ListRequest).then_some(())
        })
        .expect("the client sends a list request");
    for bytes in [&forged, &stale, &future, &genuine, &genuine, &genuine] {
        observer.send(bytes);
    }
    let output = client.wait_with_output().unwrap();
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("Developers"), "{stdout}");
    for intruder in ["Intruders", "Yesterday", "Tomorrow"] {
        assert!(!stdout.contains(intruder), "{intruder} was shown:\n{stdout}");
    }
    assert!(stdout.matches("server 127.0.0.1:").count() == 1, "one server only:\n{stdout}");
    for reason in ["1 bad signature", "1 stale", "1 future-dated", "replayed"] {
        assert!(stderr.contains(reason), "no {reason:?} in the warning:\n{stderr}");
    }
}

#[test]
fn ten_thousand_garbage_datagrams_do_not_stop_the_server_answering() {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    let observer = GroupObserver::join(&net);
    let valid = datagram::list_request(UnixMillis(now_ms()), Nonce([2; 16]));
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        // xorshift: cheap, reproducible noise
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..10_000u32 {
        let garbage: Vec<u8> = match i % 4 {
            // random bytes of random length, some beyond the size limit
            0 => (0..next() % 1500).map(|_| next() as u8).collect(),
            // a valid header with a corrupted tail
            1 => {
                let mut bytes = valid.clone();
                let at = (next() as usize) % bytes.len();
                bytes[at] ^= 0xff;
                bytes.extend((0..next() % 64).map(|_| next() as u8));
                bytes
            }
            // truncated
            2 => valid[..(next() as usize) % valid.len()].to_vec(),
            // an announcement kind with a lying body length
            _ => {
                let mut bytes = valid.clone();
                bytes[3] = 2;
                bytes[28] = 0xff;
                bytes
            }
        };
        observer.send(&garbage);
    }
    server.wait_for_log("dropped datagram", Duration::from_secs(10));

    let output = ClientHome::new(&net).run(&["groups", "--wait", "1s"]);
    assert!(output.status.success(), "{}\n{}", text(&output.stderr), server.log());
    assert!(text(&output.stdout).contains("Developers"));
    assert!(server.is_running());
}

#[test]
fn several_clients_on_one_host_and_a_restarted_server_share_the_port() {
    let net = TestNet::loopback();
    let server = ServerProcess::start(&net);
    let fingerprint = server.fingerprint();
    let homes: Vec<ClientHome> = (0..3).map(|_| ClientHome::new(&net)).collect();
    let children: Vec<_> = homes
        .iter()
        .map(|home| {
            home.command().args(["groups", "--wait", "1s"]).stdout(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        assert!(text(&output.stdout).contains("Designers"));
    }

    let mut server = server;
    server.restart();
    assert_eq!(server.fingerprint(), fingerprint, "a restart must keep the CA");
    let output = homes[0].run(&["groups", "--wait", "1s"]);
    assert!(text(&output.stdout).contains(&fingerprint), "{}", text(&output.stderr));
}
