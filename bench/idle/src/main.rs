//! How a server holds many idle members: N members (in this process, each with its own home,
//! key and certificate) enroll, join and keep a session open; then the server's resident memory
//! is read from /proc, and a 10 MiB file is sent with `send --wait` and timed until every
//! member has acknowledged it. Everything runs on loopback with a multicast group and ports of
//! its own, and stops by itself.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use gshare_client::ClientSettings;
use gshare_client::enroll::{EnrollOptions, enroll};
use gshare_client::identity::Enrollment;
use gshare_client::listen::{ListenOptions, listen};

const PASSWORD: &str = "benchmark password 1";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let members = arg("--members", 500);
    let file_mib = arg("--file-mib", 10);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let server_bin = root.join("target/release/gshare-server");
    assert!(server_bin.exists(), "build the server first: cargo build --release");
    let work = std::env::temp_dir().join(format!("gshare-idle-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();

    // A free TLS port, and a multicast port (and group) derived from a free UDP port.
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let udp_port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let [high, low] = udp_port.to_be_bytes();
    let multicast = format!(
        "[multicast]\ngroup = \"239.255.{}.{low}\"\nport = {udp_port}\ninterface = \"127.0.0.1\"\nttl = 0\n",
        high.max(1)
    );
    let config = work.join("server.toml");
    std::fs::write(
        &config,
        format!("groups = [\"Everyone\"]\n[tls]\nlisten = \"127.0.0.1:{tls_port}\"\n[limits]\nmax_connections = {}\nmax_strangers = {}\nstrangers_per_address = {}\nrequests_per_sender_per_second = 100000\n{multicast}", members + 64, members + 64, members + 64),
    )
    .unwrap();
    // One hash for every benchmark user: hashing is not what is measured here.
    let hash = gshare_server::users::HashCost::default().hash(PASSWORD).unwrap();
    let users: String =
        (0..members).map(|i| format!("[users.m{i}]\npassword = \"{hash}\"\ngroups = [\"Everyone\"]\n")).collect();
    std::fs::write(work.join("users.toml"), users).unwrap();

    let mut server = tokio::process::Command::new(&server_bin)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let server_pid = server.id().unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("gshare-server ready") {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
            if line.contains("member connected") {
                let _ = connected_tx.send(());
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx).await.expect("server ready").unwrap();
    let fingerprint =
        std::process::Command::new(&server_bin).arg("--config").arg(&config).arg("fingerprint").output().unwrap();
    let fingerprint: gshare_proto::Fingerprint = String::from_utf8(fingerprint.stdout).unwrap().trim().parse().unwrap();
    println!("server up; enrolling {members} members");

    let started = Instant::now();
    let mut homes = Vec::new();
    for i in 0..members {
        let home = work.join(format!("home-m{i}"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("client.toml"), &multicast).unwrap();
        homes.push(home);
    }
    // Two at a time: the server checks passwords two at a time anyway, and counts an
    // enrollment in progress as a failure of its address until it succeeds (all of these come
    // from 127.0.0.1), refusing a fourth at once.
    let mut enrolled = 0;
    for chunk in homes.chunks(2) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|home| {
                let home = home.clone();
                let user = home.file_name().unwrap().to_string_lossy().trim_start_matches("home-").to_owned();
                tokio::spawn(async move {
                    let settings = ClientSettings::load(&home).unwrap();
                    let options = EnrollOptions {
                        user: user.parse().unwrap(),
                        server: Some(format!("127.0.0.1:{tls_port}").parse().unwrap()),
                        ca_fingerprint: Some(fingerprint),
                        password_stdin: false,
                        password: Some(PASSWORD.to_owned()),
                    };
                    enroll(&settings, options).await.unwrap();
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
            enrolled += 1;
        }
    }
    println!("{enrolled} enrolled in {:.1} s", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let outs: Vec<PathBuf> = homes.iter().map(|home| home.join("out")).collect();
    for (home, out) in homes.iter().zip(&outs) {
        std::fs::create_dir_all(out).unwrap();
        let settings = ClientSettings::load(home).unwrap();
        let enrollment = Enrollment::load(home).unwrap();
        let options = ListenOptions { groups: vec!["Everyone".parse().unwrap()], out: Some(out.clone()), exec: None };
        tokio::spawn(async move {
            if let Err(error) = listen(&settings, enrollment, &options).await {
                eprintln!("listen: {error}");
            }
        });
    }
    for _ in 0..members {
        tokio::time::timeout(Duration::from_secs(300), connected_rx.recv()).await.expect("members connect").unwrap();
    }
    println!("{members} members joined and connected in {:.1} s", started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await; // let the sessions settle before reading memory
    let idle_rss = rss_kib(server_pid, "VmRSS:");
    println!(
        "server RSS holding {members} idle members: {} MiB (peak so far {} MiB)",
        idle_rss / 1024,
        rss_kib(server_pid, "VmHWM:") / 1024
    );

    let file = work.join("update.bin");
    std::fs::write(&file, vec![0x5a; file_mib * 1024 * 1024]).unwrap();
    let _ = std::fs::write(format!("/proc/{server_pid}/clear_refs"), "5");
    let started = Instant::now();
    let output = tokio::process::Command::new(&server_bin)
        .arg("--config")
        .arg(&config)
        .args(["send", "--group", "Everyone", "--wait"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let delivered = stdout.matches(": delivered ").count();
    let holding = outs
        .iter()
        .filter(|out| out.join("update.bin").metadata().is_ok_and(|m| m.len() == (file_mib * 1024 * 1024) as u64))
        .count();
    println!(
        "{file_mib} MiB to {members} members: {elapsed:.1} s; {delivered} delivered, {holding} hold the file; server peak RSS while sending {} MiB",
        rss_kib(server_pid, "VmHWM:") / 1024
    );
    println!(
        "{{\"members\": {members}, \"idle_rss_mib\": {}, \"file_mib\": {file_mib}, \"seconds\": {elapsed:.2}, \"delivered\": {delivered}}}",
        idle_rss / 1024
    );
    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&work);
}
