//! Running as a service: the systemd units in `contrib/systemd/` pass `systemd-analyze verify`
//! (where systemd is installed; elsewhere SKIPPED), and the server tells a service manager it
//! is ready (`Type=notify`) only once it listens.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gshare_tests::{TestNet, bin_dir, text};

fn contrib(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd").join(name)).unwrap()
}

#[test]
fn the_systemd_units_verify_clean() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("SKIPPED the_systemd_units_verify_clean: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The units name the installed paths; here, the binaries just built stand in for them.
    let server = contrib("gshare-server.service")
        .replace("/usr/local/bin/gshare-server", bin_dir().join("gshare-server").to_str().unwrap());
    let listen = contrib("gshare-listen@.service")
        .replace("%h/.local/bin/gshare-client", bin_dir().join("gshare-client").to_str().unwrap());
    std::fs::write(dir.path().join("gshare-server.service"), server).unwrap();
    std::fs::write(dir.path().join("gshare-listen@Developers.service"), listen).unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("gshare-server.service"))
        .arg(dir.path().join("gshare-listen@Developers.service"))
        .output()
        .unwrap();
    let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(output.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn the_server_tells_a_service_manager_it_is_ready_once_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let net = TestNet::loopback();
    let port = gshare_tests::free_tcp_port();
    let config_path = dir.path().join("server.toml");
    std::fs::write(&config_path, gshare_tests::default_server_toml(&net, port)).unwrap();
    let mut child = Command::new(bin_dir().join("gshare-server"))
        .arg("--config")
        .arg(&config_path)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buffer = [0u8; 256];
    let received = socket.recv(&mut buffer);
    // Ready means ready: the TLS port takes connections the moment the manager is told.
    let listening = std::net::TcpStream::connect(("127.0.0.1", port));
    let _ = child.kill();
    let _ = child.wait();
    let len = received.expect("no READY=1 within 60 s");
    assert_eq!(&buffer[..len], b"READY=1");
    assert!(listening.is_ok(), "READY=1 before the server listened: {listening:?}");
}
