//! Swarm delivery end to end: members pass pieces to each other, as the server directs.
//!
//! On a LAN of network namespaces with every link held to a rate, six members receive a file
//! while the server's host sends it about once; one member that does not serve still receives,
//! and one killed in the middle does not stop the others. On loopback, hostile members speak
//! the protocols themselves with valid member certificates: one serving corrupted pieces, one
//! that the server did not name for the file, and one removed while connected.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use gshare_common::Connection;
use gshare_proto::frame::{FileKey, Frame};
use gshare_tests::netns::{Lan, SERVER_ADDRESS, client_in, listener_in, sent_bytes};
use gshare_tests::raw::{self, runtime};
use gshare_tests::{
    ClientHome, Listener, ServerProcess, TestNet, default_server_toml, free_tcp_port, random_file, text, wait_until,
};

const PASSWORD: &str = "correct horse battery staple";
const LONG: Duration = Duration::from_secs(120);

fn status(server: &ServerProcess) -> serde_json::Value {
    let output = server.command(&["status", "--json"], "");
    assert!(output.status.success(), "{}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Each delivery of the newest file, as `(user, state, from_server, from_peers, bad_peers)`.
fn deliveries(server: &ServerProcess) -> Vec<(String, String, u64, u64, String)> {
    let status = status(server);
    status["files"][0]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["user"].as_str().unwrap().to_owned(),
                d["state"].as_str().unwrap().to_owned(),
                d["from_server"].as_u64().unwrap_or(0),
                d["from_peers"].as_u64().unwrap_or(0),
                d["bad_peers"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn six_members_on_a_shaped_lan_receive_a_file_the_server_sends_about_once() {
    const MEMBERS: usize = 6;
    const SIZE: usize = 24 << 20;
    let prefix = format!("gss{}", std::process::id());
    let mut hosts = vec![("server".to_owned(), SERVER_ADDRESS.to_owned())];
    hosts.extend((1..=MEMBERS).map(|i| (format!("m{i}"), format!("192.0.2.{}", 10 + i))));
    let host_refs: Vec<(&str, &str)> = hosts.iter().map(|(h, a)| (h.as_str(), a.as_str())).collect();
    let test = "six_members_on_a_shaped_lan_receive_a_file_the_server_sends_about_once";
    let Some(lan) = Lan::build(test, &prefix, &host_refs, Some(100)) else { return };
    let server_ns = lan.namespace("server");
    let mut server = lan.start_server(&["Developers"]);
    let fingerprint = server.fingerprint();
    let outs: Vec<tempfile::TempDir> = (0..MEMBERS).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut listeners = Vec::new();
    let mut homes = Vec::new();
    for i in 1..=MEMBERS {
        let (host, address) = (&hosts[i].0, &hosts[i].1);
        let user = format!("member{i}");
        server.add_user(&user, "Developers", PASSWORD);
        // Member 5 takes part without passing anything on.
        let serve = if i == 5 { "serve = false\n" } else { "" };
        let home = Lan::home(address, &format!("[peer]\nlisten = \"{address}:7444\"\n{serve}"));
        let namespace = lan.namespace(host);
        let enroll = [
            "enroll",
            "--user",
            &user,
            "--server",
            "192.0.2.1:7443",
            "--ca-fingerprint",
            &fingerprint,
            "--password-stdin",
        ];
        let output = client_in(&namespace, &home, &enroll, &format!("{PASSWORD}\n"));
        assert!(output.status.success(), "enroll {user}: {}", text(&output.stderr));
        let mut listener = listener_in(&namespace, &home, &["Developers"], outs[i - 1].path());
        listener.wait_for("waiting for files", LONG);
        listeners.push(listener);
        homes.push(home);
    }

    let files = tempfile::tempdir().unwrap();
    let file = random_file(files.path(), "release.tar", SIZE, 11);
    let before = sent_bytes(&server_ns);
    let output = server.send("Developers", &[&file], true);
    assert!(output.status.success(), "send: {}\n{}", text(&output.stderr), text(&output.stdout));
    let sent = sent_bytes(&server_ns) - before;
    let expected = std::fs::read(&file).unwrap();
    for (i, out) in outs.iter().enumerate() {
        assert!(
            std::fs::read(out.path().join("release.tar")).unwrap() == expected,
            "member{} holds other bytes",
            i + 1
        );
    }
    let rows = deliveries(&server);
    assert!(rows.iter().all(|row| row.1 == "delivered"), "{rows:?}");
    let from_peers: u64 = rows.iter().map(|row| row.3).sum();
    eprintln!(
        "server host sent {:.2}x the file; members took {:.2}x it from each other",
        sent as f64 / SIZE as f64,
        from_peers as f64 / SIZE as f64
    );
    assert!(sent < 2 * SIZE as u64, "the server's host sent {sent} bytes for a {SIZE}-byte file: {rows:?}");
    assert!(from_peers > SIZE as u64, "members passed on only {from_peers} bytes");
    let non_serving = &rows.iter().find(|row| row.0 == "member5").unwrap();
    assert!(non_serving.2 + non_serving.3 >= SIZE as u64, "member5 (serve = false) received: {non_serving:?}");

    // A member killed in the middle of the next file: the others still finish.
    let second = random_file(files.path(), "second.tar", SIZE, 12);
    let mut send = server.send_command("Developers", &[&second], true);
    let sending = std::thread::spawn(move || send.output().unwrap());
    assert!(wait_until(LONG, || std::fs::read_dir(outs[2].path())
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".part"))));
    listeners[2].kill();
    let output = sending.join().unwrap();
    assert!(output.status.success(), "send: {}", text(&output.stderr));
    for (i, out) in outs.iter().enumerate().filter(|(i, _)| *i != 2) {
        assert!(out.path().join("second.tar").exists(), "member{} did not finish", i + 1);
    }
    drop(homes);
}

/// A hostile member's side of things: its session with the server, and its own peer listener.
struct Hostile {
    home: ClientHome,
    port: u16,
}

impl Hostile {
    fn member_config(&self) -> Arc<rustls::ClientConfig> {
        let read = |name: &str| std::fs::read_to_string(self.home.path().join(name)).unwrap();
        let ca = gshare_certs::authority::pem_certificate_der(&read("ca.crt")).unwrap();
        let certificate = gshare_certs::authority::pem_certificate_der(&read("client.crt")).unwrap();
        raw::client_config(&ca, Some((&certificate, &read("client.key"))))
    }

    fn peer_config(&self) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let read = |name: &str| std::fs::read_to_string(self.home.path().join(name)).unwrap();
        let ca = gshare_certs::authority::pem_certificate_der(&read("ca.crt")).unwrap();
        let certificate = gshare_certs::authority::pem_certificate_der(&read("client.crt")).unwrap();
        let key = read("client.key");
        (
            gshare_client::tls::peer_server_config(&ca, &certificate, &key).unwrap(),
            gshare_client::tls::peer_client_config(&ca, &certificate, &key).unwrap(),
        )
    }
}

/// Joins the swarm of the next file offered, claiming to hold every piece; returns the file.
async fn join_swarm_claiming_everything(
    address: &str,
    hostile: &Hostile,
) -> (FileKey, Connection<tokio_rustls::client::TlsStream<TcpStream>>) {
    join_swarm(address, hostile, false).await
}

/// Joins the first file's swarm as `hostile`. With `take_every_new_piece`, it tells the server
/// it holds nothing and takes every piece the server hands out as new (so an honest member can
/// get the file only from other members, or from the server by number after a quiet spell);
/// otherwise it claims to hold everything.
async fn join_swarm(
    address: &str,
    hostile: &Hostile,
    take_every_new_piece: bool,
) -> (FileKey, Connection<tokio_rustls::client::TlsStream<TcpStream>>) {
    let tcp = TcpStream::connect(address).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(gshare_certs::SERVER_NAME).unwrap();
    let tls = tokio_rustls::TlsConnector::from(hostile.member_config()).connect(name, tcp).await.unwrap();
    let mut session = Connection::new(tls);
    let subscribe =
        Frame::SubscribeSwarm { groups: vec!["Developers".parse().unwrap()], peer_port: Some(hostile.port) };
    session.write_frame(&subscribe).await.unwrap();
    assert!(matches!(session.read_frame().await, Ok(Some(Frame::Subscribed))));
    let (offer, piece_len) = loop {
        match session.read_frame().await.unwrap() {
            Some(Frame::SwarmOffer { offer, piece_len }) => break (offer, piece_len),
            Some(_) => {}
            None => panic!("session closed"),
        }
    };
    let pieces = gshare_proto::swarm::piece_count(offer.size, piece_len) as u32;
    let mut hashes = 0;
    while hashes < pieces {
        if let Some(Frame::PieceHashes { hashes: part, .. }) = session.read_frame().await.unwrap() {
            hashes += part.len() as u32;
        }
    }
    let mut claimed = gshare_proto::swarm::Bits::new(pieces);
    if !take_every_new_piece {
        (0..pieces).for_each(|piece| claimed.set(piece));
    }
    let accept = Frame::SwarmAccept { delivery: offer.delivery, have: claimed.as_bytes().to_vec() };
    session.write_frame(&accept).await.unwrap();
    if !take_every_new_piece {
        return (offer.sha256, session);
    }
    loop {
        session.write_frame(&Frame::NextPiece { file: offer.sha256 }).await.unwrap();
        loop {
            match session.read_frame().await.unwrap() {
                Some(Frame::Piece { .. }) => break,
                Some(Frame::NoNewPiece { .. }) => return (offer.sha256, session),
                Some(Frame::Ping) => session.write_frame(&Frame::Pong).await.unwrap(),
                Some(_) => {}
                None => panic!("session closed"),
            }
        }
    }
}

/// Serves every member that connects: claims every piece, and answers each request with bytes
/// that are not the piece. Counts the requests it answered.
async fn serve_garbage(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    pieces: u32,
    served: Arc<std::sync::atomic::AtomicU32>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let Ok(tls) = acceptor.accept(tcp).await else { continue };
        tokio::spawn(garbage_on(tls, None, pieces, Arc::clone(&served)));
    }
}

/// On one connection: claims every piece (announcing first for `file`, if given) and answers
/// each request with bytes that are not the piece.
async fn garbage_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    file: Option<FileKey>,
    pieces: u32,
    served: Arc<std::sync::atomic::AtomicU32>,
) {
    let mut connection = Connection::new(stream);
    let mut all = gshare_proto::swarm::Bits::new(pieces);
    (0..pieces).for_each(|piece| all.set(piece));
    // One bitfield per file, as an honest member sends (a second one starts the file over).
    let mut announced = std::collections::HashSet::new();
    if let Some(file) = file {
        announced.insert(file);
        if connection.write_frame(&Frame::Bitfield { file, have: all.as_bytes().to_vec() }).await.is_err() {
            return;
        }
    }
    while let Ok(Some(frame)) = connection.read_frame().await {
        let answer = match frame {
            Frame::Bitfield { file, .. } if announced.insert(file) => {
                Frame::Bitfield { file, have: all.as_bytes().to_vec() }
            }
            Frame::PieceRequest { file, piece } => {
                served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Frame::Piece { file, piece, bytes: vec![0xee; gshare_proto::swarm::PIECE_LEN as usize] }
            }
            _ => continue,
        };
        if connection.write_frame(&answer).await.is_err() {
            return;
        }
    }
}

/// Dials a member's peer port (retrying until it listens) and serves garbage on the connection.
async fn dial_with_garbage(
    hostile: &Hostile,
    port: u16,
    file: FileKey,
    pieces: u32,
    served: Arc<std::sync::atomic::AtomicU32>,
) {
    let (_, config) = hostile.peer_config();
    for _ in 0..600 {
        if let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)).await
            && let Ok(tls) = tokio_rustls::TlsConnector::from(Arc::clone(&config))
                .connect(gshare_client::tls::member_name(), tcp)
                .await
        {
            return garbage_on(tls, Some(file), pieces, served).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn loopback_member(net: &TestNet, server: &mut ServerProcess, user: &str, groups: &str, peer_port: u16) -> ClientHome {
    server.add_user(user, groups, PASSWORD);
    let home = ClientHome::with_extra(net, "");
    let toml = std::fs::read_to_string(home.path().join("client.toml")).unwrap();
    std::fs::write(home.path().join("client.toml"), format!("{toml}\n[peer]\nlisten = \"127.0.0.1:{peer_port}\"\n"))
        .unwrap();
    let output = home.enroll(server, user, PASSWORD);
    assert!(output.status.success(), "enroll {user}: {}", text(&output.stderr));
    for group in groups.split(',') {
        assert!(home.run(&["join", "--group", group]).status.success());
    }
    home
}

fn loopback_server(net: &TestNet) -> ServerProcess {
    let port = free_tcp_port();
    let mut server = ServerProcess::start_with(net, &default_server_toml(net, port), &[]);
    server.tls_address = Some(format!("127.0.0.1:{port}"));
    server
}

#[test]
fn a_peer_serving_corrupted_pieces_is_caught_and_the_file_still_arrives() {
    let net = TestNet::loopback();
    let mut server = loopback_server(&net);
    let mallory_port = free_tcp_port();
    let mallory =
        Hostile { home: loopback_member(&net, &mut server, "mallory", "Developers", mallory_port), port: mallory_port };
    let alice_port = free_tcp_port();
    let alice = loopback_member(&net, &mut server, "alice", "Developers", alice_port);
    let address = server.tls_address.clone().unwrap();
    let files = tempfile::tempdir().unwrap();
    let size = 64 << 20;
    let file = random_file(files.path(), "dataset.bin", size, 21);
    assert!(server.send("Developers", &[&file], false).status.success());

    let rt = runtime();
    let served = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let served_by_dial = Arc::clone(&served);
    let (server_config, _) = mallory.peer_config();
    let pieces = gshare_proto::swarm::piece_count(size as u64, gshare_proto::swarm::PIECE_LEN) as u32;
    let (file_key, _session) = rt.block_on(async {
        let listener = TcpListener::bind(("127.0.0.1", mallory_port)).await.unwrap();
        tokio::spawn(serve_garbage(listener, server_config, pieces, Arc::clone(&served)));
        // Every new piece goes to mallory first, so alice must ask the members (mallory) for
        // pieces before the server gives them by number, however fast the server is.
        join_swarm(&address, &mallory, true).await
    });
    // Mallory also dials alice as soon as she listens (whichever of the two dials, alice must
    // check what arrives).
    let mallory_home = mallory.home.path().to_owned();
    let dialer = Hostile { home: ClientHome { dir: tempfile::tempdir().unwrap() }, port: mallory_port };
    for name in ["ca.crt", "client.crt", "client.key"] {
        std::fs::copy(mallory_home.join(name), dialer.home.path().join(name)).unwrap();
    }
    rt.spawn(
        async move { dial_with_garbage(&dialer, alice_port, file_key, pieces, Arc::clone(&served_by_dial)).await },
    );
    // Keep mallory's side running while alice receives.
    let background =
        std::thread::spawn(move || rt.block_on(async { tokio::time::sleep(Duration::from_secs(90)).await }));

    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&alice, &["Developers"], out.path());
    listener.wait_for("received dataset.bin", LONG);
    assert!(std::fs::read(out.path().join("dataset.bin")).unwrap() == std::fs::read(&file).unwrap(), "bytes differ");
    assert!(
        served.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "alice never asked mallory for a piece:\n{}",
        listener.output()
    );
    assert!(listener.output().contains("did not verify"), "{}", listener.output());
    let alice_row = deliveries(&server).into_iter().find(|row| row.0 == "alice").unwrap();
    assert!(
        wait_until(LONG, || deliveries(&server).iter().any(|row| row.0 == "alice" && row.4.contains("mallory"))),
        "{alice_row:?}"
    );
    let entries: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["dataset.bin"], "nothing else under a final name");
    drop(background);
}

/// Connects to a member's peer port as `hostile` and asks for piece 0 of `file`; the answer.
async fn ask_for_a_piece(port: u16, hostile: &Hostile, file: FileKey) -> Option<Frame> {
    let (_, config) = hostile.peer_config();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config).connect(gshare_client::tls::member_name(), tcp).await.unwrap();
    let mut connection = Connection::new(tls);
    connection.write_frame(&Frame::Bitfield { file, have: vec![0] }).await.unwrap();
    connection.write_frame(&Frame::PieceRequest { file, piece: 0 }).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), connection.read_frame()).await {
            Ok(Ok(Some(Frame::Bitfield { .. } | Frame::Have { .. }))) => continue,
            Ok(Ok(frame)) => return frame,
            _ => return None,
        }
    }
}

#[test]
fn a_member_not_named_for_a_file_is_refused_and_a_removed_member_is_cut_off() {
    let net = TestNet::loopback();
    let mut server = loopback_server(&net);
    let alice_port = free_tcp_port();
    let alice = loopback_member(&net, &mut server, "alice", "Developers", alice_port);
    let eve = Hostile { home: loopback_member(&net, &mut server, "eve", "Designers", free_tcp_port()), port: 0 };
    let bob_port = free_tcp_port();
    let bob = Hostile { home: loopback_member(&net, &mut server, "bob", "Developers", bob_port), port: bob_port };
    let files = tempfile::tempdir().unwrap();
    let file = random_file(files.path(), "plan.pdf", 1 << 20, 31);
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&alice, &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);
    assert!(server.send("Developers", &[&file], false).status.success());
    listener.wait_for("received plan.pdf", LONG);
    let key: FileKey = {
        let digest = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(&file).unwrap());
        digest.as_ref().try_into().unwrap()
    };

    let rt = runtime();
    // Eve holds a valid member certificate, but the server never named her for this file.
    let answer = rt.block_on(ask_for_a_piece(alice_port, &eve, key));
    // Refused: as not named for the file (or, had alice's session with the server been
    // renewed meanwhile, as a file she no longer shares): never a piece.
    assert!(
        matches!(&answer, Some(Frame::PieceRefused { reason, .. })
            if reason.as_str().contains("not named") || reason.as_str().contains("no such file")),
        "{answer:?}\nalice:\n{}",
        listener.output()
    );

    // Bob joins the file's swarm (so alice serves him), then is removed while connected.
    let address = server.tls_address.clone().unwrap();
    let (_session, mut connection) = rt.block_on(async {
        let (_, session) = join_swarm_claiming_everything(&address, &bob).await;
        // Alice learns of bob from the server; then bob's pieces are served.
        let mut served = None;
        for _ in 0..50 {
            let (_, config) = bob.peer_config();
            let tcp = TcpStream::connect(("127.0.0.1", alice_port)).await.unwrap();
            let tls =
                tokio_rustls::TlsConnector::from(config).connect(gshare_client::tls::member_name(), tcp).await.unwrap();
            let mut connection = Connection::new(tls);
            connection.write_frame(&Frame::Bitfield { file: key, have: vec![0] }).await.unwrap();
            connection.write_frame(&Frame::PieceRequest { file: key, piece: 0 }).await.unwrap();
            let mut got_piece = false;
            while let Ok(Ok(Some(frame))) = tokio::time::timeout(Duration::from_secs(5), connection.read_frame()).await
            {
                match frame {
                    Frame::Piece { .. } => {
                        got_piece = true;
                        break;
                    }
                    Frame::PieceRefused { .. } => break,
                    _ => {}
                }
            }
            if got_piece {
                served = Some(connection);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (session, served.expect("alice never served bob, whom the server named"))
    });
    assert!(server.command(&["user", "remove", "bob"], "").status.success());
    let closed = rt.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), connection.read_frame()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(_) => return true,
                Err(_) => return false,
            }
        }
    });
    assert!(closed, "alice kept her connection to bob open after bob was removed");
}

#[test]
fn a_member_that_moved_away_the_only_file_it_shared_with_another_keeps_their_connection() {
    let net = TestNet::loopback();
    let mut server = loopback_server(&net);
    let alice = loopback_member(&net, &mut server, "alice", "Developers,Designers", free_tcp_port());
    let bob = loopback_member(&net, &mut server, "bob", "Developers", free_tcp_port());
    let files = tempfile::tempdir().unwrap();
    let first = random_file(files.path(), "first.bin", 2 << 20, 61);
    let alone = random_file(files.path(), "alone.bin", 1 << 20, 62);
    let third = random_file(files.path(), "third.bin", 2 << 20, 63);
    let (alice_out, bob_out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log = "info,gshare_client::swarm=debug";
    let mut alice_listens = Listener::start_logging(&alice, &["Developers", "Designers"], alice_out.path(), log);
    let mut bob_listens = Listener::start_logging(&bob, &["Developers"], bob_out.path(), log);
    alice_listens.wait_for("waiting for files", LONG);
    bob_listens.wait_for("waiting for files", LONG);
    assert!(server.send("Developers", &[&first], true).status.success());
    alice_listens.wait_for("received first.bin", LONG);
    assert!(wait_until(LONG, || alice_listens.output().contains("member connected")), "{}", alice_listens.output());

    // Alice moves the first file away: the next file, for her alone, leaves her no file she
    // shares with bob; the one after names him again a moment later. The server dropped
    // nobody: their connection stays open for it (closing it would have one of them wait to
    // dial again).
    std::fs::remove_file(alice_out.path().join("first.bin")).unwrap();
    assert!(server.send("Designers", &[&alone], false).status.success());
    assert!(server.send("Developers", &[&third], false).status.success());
    alice_listens.wait_for("received alone.bin", LONG);
    alice_listens.wait_for("received third.bin", LONG);
    bob_listens.wait_for("received third.bin", LONG);
    let output = alice_listens.output();
    assert_eq!(output.matches("member connected").count(), 1, "{output}");
    assert!(!output.contains("member disconnected") && !output.contains("no longer names"), "{output}");
}

#[test]
fn with_swarm_delivery_off_every_member_gets_its_own_copy_from_the_server() {
    let net = TestNet::loopback();
    let port = free_tcp_port();
    let config = format!("{}\n[delivery]\nswarm = false\n", default_server_toml(&net, port));
    let mut server = ServerProcess::start_with(&net, &config, &[]);
    server.tls_address = Some(format!("127.0.0.1:{port}"));
    let alice = loopback_member(&net, &mut server, "alice", "Developers", free_tcp_port());
    let files = tempfile::tempdir().unwrap();
    let file = random_file(files.path(), "direct.bin", 3 << 20, 41);
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&alice, &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);
    assert!(server.send("Developers", &[&file], true).status.success());
    listener.wait_for("received direct.bin", LONG);
    assert_eq!(std::fs::read(out.path().join("direct.bin")).unwrap(), std::fs::read(&file).unwrap());
    let log = server.log();
    assert!(!log.contains("sending in pieces") && log.contains(" sending "), "{log}");
}

#[test]
fn the_same_bytes_sent_again_are_copied_from_what_the_member_holds() {
    let net = TestNet::loopback();
    let mut server = loopback_server(&net);
    let alice = loopback_member(&net, &mut server, "alice", "Developers,Designers", free_tcp_port());
    let files = tempfile::tempdir().unwrap();
    let file = random_file(files.path(), "deck.pdf", 4 << 20, 51);
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&alice, &["Developers", "Designers"], out.path());
    listener.wait_for("waiting for files", LONG);
    assert!(server.send("Developers", &[&file], true).status.success());
    assert!(server.send("Designers", &[&file], true).status.success());
    // One out directory for both groups: the same bytes under the same name are one file.
    listener.wait_for("the same bytes are already here as deck.pdf; no second copy", LONG);
    assert_eq!(std::fs::read(out.path().join("deck.pdf")).unwrap(), std::fs::read(&file).unwrap());
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);
    let second = deliveries(&server).into_iter().find(|row| row.0 == "alice").unwrap();
    assert_eq!((second.2, second.3), (0, 0), "the second copy took nothing over the network: {second:?}");
}
