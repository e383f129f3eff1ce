//! Helpers for gshare's end-to-end tests: start the real `gshare-server` with a temporary
//! config, run the real `gshare-client`, and watch the multicast group from the test itself.
//!
//! Every test gets its own multicast group and port (derived from a free UDP port) and its own
//! TLS port, on the loopback interface, so tests can run in parallel and nothing leaves the
//! machine. Processes are killed and temporary directories removed when the helpers drop.
//!
//! The binaries are found beside the test executable's `deps/` directory, where
//! `cargo test --workspace` and `cargo nextest run --workspace` build them; set
//! `GSHARE_BIN_DIR` to use others.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

pub mod netns;
pub mod raw;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tempfile::TempDir;

/// How long a test waits for a process to become ready before failing.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The directory holding `gshare-server` and `gshare-client`.
///
/// Under cargo the binaries are (re)built first, once per test process: `cargo test -p
/// gshare-tests` alone would otherwise run stale binaries, since this crate cannot depend on
/// binaries. The nested build is a no-op when they are fresh.
pub fn bin_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(dir) = std::env::var_os("GSHARE_BIN_DIR") {
                return PathBuf::from(dir);
            }
            let exe = std::env::current_exe().expect("current_exe");
            // target/<profile>/deps/<test> -> target/<profile>
            let dir = exe.parent().and_then(Path::parent).expect("test executable lives in target/<profile>/deps");
            if let Some(cargo) = std::env::var_os("CARGO") {
                let mut build = Command::new(cargo);
                // Cargo sets per-crate variables for this test process; passed on, they make
                // build scripts that watch them (ring watches CARGO_MANIFEST_DIR) rerun, and the
                // outer and inner builds would rebuild each other's dependencies every time.
                for (key, _) in std::env::vars_os() {
                    let key = key.to_string_lossy();
                    let per_crate = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_"]
                        .iter()
                        .any(|prefix| key.starts_with(prefix))
                        || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR"].contains(&&*key);
                    if per_crate {
                        build.env_remove(&*key);
                    }
                }
                build.args(["build", "--quiet", "--bins", "-p", "gshare-server", "-p", "gshare-client"]);
                if dir.file_name().is_some_and(|name| name == "release") {
                    build.arg("--release");
                }
                let status = build.current_dir(env!("CARGO_MANIFEST_DIR")).status().expect("run cargo build");
                assert!(status.success(), "cargo build of the binaries failed");
            }
            dir.to_owned()
        })
        .clone()
}

fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (which builds it) or set GSHARE_BIN_DIR",
        path.display()
    );
    path
}

pub fn server_bin() -> PathBuf {
    binary("gshare-server")
}

pub fn client_bin() -> PathBuf {
    binary("gshare-client")
}

/// A free port on 127.0.0.1 for TCP.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A multicast group and port of this test's own, on the loopback interface.
#[derive(Debug, Clone, Copy)]
pub struct TestNet {
    pub group: Ipv4Addr,
    pub port: u16,
    pub interface: Ipv4Addr,
}

impl TestNet {
    /// A group in 239.255.0.0/16 and a port both derived from a free UDP port, so that parallel
    /// tests (and a real gshare on 239.255.70.70:7070) never hear each other.
    pub fn loopback() -> Self {
        let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let [high, low] = port.to_be_bytes();
        Self { group: Ipv4Addr::new(239, 255, high.max(1), low), port, interface: Ipv4Addr::LOCALHOST }
    }

    pub fn group_address(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.group, self.port)
    }

    /// The `[multicast]` table for server.toml and client.toml.
    pub fn multicast_toml(&self) -> String {
        format!(
            "[multicast]\ngroup = \"{}\"\nport = {}\ninterface = \"{}\"\nttl = 0\nloop = true\n",
            self.group, self.port, self.interface
        )
    }
}

/// Every line a child process writes on the given streams: kept for failure messages, and
/// handed over one by one for waiting on. Drained for the child's whole life, so it never
/// blocks on a full pipe.
#[derive(Debug)]
pub struct OutputLines {
    all: Arc<Mutex<Vec<String>>>,
    lines: Receiver<String>,
}

/// Why [`OutputLines::wait_for`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFailure {
    TimedOut,
    Exited,
}

impl OutputLines {
    pub fn collect(streams: Vec<Box<dyn std::io::Read + Send>>) -> Self {
        let all = Arc::new(Mutex::new(Vec::new()));
        let (sender, lines) = channel();
        for stream in streams {
            let (shared, sender) = (Arc::clone(&all), sender.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    shared.lock().unwrap().push(line.clone());
                    let _ = sender.send(line);
                }
            });
        }
        Self { all, lines }
    }

    /// The next line containing `needle`, waiting up to `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String, WaitFailure> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return Err(WaitFailure::TimedOut),
                Err(RecvTimeoutError::Disconnected) => return Err(WaitFailure::Exited),
            }
        }
    }

    /// Waits (up to `timeout`) until every stream has ended and its last line is kept: a child
    /// that has exited may still have output in its pipes, not yet read.
    pub fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        self.all.lock().unwrap().join("\n")
    }
}

/// A running `gshare-server` with its own temporary config and state directory.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    pub dir: TempDir,
    pub config: PathBuf,
    /// `HOST:PORT` of the TLS listener, when the helper chose it.
    pub tls_address: Option<String>,
    log: OutputLines,
}

impl ServerProcess {
    /// Starts a server with groups Developers and Designers and waits until it is ready.
    pub fn start(net: &TestNet) -> Self {
        let port = free_tcp_port();
        let mut server = Self::start_with(net, &default_server_toml(net, port), &[]);
        server.tls_address = Some(format!("127.0.0.1:{port}"));
        server
    }

    /// Starts a server with `config_text` as server.toml, run through `wrapper` (for example
    /// `ip netns exec NAME`), and waits until it is ready.
    pub fn start_with(_net: &TestNet, config_text: &str, wrapper: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("server.toml");
        std::fs::write(&config, config_text).unwrap();
        let mut server = Self::spawn(dir, config, wrapper);
        server.wait_for_log("gshare-server ready", STARTUP_TIMEOUT);
        server
    }

    /// Kills the server and starts it again on the same config and state, as after a crash.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.child, self.log) = Self::launch(&self.config, &[]);
        self.wait_for_log("gshare-server ready", STARTUP_TIMEOUT);
    }

    fn spawn(dir: TempDir, config: PathBuf, wrapper: &[&str]) -> Self {
        let (child, log) = Self::launch(&config, wrapper);
        Self { child, dir, config, tls_address: None, log }
    }

    fn launch(config: &Path, wrapper: &[&str]) -> (Child, OutputLines) {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(server_bin());
                command
            }
            None => Command::new(server_bin()),
        };
        let mut child = command
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = OutputLines::collect(vec![Box::new(child.stderr.take().unwrap())]);
        (child, log)
    }

    /// Waits until the server logs a line containing `needle`, and returns it.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        match self.log.wait_for(needle, timeout) {
            Ok(line) => line,
            Err(WaitFailure::TimedOut) => panic!("server did not log {needle:?} in {timeout:?}:\n{}", self.log()),
            Err(WaitFailure::Exited) => panic!("server exited before logging {needle:?}:\n{}", self.log()),
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The CA fingerprint, from `gshare-server fingerprint`.
    pub fn fingerprint(&self) -> String {
        let output = Command::new(server_bin()).arg("--config").arg(&self.config).arg("fingerprint").output().unwrap();
        assert!(output.status.success(), "fingerprint failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// Runs `gshare-server --config CONFIG ARGS...` to completion, with `stdin` as its input.
    pub fn command(&self, args: &[&str], stdin: &str) -> Output {
        run_with_stdin(Command::new(server_bin()).arg("--config").arg(&self.config).args(args), stdin)
    }

    /// Adds a user with `user add --password-stdin` and waits until the running server has
    /// reloaded its user store.
    pub fn add_user(&mut self, name: &str, groups: &str, password: &str) {
        let output =
            self.command(&["user", "add", name, "--groups", groups, "--password-stdin"], &format!("{password}\n"));
        assert!(output.status.success(), "user add failed: {}", text(&output.stderr));
        self.wait_for_log("user store reloaded", STARTUP_TIMEOUT);
    }

    /// The members of `group`, from `status --json`.
    pub fn members(&self, group: &str) -> Vec<String> {
        let output = self.command(&["status", "--json"], "");
        assert!(output.status.success(), "status failed: {}", text(&output.stderr));
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let groups = status["groups"].as_array().unwrap();
        let entry =
            groups.iter().find(|g| g["name"] == group).unwrap_or_else(|| panic!("no group {group} in {status}"));
        entry["members"].as_array().unwrap().iter().map(|m| m["user"].as_str().unwrap().to_owned()).collect()
    }

    /// `gshare-server send --group GROUP FILES... [--wait]`, to start and leave running (with
    /// its output piped): to act while it runs, for the server offers a file to members before
    /// `send` returns (while its spool copy goes to the disk).
    pub fn send_command(&self, group: &str, files: &[&Path], wait: bool) -> Command {
        let mut command = Command::new(server_bin());
        command.arg("--config").arg(&self.config).args(["send", "--group", group]).args(files);
        if wait {
            command.arg("--wait");
        }
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command
    }

    /// `gshare-server send --group GROUP FILES... [--wait]`, run to its end.
    pub fn send(&self, group: &str, files: &[&Path], wait: bool) -> Output {
        run_with_stdin(&mut self.send_command(group, files, wait), "")
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again after [`ServerProcess::kill`].
    pub fn start_again(&mut self) {
        (self.child, self.log) = Self::launch(&self.config, &[]);
        self.wait_for_log("gshare-server ready", STARTUP_TIMEOUT);
    }

    /// Resets the peak resident memory the kernel reports (VmHWM), to measure one phase.
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").unwrap();
    }

    /// The server's peak resident memory so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn users_file(&self) -> PathBuf {
        self.dir.path().join("users.toml")
    }

    /// The CA certificate and key, read from the state directory, for crafting datagrams.
    pub fn certificate_authority(&self) -> gshare_certs::CertificateAuthority {
        let dir = self.state_dir().join("identity");
        let cert = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
        let key = std::fs::read_to_string(dir.join("ca.key")).unwrap();
        gshare_certs::CertificateAuthority::from_pem(&cert, &key).unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server.toml every test starts from: two groups, loopback, quick announcements.
pub fn default_server_toml(net: &TestNet, tls_port: u16) -> String {
    format!(
        "groups = [\"Developers\", \"Designers\"]\n\n[tls]\nlisten = \"127.0.0.1:{tls_port}\"\n\n{}\n[announce]\ninterval_secs = 5\n",
        net.multicast_toml()
    )
}

/// A client home with a client.toml pointing at the test's multicast group.
#[derive(Debug)]
pub struct ClientHome {
    pub dir: TempDir,
}

impl ClientHome {
    pub fn new(net: &TestNet) -> Self {
        Self::with_extra(net, "")
    }

    /// `extra` is prepended to client.toml, for top-level keys such as `ca_fingerprint`.
    pub fn with_extra(net: &TestNet, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("client.toml"), format!("{extra}\n{}", net.multicast_toml())).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `gshare-client --home HOME` command, ready for more arguments.
    pub fn command(&self) -> Command {
        let mut command = Command::new(client_bin());
        command.arg("--home").arg(self.path()).stdin(Stdio::null());
        command
    }

    /// Runs `gshare-client --home HOME ARGS...` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs `gshare-client --home HOME ARGS...` with `stdin` as its input.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        run_with_stdin(self.command().args(args), stdin)
    }

    /// Enrolls `user` with `server`, pinning its fingerprint, password from stdin.
    pub fn enroll(&self, server: &ServerProcess, user: &str, password: &str) -> Output {
        let address = server.tls_address.clone().expect("server started by ServerProcess::start");
        let fingerprint = server.fingerprint();
        self.run_with_stdin(
            &["enroll", "--user", user, "--server", &address, "--ca-fingerprint", &fingerprint, "--password-stdin"],
            &format!("{password}\n"),
        )
    }

    /// Enrolls and fails the test if that fails.
    pub fn enrolled(net: &TestNet, server: &ServerProcess, user: &str, password: &str) -> Self {
        let home = Self::new(net);
        let output = home.enroll(server, user, password);
        assert!(output.status.success(), "enroll {user} failed: {}\n{}", text(&output.stderr), server.log());
        home
    }
}

/// A running `gshare-client listen`, its output collected; killed on drop.
#[derive(Debug)]
pub struct Listener {
    child: Child,
    output: OutputLines,
}

impl Listener {
    /// A listener already started, with its output being collected.
    pub fn from_parts(child: Child, output: OutputLines) -> Self {
        Self { child, output }
    }

    /// Starts `gshare-client --home HOME listen --group G... --out OUT`.
    pub fn start(home: &ClientHome, groups: &[&str], out: &Path) -> Self {
        Self::start_logging(home, groups, out, "info")
    }

    /// Starts a listener as [`Listener::start`] does, its log filtered by `log_filter`.
    pub fn start_logging(home: &ClientHome, groups: &[&str], out: &Path, log_filter: &str) -> Self {
        let mut command = home.command();
        command.arg("listen");
        for group in groups {
            command.args(["--group", group]);
        }
        command.arg("--out").arg(out).env("RUST_LOG", log_filter).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let output =
            OutputLines::collect(vec![Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())]);
        Self { child, output }
    }

    /// Waits until the listener prints a line containing `needle`, and returns it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        self.output
            .wait_for(needle, timeout)
            .unwrap_or_else(|_| panic!("listener did not print {needle:?} in {timeout:?}:\n{}", self.output()))
    }

    pub fn output(&self) -> String {
        self.output.text()
    }

    /// Kills the listener with SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the listener to exit by itself and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.output.wait_closed(deadline.saturating_duration_since(Instant::now()));
                return status;
            }
            assert!(Instant::now() < deadline, "listener still running after {timeout:?}:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// A file of `size` pseudo-random bytes (xorshift from `seed`), so corruption cannot hide.
pub fn random_file(dir: &Path, name: &str, size: usize, seed: u64) -> PathBuf {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(size);
    while bytes.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(size);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Runs `command` with `stdin` written to its standard input, and collects its output.
pub fn run_with_stdin(command: &mut Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // A process that exits before reading its input closes the pipe; that is not our failure.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// Text of a process's output, for assertions and failure messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A socket of the test's own that has joined the test's group: to see what is sent there, and
/// to send crafted datagrams to it.
#[derive(Debug)]
pub struct GroupObserver {
    socket: UdpSocket,
    sender: UdpSocket,
    net: TestNet,
}

impl GroupObserver {
    pub fn join(net: &TestNet) -> Self {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket.bind(&SocketAddr::V4(net.group_address()).into()).unwrap();
        socket.join_multicast_v4(&net.group, &net.interface).unwrap();
        let socket: UdpSocket = socket.into();
        let sender = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        sender.set_multicast_if_v4(&net.interface).unwrap();
        sender.set_multicast_ttl_v4(0).unwrap();
        sender.bind(&SocketAddr::from((net.interface, 0)).into()).unwrap();
        let sender: UdpSocket = sender.into();
        Self { socket, sender, net: *net }
    }

    /// Sends raw bytes to the group.
    pub fn send(&self, bytes: &[u8]) {
        self.sender.send_to(bytes, self.net.group_address()).unwrap();
    }

    /// Receives datagrams until `accept` returns something for one, or `timeout` passes.
    pub fn receive_until<T>(&self, timeout: Duration, mut accept: impl FnMut(&[u8]) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut buffer = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.socket.set_read_timeout(Some(left)).unwrap();
            match self.socket.recv(&mut buffer) {
                Ok(len) => {
                    if let Some(found) = accept(&buffer[..len]) {
                        return Some(found);
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) => panic!("receive failed: {e}"),
            }
        }
    }
}
