//! What one member, or one stranger, can do to everyone else: the review's findings (issue 13),
//! each as the regression test named after what broke. Every test runs the real server on
//! loopback; the hostile side speaks the protocol itself (tests/src/raw.rs). A second loopback
//! address (127.0.0.2) stands in for another host.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use gshare_proto::frame::Frame;
use gshare_tests::raw::{self, answer_to_raw_bytes, client_config, first_answer, runtime, subscribed, take_offer};
use gshare_tests::{
    ClientHome, Listener, ServerProcess, TestNet, default_server_toml, free_tcp_port, random_file, text, wait_until,
};

const PASSWORD: &str = "correct horse battery staple";

/// A server with `extra` appended to the default server.toml (a `[limits]` table, say).
fn server_with(net: &TestNet, extra: &str) -> ServerProcess {
    let port = free_tcp_port();
    let mut server = ServerProcess::start_with(net, &format!("{}\n{extra}", default_server_toml(net, port)), &[]);
    server.tls_address = Some(format!("127.0.0.1:{port}"));
    server
}

/// A member enrolled and joined to `groups`.
fn member(net: &TestNet, server: &mut ServerProcess, user: &str, groups: &[&str]) -> ClientHome {
    server.add_user(user, &groups.join(","), PASSWORD);
    let home = ClientHome::enrolled(net, server, user, PASSWORD);
    for group in groups {
        let output = home.run(&["join", "--group", group]);
        assert!(output.status.success(), "join {group}: {}", text(&output.stderr));
    }
    home
}

fn pem_der(path: &Path) -> Vec<u8> {
    gshare_certs::authority::pem_certificate_der(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The member's own TLS identity, for speaking the protocol as it.
fn member_config(home: &ClientHome) -> std::sync::Arc<rustls::ClientConfig> {
    let ca = pem_der(&home.path().join("ca.crt"));
    let certificate = pem_der(&home.path().join("client.crt"));
    let key = std::fs::read_to_string(home.path().join("client.key")).unwrap();
    client_config(&ca, Some((&certificate, &key)))
}

fn stranger_config(home: &ClientHome) -> std::sync::Arc<rustls::ClientConfig> {
    client_config(&pem_der(&home.path().join("ca.crt")), None)
}

#[test]
fn one_member_stalls_every_transfer() {
    let net = TestNet::loopback();
    let mut server = server_with(
        &net,
        "[limits]\nconcurrent_transfers = 2\nsessions_per_certificate = 4\nwrite_timeout_secs = 300\n",
    );
    let mallory = member(&net, &mut server, "mallory", &["Developers"]);
    let alice = member(&net, &mut server, "alice", &["Developers"]);
    let address = server.tls_address.clone().unwrap();
    let rt = runtime();
    let config = member_config(&mallory);

    // Mallory opens as many sessions as a certificate may have; one more is told to wait.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(rt.block_on(subscribed(&address, config.clone(), &["Developers"])).unwrap());
    }
    let fifth = rt.block_on(first_answer(
        &address,
        config.clone(),
        Frame::Subscribe { groups: vec!["Developers".parse().unwrap()] },
    ));
    assert!(matches!(fifth, Ok(Some(Frame::Busy { .. }))), "{fifth:?}");

    // A file larger than every socket buffer between them: Mallory asks for it on every
    // session and then reads nothing.
    let files = tempfile::tempdir().unwrap();
    let big = random_file(files.path(), "big.bin", 32 << 20, 7);
    assert!(server.send("Developers", &[&big], false).status.success());
    for connection in &mut stalled {
        rt.block_on(take_offer(connection));
    }

    // Alice's file still arrives.
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&alice, &["Developers"], out.path());
    listener.wait_for("received big.bin", Duration::from_secs(60));
    assert_eq!(std::fs::read(out.path().join("big.bin")).unwrap(), std::fs::read(&big).unwrap());

    // Removing Mallory ends her blocked transfer at once, long before the write deadline.
    let started = Instant::now();
    assert!(server.command(&["user", "remove", "mallory"], "").status.success());
    server.wait_for_log("access revoked in the middle of a write", Duration::from_secs(20));
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(stalled);
}

#[test]
fn a_member_that_stops_reading_is_dropped_at_the_write_deadline() {
    let net = TestNet::loopback();
    let mut server = server_with(&net, "[limits]\nwrite_timeout_secs = 2\n");
    let mallory = member(&net, &mut server, "mallory", &["Developers"]);
    let address = server.tls_address.clone().unwrap();
    let rt = runtime();
    let mut stalled = rt.block_on(subscribed(&address, member_config(&mallory), &["Developers"])).unwrap();
    let files = tempfile::tempdir().unwrap();
    let big = random_file(files.path(), "big.bin", 32 << 20, 8);
    assert!(server.send("Developers", &[&big], false).status.success());
    rt.block_on(take_offer(&mut stalled));
    server.wait_for_log("peer took no data for 2 seconds", Duration::from_secs(30));
}

/// Opens `count` TCP connections from `source` to `server` and sends nothing on them.
fn half_open_connections(source: Ipv4Addr, server: &str, count: usize) -> Vec<socket2::Socket> {
    let server: SocketAddr = server.parse().unwrap();
    (0..count)
        .filter_map(|_| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
            socket.connect(&server.into()).ok().map(|()| socket)
        })
        .collect()
}

#[test]
fn one_host_locks_everyone_out_of_the_tls_listener() {
    let net = TestNet::loopback();
    // A long handshake deadline: before the fix, each unfinished connection held a place
    // for all of it.
    let mut server = server_with(&net, "[limits]\nhandshake_timeout_secs = 60\n");
    let alice = member(&net, &mut server, "alice", &["Developers"]);
    let address = server.tls_address.clone().unwrap();

    // Another host opens more connections than the server has places, and never speaks.
    let attack = half_open_connections(Ipv4Addr::new(127, 0, 0, 2), &address, 300);
    assert!(attack.len() >= 250, "the attacking host opened {} connections", attack.len());
    server.wait_for_log("connections turned away", Duration::from_secs(20));

    // A member's session still opens promptly, and a new person still enrolls.
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut listener = Listener::start(&alice, &["Developers"], out.path());
    listener.wait_for("connected; waiting for files", Duration::from_secs(20));
    assert!(started.elapsed() < Duration::from_secs(5), "the session took {:?}", started.elapsed());
    server.add_user("bob", "Developers", PASSWORD);
    let started = Instant::now();
    let bob = ClientHome::new(&net);
    let output = bob.enroll(&server, "bob", PASSWORD);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(started.elapsed() < Duration::from_secs(10), "enrollment took {:?}", started.elapsed());
    drop(attack);
}

#[test]
fn password_guesses_are_checked_before_they_are_counted() {
    let net = TestNet::loopback();
    let mut server = server_with(&net, "[limits]\nstrangers_per_address = 64\n");
    server.add_user("alice", "Developers", PASSWORD);
    // Someone enrolled, for the CA certificate to trust.
    server.add_user("carol", "Developers", PASSWORD);
    let probe = ClientHome::enrolled(&net, &server, "carol", PASSWORD);
    let config = stranger_config(&probe);
    let address = server.tls_address.clone().unwrap();

    // Twenty guesses at once, all wrong.
    let rt = runtime();
    let answers: Vec<String> = rt.block_on(async {
        let guesses = (0..20).map(|i| {
            let (address, config) = (address.clone(), config.clone());
            async move {
                let (_key, csr) = gshare_certs::authority::member_key_and_request("alice").unwrap();
                let request = Frame::EnrollRequest {
                    user: "alice".parse().unwrap(),
                    password: gshare_proto::frame::Password::new(format!("guess {i}")).unwrap(),
                    csr,
                };
                match first_answer(&address, config, request).await {
                    Ok(Some(Frame::Refused { reason })) => reason.to_string(),
                    other => format!("{other:?}"),
                }
            }
        });
        let mut answers = Vec::new();
        for answer in futures_join(guesses).await {
            answers.push(answer);
        }
        answers
    });
    let checked = answers.iter().filter(|a| a.contains("wrong user name or password")).count();
    let refused = answers.iter().filter(|a| a.contains("too many failed attempts")).count();
    assert_eq!((checked, refused), (3, 17), "{answers:#?}");
}

/// Runs every future at once on the current runtime and collects their outputs in order.
async fn futures_join<F: Future + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: 'static,
{
    let local = tokio::task::LocalSet::new();
    let handles: Vec<_> = futures.map(|future| local.spawn_local(future)).collect();
    local
        .run_until(async move {
            let mut outputs = Vec::new();
            for handle in handles {
                outputs.push(handle.await.unwrap());
            }
            outputs
        })
        .await
}

#[test]
fn leaving_a_group_keeps_its_files_arriving() {
    let net = TestNet::loopback();
    let mut server = server_with(&net, "");
    let alice = member(&net, &mut server, "alice", &["Developers", "Designers"]);
    let address = server.tls_address.clone().unwrap();
    let files = tempfile::tempdir().unwrap();
    let big = random_file(files.path(), "big.bin", 32 << 20, 9);
    let small = random_file(files.path(), "small.bin", 1000, 10);
    assert!(server.send("Designers", &[&big, &small], false).status.success());

    let rt = runtime();
    let mut session = rt.block_on(subscribed(&address, member_config(&alice), &["Developers", "Designers"])).unwrap();
    let offer = rt.block_on(take_offer(&mut session));
    assert_eq!(offer.name, b"big.bin");
    // Alice leaves Designers while the transfer waits on her.
    let output = alice.run(&["leave", "--group", "Designers"]);
    assert!(output.status.success(), "{}", text(&output.stderr));

    // The transfer is cancelled before its end, and the other file is never offered.
    let (received, ending) = rt.block_on(async {
        let mut received = 0u64;
        loop {
            match tokio::time::timeout(Duration::from_secs(20), session.read_frame()).await {
                Ok(Ok(Some(Frame::Data { bytes, .. }))) => received += bytes.len() as u64,
                other => return (received, other),
            }
        }
    });
    assert!(matches!(ending, Ok(Ok(Some(Frame::Cancel { .. })))), "{ending:?}");
    assert!(received < offer.size, "cancelled after {received} of {} bytes", offer.size);
    let next = rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), session.read_frame()).await });
    assert!(!matches!(next, Ok(Ok(Some(Frame::Offer(_))))), "offered after leaving: {next:?}");

    let status = server.command(&["status", "--json"], "");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let states: Vec<&str> = status["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|file| file["deliveries"].as_array().unwrap())
        .map(|delivery| delivery["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["dropped", "dropped"], "{status:#}");
}

#[test]
fn memory_per_stranger_is_bounded_by_what_enrollment_needs() {
    let net = TestNet::loopback();
    let mut server = server_with(&net, "");
    let alice = member(&net, &mut server, "alice", &["Developers"]);
    let address = server.tls_address.clone().unwrap();
    let rt = runtime();
    // A first frame that declares 64 KiB: refused at its length prefix, at once, instead of
    // waiting (and reserving memory) for bytes that never come.
    let started = Instant::now();
    let answer =
        rt.block_on(answer_to_raw_bytes(&address, stranger_config(&alice), &[0, 1, 0, 0], Duration::from_secs(8)));
    assert!(matches!(&answer, Ok(Some(Frame::Refused { reason })) if reason.as_str().contains("length")), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_clients_enrollment_hangs_on_a_server_that_stops_answering() {
    let net = TestNet::loopback();
    let server = server_with(&net, "");
    let silent = raw::SilentServer::start(&server.state_dir().join("identity"));
    let home = ClientHome::with_extra(&net, "answer_timeout_secs = 2");
    let started = Instant::now();
    let output = home.run_with_stdin(
        &[
            "enroll",
            "--user",
            "alice",
            "--server",
            &silent.address.to_string(),
            "--ca-fingerprint",
            &server.fingerprint(),
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    );
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("did not answer the enrollment in 2 seconds"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(wait_until(Duration::from_secs(1), || !home.path().join("client.crt").exists()));
}

#[test]
fn enrollment_races_removal() {
    let net = TestNet::loopback();
    // A password check slow enough (seconds) for a removal to happen while it runs.
    let mut server = server_with(&net, "[passwords]\nmemory_kib = 65536\niterations = 60\n");
    server.add_user("bob", "Developers", PASSWORD);
    let home = ClientHome::new(&net);
    let address = server.tls_address.clone().unwrap();
    let fingerprint = server.fingerprint();
    let mut enroll = home
        .command()
        .args(["enroll", "--user", "bob", "--server", &address, "--ca-fingerprint", &fingerprint, "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        enroll.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    }
    server.wait_for_log("checking a password", Duration::from_secs(20));
    assert!(server.command(&["user", "remove", "bob"], "").status.success());
    server.wait_for_log("user store reloaded", Duration::from_secs(20));
    let output = enroll.wait_with_output().unwrap();
    assert!(!output.status.success(), "enrolled a user removed meanwhile: {}", text(&output.stdout));

    // A user of the same name added later is someone new: nothing issued before counts.
    server.add_user("bob", "Developers", PASSWORD);
    if home.path().join("client.crt").exists() {
        let rt = runtime();
        let session = rt.block_on(subscribed(&address, member_config(&home), &["Developers"]));
        assert!(session.is_err(), "a certificate issued during the removal opened a session");
    }
}
