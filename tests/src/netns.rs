//! Hosts of a test's own: network namespaces joined by a bridge that lives in a namespace too,
//! so nothing is added to the root namespace and no traffic reaches a real interface.
//! Addresses are from TEST-NET-1 (192.0.2.0/24), MTU 1500; a link may be held to a rate by a
//! token bucket in both directions, as a LAN whose links are the limit.
//!
//! Creating namespaces needs root (CI has it). Tests that cannot create them say so on stderr
//! and pass without running, rather than fail on a machine that cannot host them.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::{ClientHome, Listener, OutputLines, client_bin, text};

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
/// attached to the bridge.
pub fn build_lan(prefix: &str, hosts: &[(&str, &str)]) -> Result<Namespaces, String> {
    build_shaped_lan(prefix, hosts, None)
}

/// [`build_lan`], with every host's link held to `mbit` Mbit/s each way when given (a token
/// bucket on the host's `eth0` and on its bridge port).
pub fn build_shaped_lan(prefix: &str, hosts: &[(&str, &str)], mbit: Option<u32>) -> Result<Namespaces, String> {
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
