//! The Prometheus endpoint: scraped over plain HTTP, well-formed OpenMetrics text, and numbers
//! that follow what happened (an enrollment and a refused one, a refused join, a garbage
//! datagram, a delivery).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::io::{Read, Write};
use std::time::Duration;

use gshare_tests::{ClientHome, GroupObserver, Listener, ServerProcess, TestNet, free_tcp_port, random_file};

const PASSWORD: &str = "correct horse battery staple";
const LONG: Duration = Duration::from_secs(60);

/// `GET path` over HTTP/1.1; returns the status line and the body.
fn get(port: u16, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the sample `name` (with its labels, as written), after checking that every
/// line of the exposition is well formed.
fn sample(body: &str, name: &str) -> Option<f64> {
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "{body}");
    for line in &lines {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") || *line == "# EOF" {
            continue;
        }
        let (_, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
        assert!(line.starts_with("gshare_"), "unprefixed {line:?}");
    }
    lines.iter().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_follow_enrollments_refusals_dropped_datagrams_and_deliveries() {
    let net = TestNet::loopback();
    let (tls, metrics) = (free_tcp_port(), free_tcp_port());
    let config =
        format!("{}\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n", gshare_tests::default_server_toml(&net, tls));
    let mut server = ServerProcess::start_with(&net, &config, &[]);
    server.tls_address = Some(format!("127.0.0.1:{tls}"));
    server.add_user("alice", "Developers", PASSWORD);

    let (status, body) = get(metrics, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(sample(&body, "gshare_enrollments_total"), Some(0.0), "{body}");
    assert_eq!(sample(&body, "gshare_deliveries{state=\"pending\"}"), Some(0.0), "{body}");
    assert_eq!(get(metrics, "/other").0, "HTTP/1.1 404 Not Found");

    let stranger = ClientHome::new(&net);
    assert!(!stranger.enroll(&server, "alice", "not the password").status.success());
    let home = ClientHome::enrolled(&net, &server, "alice", PASSWORD);
    assert!(!home.run(&["join", "--group", "Designers"]).status.success());
    GroupObserver::join(&net).send(b"not a datagram");
    let out = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(&home, &["Developers"], out.path());
    listener.wait_for("waiting for files", LONG);
    let source = tempfile::tempdir().unwrap();
    let file = random_file(source.path(), "metrics.bin", 1 << 20, 91);
    assert!(server.send("Developers", &[&file], true).status.success());

    let body = get(metrics, "/metrics").1;
    let value = |name: &str| sample(&body, name).unwrap_or_else(|| panic!("no {name} in\n{body}"));
    assert_eq!(value("gshare_enrollments_total"), 1.0);
    assert_eq!(value("gshare_enrollment_refusals_total{reason=\"wrong_credentials\"}"), 1.0);
    assert_eq!(value("gshare_join_refusals_total{reason=\"notallowed\"}"), 1.0);
    assert!(value("gshare_dropped_datagrams_total{reason=\"malformed\"}") >= 1.0);
    assert_eq!(value("gshare_sessions_online"), 1.0);
    assert_eq!(value("gshare_deliveries{state=\"delivered\"}"), 1.0);
    assert!(value("gshare_bytes_sent_total") >= (1 << 20) as f64);
    assert_eq!(value("gshare_transfer_duration_seconds_count"), 1.0);
}
