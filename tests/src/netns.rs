//! Hosts of a test's own: network namespaces joined by a bridge that lives in a namespace too,
//! so nothing is added to the root namespace and no traffic reaches a real interface.
//! Addresses are from TEST-NET-1 (192.0.2.0/24), MTU 1500; a link may be held to a rate by a
//! token bucket in both directions, as a LAN whose links are the limit.
//!
//! Creating namespaces needs root (CI has it). Tests that cannot create them say so on stderr
//! and pass without running, rather than fail on a machine that cannot host them.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::{ClientHome, Listener, OutputLines, ServerProcess, TestNet, client_bin, text};

/// Namespaces made by this test, deleted (with their interfaces) on drop.
#[derive(Debug)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    pub fn create(prefix: &str, hosts: &[&str]) -> Result<Self, String> {
        let mut made = Self { names: Vec::new() };
        for host in hosts {
            let name = format!("{prefix}-{host}");
            ip(&["netns", "add", &name])?;
            made.names.push(name);
        }
        Ok(made)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), text(&output.stderr).trim()))
    }
}

/// Builds bridge namespace `br` with `br0`, and one host namespace per address with `eth0`
/// attached to the bridge, every host's link held to `mbit` Mbit/s each way when given (a
/// token bucket on the host's `eth0` and on its bridge port).
fn build_shaped_lan(prefix: &str, hosts: &[(&str, &str)], mbit: Option<u32>) -> Result<Namespaces, String> {
    let mut names: Vec<&str> = vec!["br"];
    names.extend(hosts.iter().map(|(host, _)| *host));
    let namespaces = Namespaces::create(prefix, &names)?;
    let bridge = format!("{prefix}-br");
    ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
    ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
    for (index, (host, address)) in hosts.iter().enumerate() {
        let namespace = format!("{prefix}-{host}");
        let port = format!("port{index}");
        ip(&[
            "-n", &bridge, "link", "add", &port, "mtu", "1500", "type", "veth", "peer", "name", "eth0", "netns",
            &namespace,
        ])?;
        ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"])?;
        ip(&["-n", &namespace, "addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
        ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        if let Some(mbit) = mbit {
            // The bucket below splits any send larger than its burst into single packets
            // (bench/run.py says why that matters); sends of at most 60,000 bytes pass whole.
            ip(&["-n", &namespace, "link", "set", "dev", "eth0", "gso_max_size", "60000"])?;
            let rate = format!("{mbit}mbit");
            let shape = ["root", "tbf", "rate", &rate, "burst", "64kb", "latency", "50ms"];
            tc(&namespace, &[&["qdisc", "add", "dev", "eth0"][..], &shape[..]].concat())?;
            tc(&bridge, &[&["qdisc", "add", "dev", &port][..], &shape[..]].concat())?;
        }
    }
    Ok(namespaces)
}

fn tc(namespace: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(["netns", "exec", namespace, "tc"])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run tc: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("tc {}: {}", args.join(" "), text(&output.stderr).trim()))
    }
}

/// Bytes `namespace`'s `eth0` has sent so far.
pub fn sent_bytes(namespace: &str) -> u64 {
    let output = Command::new("ip")
        .args(["netns", "exec", namespace, "cat", "/sys/class/net/eth0/statistics/tx_bytes"])
        .output()
        .expect("read interface counters");
    text(&output.stdout).trim().parse().expect("a byte count")
}

/// `gshare-client --home HOME listen --group G... --out OUT` inside `namespace`.
pub fn listener_in(namespace: &str, home: &ClientHome, groups: &[&str], out: &Path) -> Listener {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", namespace]).arg(client_bin()).arg("--home").arg(home.path()).arg("listen");
    for group in groups {
        command.args(["--group", group]);
    }
    command
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child: Child = command.spawn().expect("start listen");
    let output = OutputLines::collect(vec![
        Box::new(child.stdout.take().expect("stdout")),
        Box::new(child.stderr.take().expect("stderr")),
    ]);
    Listener::from_parts(child, output)
}

/// `gshare-client --home HOME ARGS...` inside namespace `namespace`, with `stdin` as input.
pub fn client_in(namespace: &str, home: &ClientHome, args: &[&str], stdin: &str) -> std::process::Output {
    crate::run_with_stdin(
        Command::new("ip")
            .args(["netns", "exec", namespace])
            .arg(client_bin())
            .arg("--home")
            .arg(home.path())
            .args(args),
        stdin,
    )
}

/// The server host's address on every test LAN (its host is named `server`).
pub const SERVER_ADDRESS: &str = "192.0.2.1";

/// A LAN of a test's own: its namespaces (removed on drop) and the prefix of their names.
#[derive(Debug)]
pub struct Lan {
    prefix: String,
    _namespaces: Namespaces,
}

impl Lan {
    /// Builds the LAN for test `test` (hosts named and addressed as `hosts`, links shaped to
    /// `mbit` when given), or says on stderr that the test is skipped and returns `None` where
    /// network namespaces cannot be created.
    pub fn build(test: &str, prefix: &str, hosts: &[(&str, &str)], mbit: Option<u32>) -> Option<Self> {
        match build_shaped_lan(prefix, hosts, mbit) {
            Ok(namespaces) => Some(Self { prefix: prefix.to_owned(), _namespaces: namespaces }),
            Err(reason) => {
                eprintln!("SKIPPED {test}: cannot create network namespaces ({reason})");
                None
            }
        }
    }

    /// The namespace of host `host`.
    pub fn namespace(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// The multicast settings of the host at `address`: the group and port every host shares.
    pub fn net(address: &str) -> TestNet {
        TestNet {
            group: "239.255.70.70".parse().expect("a group"),
            port: 7070,
            interface: address.parse().expect("an address"),
        }
    }

    /// Starts gshare-server on the server host, with `groups`, TLS on port 7443, multicast
    /// with TTL 1 and no loop back.
    pub fn start_server(&self, groups: &[&str]) -> ServerProcess {
        let net = Self::net(SERVER_ADDRESS);
        let groups: Vec<String> = groups.iter().map(|group| format!("\"{group}\"")).collect();
        let config = format!(
            "groups = [{}]\n[tls]\nlisten = \"{SERVER_ADDRESS}:7443\"\n\n{}",
            groups.join(", "),
            net.multicast_toml().replace("ttl = 0", "ttl = 1").replace("loop = true", "loop = false")
        );
        ServerProcess::start_with(&net, &config, &["ip", "netns", "exec", &self.namespace("server")])
    }

    /// A client home for the host at `address`: client.toml with the LAN's multicast settings
    /// (TTL 1), and `extra` after them.
    pub fn home(address: &str, extra: &str) -> ClientHome {
        let home = ClientHome::new(&Self::net(address));
        let toml = std::fs::read_to_string(home.path().join("client.toml"))
            .expect("client.toml")
            .replace("ttl = 0", "ttl = 1");
        std::fs::write(home.path().join("client.toml"), format!("{toml}\n{extra}")).expect("write client.toml");
        home
    }
}
