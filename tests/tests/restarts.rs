//! A server that is down, restarting, or dies in the middle of an answer: `listen` waits for it
//! instead of giving up, and `send` never reports success for what the server did not record.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use gshare_tests::{ClientHome, Listener, ServerProcess, TestNet, random_file, text};

const PASSWORD: &str = "correct horse battery staple";

fn alice(net: &TestNet, server: &mut ServerProcess, join: bool) -> ClientHome {
    server.add_user("alice", "Developers", PASSWORD);
    let home = ClientHome::enrolled(net, server, "alice", PASSWORD);
    if join {
        assert!(home.run(&["join", "--group", "Developers"]).status.success());
    }
    home
}

#[test]
fn a_listener_started_while_the_server_is_down_waits_for_it() {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    // Not joined yet: the join itself must wait for the server too.
    let home = alice(&net, &mut server, false);
    server.kill();

    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&home, &["Developers"], out.path());
    listener.wait_for("trying again until it answers", Duration::from_secs(20));
    assert_eq!(listener.output().matches("trying again until it answers").count(), 1, "said once");

    server.start_again();
    listener.wait_for("connected to the server at", Duration::from_secs(60));
    let files = tempfile::tempdir().unwrap();
    let file = random_file(files.path(), "after-boot.bin", 100_000, 3);
    let output = server.send("Developers", &[&file], false);
    assert!(output.status.success(), "{}", text(&output.stderr));
    listener.wait_for("received after-boot.bin", Duration::from_secs(30));
    assert_eq!(std::fs::read(out.path().join("after-boot.bin")).unwrap(), std::fs::read(&file).unwrap());
}

#[test]
fn a_joined_member_opens_its_session_without_a_join_reply() {
    let net = TestNet::loopback();
    let mut server = ServerProcess::start(&net);
    let home = alice(&net, &mut server, true);
    // Join requests now go where nobody answers (another multicast port); the TLS session
    // does not need them.
    let toml = std::fs::read_to_string(home.path().join("client.toml")).unwrap();
    let port = TestNet::loopback().port;
    let moved =
        toml.lines().map(|line| if line.starts_with("port") { format!("port = {port}") } else { line.to_owned() });
    std::fs::write(home.path().join("client.toml"), moved.collect::<Vec<_>>().join("\n")).unwrap();

    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&home, &["Developers"], out.path());
    listener.wait_for("connected; waiting for files", Duration::from_secs(30));
    let files = tempfile::tempdir().unwrap();
    let file = random_file(files.path(), "report.bin", 10_000, 4);
    assert!(server.send("Developers", &[&file], false).status.success());
    listener.wait_for("received report.bin", Duration::from_secs(30));
}

#[test]
fn send_says_success_for_a_file_the_server_never_recorded() {
    // Regression: when the server's answers ended early (it died), `send` exited 0.
    // A stand-in for the admin socket answers for the first file and then hangs up.
    let net = TestNet::loopback();
    let server = ServerProcess::start(&net);
    let state = server.state_dir();
    let mut server = server;
    server.kill();
    let socket_path = state.join("admin.sock");
    let _ = std::fs::remove_file(&socket_path);
    let socket = std::os::unix::net::UnixListener::bind(&socket_path).unwrap();
    let stand_in = std::thread::spawn(move || {
        let (stream, _) = socket.accept().unwrap();
        let mut request = String::new();
        BufReader::new(&stream).read_line(&mut request).unwrap();
        let answer = r#"{"recorded":{"name":"first.bin","size":3,"sha256":"00","deliveries":[]}}"#;
        (&stream).write_all(format!("{answer}\n").as_bytes()).unwrap();
        request
    });
    let files = tempfile::tempdir().unwrap();
    let first = random_file(files.path(), "first.bin", 3, 1);
    let second = random_file(files.path(), "second.bin", 3, 2);
    let output = server.send("Developers", &[&first, &second], false);
    assert!(stand_in.join().unwrap().contains("second.bin"));
    assert!(!output.status.success(), "send exited 0: {}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("ended before it was complete"), "{stderr}");
    assert!(stderr.contains("recorded (they will be delivered): first.bin"), "{stderr}");
    assert!(
        stderr.contains("not confirmed (the server may have recorded them; see `gshare-server status`"),
        "{stderr}"
    );
    assert!(stderr.contains("before sending them again): second.bin"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
