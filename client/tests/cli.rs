//! The `gshare-client` command line: with no server, a bad client.toml or a bad flag it exits
//! non-zero with a one-line reason.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::net::UdpSocket;
use std::process::{Command, Output};

fn client(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gshare-client")).arg("--home").arg(home).args(args).output().unwrap()
}

/// A client.toml on loopback with a port (and group) nobody else uses.
fn quiet_loopback_toml() -> String {
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let [high, low] = port.to_be_bytes();
    format!(
        "[multicast]\ngroup = \"239.255.{}.{low}\"\nport = {port}\ninterface = \"127.0.0.1\"\nttl = 0\n",
        high.max(1)
    )
}

#[test]
fn groups_without_a_server_fails_with_a_reason() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("client.toml"), quiet_loopback_toml()).unwrap();
    let output = client(home.path(), &["groups", "--wait", "300ms"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: no gshare server answered on 239.255."), "{stderr}");
    assert!(stderr.contains("within 300ms"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn a_bad_client_toml_names_its_line_and_key() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("client.toml"), "[multicast]\ninterface = \"lo\"\n").unwrap();
    let output = client(home.path(), &["groups"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("client.toml: line 2: multicast.interface: invalid IPv4 address syntax"), "{stderr}");
}

#[test]
fn a_bad_wait_is_refused_before_anything_is_sent() {
    let home = tempfile::tempdir().unwrap();
    let output = client(home.path(), &["groups", "--wait", "soon"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid value 'soon' for '--wait <DURATION>'"));
}
