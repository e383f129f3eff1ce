//! Discovery between hosts: a server and two clients in network namespaces of their own, joined
//! by a bridge that lives in a fourth namespace, so nothing is added to the root namespace and
//! no traffic reaches a real interface. Addresses are from TEST-NET-1 (192.0.2.0/24), MTU 1500.
//!
//! Creating namespaces needs root (CI has it). Where that is not possible the test says so on
//! stderr and passes without running, rather than failing on a machine that cannot host it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::process::Command;
use std::time::{Duration, Instant};

use gshare_proto::membership::MembershipRequest;
use gshare_proto::{Datagram, Message, Nonce, UnixMillis};
use gshare_tests::netns::{Lan, SERVER_ADDRESS, client_in};
use gshare_tests::{ClientHome, text};

#[test]
fn clients_on_other_hosts_discover_enroll_and_join() {
    let prefix = format!("gsh{}", std::process::id());
    let hosts = [("server", SERVER_ADDRESS), ("alice", "192.0.2.2"), ("bob", "192.0.2.3")];
    let Some(lan) = Lan::build("clients_on_other_hosts_discover_enroll_and_join", &prefix, &hosts, None) else {
        return;
    };
    let mut server = lan.start_server(&["Developers", "Designers"]);
    let fingerprint = server.fingerprint();
    server.add_user("alice", "Developers", "correct horse battery staple");

    for (host, address) in &hosts[1..] {
        let home = Lan::home(address, "");
        let namespace = lan.namespace(host);
        let output = client_in(&namespace, &home, &["groups", "--wait", "1s"], "");
        let stdout = text(&output.stdout);
        assert!(output.status.success(), "{host}: {}\nserver log:\n{}", text(&output.stderr), server.log());
        assert!(stdout.contains("server 192.0.2.1:7443"), "{host}: {stdout}");
        assert!(
            stdout.contains(&fingerprint) && stdout.contains("Developers") && stdout.contains("Designers"),
            "{host}: {stdout}"
        );

        if *host == "alice" {
            // Enrollment over TLS, and a join whose reply comes back unicast across the bridge.
            let enroll = ["enroll", "--user", "alice", "--ca-fingerprint", &fingerprint, "--password-stdin"];
            let output = client_in(&namespace, &home, &enroll, "correct horse battery staple\n");
            assert!(output.status.success(), "enroll: {}\n{}", text(&output.stderr), server.log());
            let output = client_in(&namespace, &home, &["join", "--group", "Developers"], "");
            assert_eq!(text(&output.stdout).trim(), "joined Developers", "{}\n{}", text(&output.stderr), server.log());
        }
    }
    assert_eq!(server.members("Developers"), ["alice"]);
}

/// Sends the length-prefixed datagrams in the file `argv[1]` to group `argv[2]`:`argv[3]` from
/// interface `argv[4]`, evenly over `argv[5]` seconds.
const FLOOD_SCRIPT: &str = r#"
import socket, struct, sys, time
data = open(sys.argv[1], 'rb').read()
packets, at = [], 0
while at < len(data):
    (n,) = struct.unpack('>I', data[at:at + 4]); packets.append(data[at + 4:at + 4 + n]); at += 4 + n
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[4]))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
start, seconds = time.monotonic(), float(sys.argv[5])
for i, packet in enumerate(packets):
    due = start + seconds * i / len(packets)
    while time.monotonic() < due:
        time.sleep(0.0005)
    s.sendto(packet, (sys.argv[2], int(sys.argv[3])))
print(len(packets), 'sent in', round(time.monotonic() - start, 2), 's')
"#;

/// Runs `join --group Developers` for `home` in `namespace`; how long it took.
fn timed_join(namespace: &str, home: &ClientHome) -> Duration {
    let started = Instant::now();
    let output = client_in(namespace, home, &["join", "--group", "Developers"], "");
    let took = started.elapsed();
    assert!(output.status.success(), "join: {}", text(&output.stderr));
    took
}

#[test]
fn floods_of_join_requests_do_not_delay_an_honest_join() {
    const DATAGRAMS: usize = 20_000;
    const SECONDS: f64 = 5.0;
    let prefix = format!("gsf{}", std::process::id());
    let hosts = [("server", SERVER_ADDRESS), ("alice", "192.0.2.2"), ("flood", "192.0.2.3")];
    let Some(lan) = Lan::build("floods_of_join_requests_do_not_delay_an_honest_join", &prefix, &hosts, None) else {
        return;
    };
    let mut server = lan.start_server(&["Developers"]);
    let fingerprint = server.fingerprint();
    server.add_user("alice", "Developers", "correct horse battery staple");
    let alice_ns = lan.namespace("alice");
    let home = Lan::home("192.0.2.2", "");
    let enroll = [
        "enroll",
        "--user",
        "alice",
        "--server",
        "192.0.2.1:7443",
        "--ca-fingerprint",
        &fingerprint,
        "--password-stdin",
    ];
    let output = client_in(&alice_ns, &home, &enroll, "correct horse battery staple\n");
    assert!(output.status.success(), "enroll: {}", text(&output.stderr));
    let quiet = timed_join(&alice_ns, &home);

    // Join requests naming alice's real certificate, each fresh and unique, signed by a key
    // that is not hers: each one would cost the server a look-up and a signature check.
    let pem = std::fs::read_to_string(home.path().join("client.crt")).unwrap();
    let certificate = gshare_certs::fingerprint(&gshare_certs::authority::pem_certificate_der(&pem).unwrap());
    let forger = gshare_certs::CertificateAuthority::generate("forger", time::OffsetDateTime::now_utc()).unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut datagrams = Vec::new();
    for _ in 0..DATAGRAMS {
        let request = MembershipRequest { certificate, group: "Developers".parse().unwrap() };
        let bytes = Datagram {
            timestamp: UnixMillis(now_ms),
            nonce: Nonce(gshare_certs::random_bytes().unwrap()),
            message: Message::JoinRequest(request),
        }
        .encode(Some(forger.signer()))
        .unwrap();
        datagrams.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        datagrams.extend_from_slice(&bytes);
    }
    let scratch = tempfile::tempdir().unwrap();
    let flood_file = scratch.path().join("flood.bin");
    std::fs::write(&flood_file, datagrams).unwrap();
    let flood_ns = lan.namespace("flood");
    let flood = Command::new("ip")
        .args(["netns", "exec", &flood_ns, "python3", "-c", FLOOD_SCRIPT])
        .arg(&flood_file)
        .args(["239.255.70.70", "7070", "192.0.2.3", &SECONDS.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    server.wait_for_log("over the sender's rate", Duration::from_secs(10));

    // During the flood: an honest join, and announcements still heard.
    let flooded = timed_join(&alice_ns, &home);
    let groups = client_in(&alice_ns, &home, &["groups", "--wait", "2s"], "");
    assert!(text(&groups.stdout).contains("server 192.0.2.1:7443"), "{}", text(&groups.stderr));
    let flood_output = flood.wait_with_output().unwrap();
    let sent = text(&flood_output.stdout);
    assert!(flood_output.status.success() && sent.contains(&format!("{DATAGRAMS} sent")), "{sent}");
    eprintln!(
        "honest join: {quiet:?} without a flood, {flooded:?} during {DATAGRAMS} forged join requests in {SECONDS} s ({})",
        sent.trim()
    );
    assert!(flooded < quiet + Duration::from_secs(1), "the join took {flooded:?} during the flood, {quiet:?} without");
    assert!(server.is_running());
}
