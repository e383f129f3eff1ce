#!/usr/bin/env python3
"""gshare's fan-out benchmark, beside the machine's ceiling and beside UFTP.

It builds a LAN of its own out of network namespaces: a bridge in one namespace, a server host
and up to 8 member hosts on TEST-NET-1 (192.0.2.0/24), MTU 1500, nothing in the root namespace,
all removed at the end. On it, it runs the real gshare-server and gshare-client binaries (from
target/release), enrolls and joins the members, and for each member count N and file size S
sends a file with `send --wait`, measuring from the send until every member holds the verified
file: wall time, aggregate and per-member throughput, CPU seconds and peak RSS of the server and
of the members. Each case is run several times and the median reported.

Beside it, the transport floor: the same bytes over plain TCP through the same namespaces, with
no encryption, hashing or disk (bench/tcp_floor.py), to show what the kernel's networking alone
costs here. In the same run it measures the ceiling, what no implementation can beat on this CPU: the bytes
that must be encrypted, decrypted and SHA-256 hashed (openssl speed, AES-256-GCM as rustls
negotiates and SHA-256), spread over the cores, and UFTP 4 (Debian's uftp, installed if
missing) with AES-256-GCM delivering the same file to the same hosts.

With `--link-mbit R` every host's link is held to R Mbit/s in both directions by a token
bucket (`tc qdisc ... tbf` on each host's eth0 and on its bridge port), as on a LAN whose
links, not the CPU, are the limit. Each case then also reports the physical limit S / link
(what one copy takes; no distributor beats it), gshare's time as a ratio to it, the bytes the
server's host sent for the file (its eth0 counters), and UFTP at a fixed 95% of the link.

Usage (root, from the repository root, after `cargo build --release`):

    python3 bench/run.py                          # N in 1,4,8; S in 256M,1G; 3 runs
    python3 bench/run.py --members 1,4 --sizes 64M --runs 1 --json bench/out/quick.json
    python3 bench/run.py --link-mbit 100 --members 1,8,16 --sizes 256M --json bench/out/link.json

Every load is bounded: a fixed list of transfers, each with a time limit.

GSHARE_BENCH_KEEP=1 keeps the work directory (logs, received files) for a look afterwards;
GSHARE_BENCH_RUST_LOG sets the programs' log filter (default `info`; for instance
`info,gshare_client=debug` logs each member connection). GSHARE_BENCH_TIMELINE=1 (with
GSHARE_BENCH_KEEP) writes, for each gshare transfer, `timeline-<n>.tsv` in the work directory:
every 100 ms, the bytes each host has received and sent on its link so far (from the bridge
ports' counters), to see where a transfer leaves links idle. GSHARE_BENCH_SYSCTL="key=value ..."
sets kernel settings in every host's namespace, to see what the emulated LAN's own costs do
(for instance net.ipv4.tcp_min_tso_segs=8); the README's figures use none. On a shaped LAN
every host's TCP sends at most 60,000 bytes at once, so that the token buckets pass each send
whole (see Lan.build); GSHARE_BENCH_GSO=<bytes> sets another bound, GSHARE_BENCH_GSO=kernel
leaves the kernel's (64 KiB, which the buckets split into single packets).
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
PREFIX = f"gsb{os.getpid()}"
# The largest send a host's TCP hands its link at once on a shaped LAN (see Lan.build).
GSO_MAX_SIZE = 60000
SERVER_IP = "192.0.2.1"
MEMBER_IP = "192.0.2.{}"  # members are .11, .12, ...
PASSWORD = "benchmark password 1"
TRANSFER_TIMEOUT = 900  # seconds, per transfer
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
# The gshare programs' environment: their log filter from GSHARE_BENCH_RUST_LOG.
PROGRAM_ENV = {**os.environ, "RUST_LOG": os.environ.get("GSHARE_BENCH_RUST_LOG", "info")}


def settle():
    """Before a timed transfer: what the last one wrote is on disk, so that its writeback
    does not run during this one (a run of UFTP to 8 members leaves GiBs of it)."""
    os.sync()


def sh(*args, check=True, **kwargs):
    return subprocess.run([str(a) for a in args], check=check, capture_output=True, text=True, **kwargs)


def ns(name):
    return f"{PREFIX}-{name}"


def in_ns(name, *args):
    return ["ip", "netns", "exec", ns(name), *[str(a) for a in args]]


class Lan:
    """The bridge namespace, the server host and the member hosts; with `link_mbit`, every
    host's link shaped to that rate in both directions."""

    def __init__(self, members, link_mbit=None):
        self.names = []
        self.members = members
        self.link_mbit = link_mbit

    def __enter__(self):
        try:
            return self.build()
        except BaseException:
            self.__exit__()
            raise

    def build(self):
        hosts = [("server", SERVER_IP)] + [(f"m{i}", MEMBER_IP.format(10 + i)) for i in range(1, self.members + 1)]
        for name in ["br"] + [h for h, _ in hosts]:
            sh("ip", "netns", "add", ns(name))
            self.names.append(name)
        # A LAN switch forwards frames without running this machine's firewall rules; where
        # br_netfilter is loaded, the bridge would (per packet, charged to whoever runs).
        sh("ip", "netns", "exec", ns("br"), "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0",
           "net.bridge.bridge-nf-call-ip6tables=0", "net.bridge.bridge-nf-call-arptables=0", check=False)
        sh("ip", "-n", ns("br"), "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        sh("ip", "-n", ns("br"), "link", "set", "br0", "up")
        for index, (host, address) in enumerate(hosts):
            port = f"port{index}"
            sh("ip", "-n", ns("br"), "link", "add", port, "mtu", "1500", "type", "veth", "peer", "name", "eth0", "netns", ns(host))
            sh("ip", "-n", ns("br"), "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns(host), "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "-n", ns(host), "link", "set", "eth0", "up")
            sh("ip", "-n", ns(host), "link", "set", "lo", "up")
            for setting in os.environ.get("GSHARE_BENCH_SYSCTL", "").split():
                sh("ip", "netns", "exec", ns(host), "sysctl", "-qw", setting)
            if self.link_mbit:
                # A token bucket passes no packet larger than its burst (64 KiB, headers of
                # every segment counted): a larger TCP send (the kernel makes them up to 64 KiB
                # of data at once, which a real NIC cuts into frames in hardware) it splits
                # into single 1.5 KB packets, each then crossing the veth pairs, the bridge,
                # the next bucket and the receiver's TCP alone. On one machine emulating every
                # host, that multiplied the CPU's work per byte by up to 45 for whoever sent
                # a lot at once. Sends of at most 60,000 bytes pass whole; the rate is held
                # the same. GSHARE_BENCH_GSO=<bytes> sets another bound, `kernel` none.
                gso = os.environ.get("GSHARE_BENCH_GSO", str(GSO_MAX_SIZE))
                if gso != "kernel":
                    sh("ip", "-n", ns(host), "link", "set", "dev", "eth0", "gso_max_size", gso)
                # Out of the host (its eth0) and into it (its bridge port), each its own bucket.
                shape = ["root", "tbf", "rate", f"{self.link_mbit}mbit", "burst", "64kb", "latency", "50ms"]
                sh("ip", "netns", "exec", ns(host), "tc", "qdisc", "add", "dev", "eth0", *shape)
                sh("ip", "netns", "exec", ns("br"), "tc", "qdisc", "add", "dev", port, *shape)
        return self

    def __exit__(self, *exc):
        for name in self.names:
            sh("ip", "netns", "del", ns(name), check=False)


class Timeline:
    """Samples every host's link counters while a transfer runs (GSHARE_BENCH_TIMELINE)."""

    def __init__(self, path, hosts):
        # Bridge port i faces host i (0: the server): what it sends, the host receives. Bytes,
        # then packets as the veth pair counts them (a batch of segments the kernel sends as
        # one counts once: the unit of its work per packet).
        reads = " ".join(f"/sys/class/net/port{i}/statistics/{counter}" for i in range(hosts + 1)
                         for counter in ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets"))
        script = f'while :; do echo $(date +%s.%N) $(cat {reads}); sleep 0.1; done'
        self.out = open(path, "w")
        self.process = subprocess.Popen(in_ns("br", "sh", "-c", script), stdout=self.out)

    def stop(self):
        self.process.kill()
        self.process.wait()
        self.out.close()


def tx_bytes(host):
    """Bytes `host` has sent on its eth0 so far."""
    return int(sh(*in_ns(host, "cat", "/sys/class/net/eth0/statistics/tx_bytes")).stdout.strip())


def cpu_seconds(pid):
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


def reset_peak(pid):
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wait_for_line(path, needle, timeout, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{path}: process exited before logging {needle!r}:\n{path.read_text(errors='replace')}")
        time.sleep(0.05)
    raise RuntimeError(f"{path}: no {needle!r} within {timeout}s:\n{path.read_text(errors='replace') if path.exists() else ''}")


def parse_size(text):
    units = {"K": 1024, "M": MIB, "G": 1024 * MIB}
    text = text.strip().upper()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def human(size):
    return f"{size // (1024 * MIB)} GiB" if size >= 1024 * MIB else f"{size // MIB} MiB"


def make_file(directory, size):
    path = directory / f"data-{size}"
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = min(left, 16 * MIB)
            out.write(os.urandom(chunk))
            left -= chunk
    return path


# ---------------------------------------------------------------------------------------------
# The ceiling


def openssl_speed(algorithm):
    """Bytes per second of one core for `algorithm` on 16 KiB blocks (TLS record size)."""
    result = sh("openssl", "speed", "-elapsed", "-seconds", "2", "-bytes", "16384", "-evp", algorithm)
    for line in result.stdout.splitlines():
        if line.lower().startswith(algorithm.lower()):
            value = line.split()[-1]
            return float(value.rstrip("k")) * 1000
    raise RuntimeError(f"cannot read openssl speed output:\n{result.stdout}")


def ceiling_seconds(size, members, speeds, cores):
    """CPU work that any secure fan-out must do, spread over every core: the server hashes the
    file once and encrypts it once per member; each member decrypts and hashes it."""
    aes, sha = speeds["aes-256-gcm"], speeds["sha256"]
    work = size / sha + members * size / aes + members * (size / aes + size / sha)
    return work / cores


def member_address(i):
    return f"{MEMBER_IP.format(10 + i)}:7500"


def plain_tcp_seconds(what, receivers, size, targets):
    """Seconds for bench/tcp_floor.py's `source` on the server to send `size` bytes to each of
    `targets` until every receiver is done. `receivers` are (host, tcp_floor.py arguments),
    started in that order, each listening before the next starts."""
    script = ROOT / "bench" / "tcp_floor.py"
    started_receivers = []
    try:
        for host, args in receivers:
            receiver = subprocess.Popen(in_ns(host, sys.executable, script, *args), stdout=subprocess.PIPE, text=True)
            started_receivers.append(receiver)
            if receiver.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{what}: the {args[0]} on {host} did not start")
        started = time.monotonic()
        sh(*in_ns("server", sys.executable, script, "source", size, *targets), timeout=TRANSFER_TIMEOUT)
        for receiver in started_receivers:
            if receiver.wait(timeout=TRANSFER_TIMEOUT) != 0:
                raise RuntimeError(f"{what}: a receiver failed")
        return time.monotonic() - started
    finally:
        for receiver in started_receivers:
            if receiver.poll() is None:
                receiver.kill()
                receiver.wait()


def tcp_floor_seconds(size, members):
    """Seconds for plain TCP to carry `size` bytes to each of `members` hosts through the same
    namespaces: no encryption, hashing or disk (bench/tcp_floor.py)."""
    sinks = [(f"m{i}", ["sink", member_address(i), size]) for i in range(1, members + 1)]
    return plain_tcp_seconds("tcp floor", sinks, size, [member_address(i) for i in range(1, members + 1)])


def tcp_chain_seconds(size, members):
    """Seconds for plain TCP to carry `size` bytes from the server through every member in a
    chain (server -> m1 -> m2 -> ...): each member receives the bytes once and sends them on
    once, one connection each way, with no encryption, hashing or disk. On a shaped LAN this
    is the floor of passing pieces on: no member-to-member design moves less."""
    # The last first, so each member's next is listening when it starts.
    relays = [(f"m{i}", ["relay", member_address(i), size] + ([member_address(i + 1)] if i < members else []))
              for i in range(members, 0, -1)]
    return plain_tcp_seconds("tcp chain", relays, size, [member_address(1)])


# ---------------------------------------------------------------------------------------------
# gshare


class Gshare:
    def __init__(self, workdir, member_counts, swarm=True):
        self.dir = workdir / "gshare"
        self.dir.mkdir()
        members = max(member_counts)
        self.members = members
        self.listeners = {}
        self.sends = 0
        groups = {n: f"B{n}" for n in member_counts}
        self.group_of = groups
        config = self.dir / "server.toml"
        config.write_text(
            f'groups = {json.dumps(list(groups.values()))}\n'
            f'[tls]\nlisten = "{SERVER_IP}:7443"\n'
            f'[multicast]\ninterface = "{SERVER_IP}"\nttl = 1\nloop = false\n'
            f'[delivery]\nswarm = {"true" if swarm else "false"}\n'
        )
        self.config = config
        for i in range(1, members + 1):
            member_groups = ",".join(g for n, g in groups.items() if i <= n)
            result = subprocess.run(
                [BIN / "gshare-server", "--config", config, "user", "add", f"m{i}", "--groups", member_groups, "--password-stdin"],
                input=PASSWORD + "\n", capture_output=True, text=True,
            )
            if result.returncode != 0:
                raise RuntimeError(result.stderr)
        self.server_log = self.dir / "server.log"
        self.server = subprocess.Popen(
            in_ns("server", BIN / "gshare-server", "--config", config),
            stdout=subprocess.DEVNULL, stderr=open(self.server_log, "w"), env=PROGRAM_ENV,
        )
        wait_for_line(self.server_log, "gshare-server ready", 30, self.server)
        fingerprint = sh(BIN / "gshare-server", "--config", config, "fingerprint").stdout.strip()
        for i in range(1, members + 1):
            home = self.dir / f"home-m{i}"
            home.mkdir()
            (home / "client.toml").write_text(
                f'[multicast]\ninterface = "{MEMBER_IP.format(10 + i)}"\nttl = 1\nloop = false\n'
                f'[peer]\nlisten = "{MEMBER_IP.format(10 + i)}:7444"\n'
            )
            result = subprocess.run(
                in_ns(f"m{i}", BIN / "gshare-client", "--home", home, "enroll", "--user", f"m{i}",
                      "--server", f"{SERVER_IP}:7443", "--ca-fingerprint", fingerprint, "--password-stdin"),
                input=PASSWORD + "\n", capture_output=True, text=True,
            )
            if result.returncode != 0:
                raise RuntimeError(f"enroll m{i}: {result.stderr}")
            out = self.dir / f"out-m{i}"
            out.mkdir()
            log = self.dir / f"listen-m{i}.log"
            args = ["listen", "--out", out] + [a for n, g in groups.items() if i <= n for a in ("--group", g)]
            process = subprocess.Popen(
                in_ns(f"m{i}", BIN / "gshare-client", "--home", home, *args),
                stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=PROGRAM_ENV,
            )
            wait_for_line(log, "waiting for files", 30, process)
            self.listeners[i] = (process, out)

    def send(self, path, members):
        settle()
        group = self.group_of[members]
        pids = [self.server.pid] + [self.listeners[i][0].pid for i in range(1, members + 1)]
        for pid in pids:
            reset_peak(pid)
        cpu_before = [cpu_seconds(pid) for pid in pids]
        log_offset = self.server_log.stat().st_size
        sent_before = tx_bytes("server")
        timeline = None
        if os.environ.get("GSHARE_BENCH_TIMELINE"):
            self.sends += 1
            timeline = Timeline(self.dir / f"timeline-{self.sends}.tsv", self.members)
        wall_started = time.time()
        started = time.monotonic()
        try:
            result = sh(BIN / "gshare-server", "--config", self.config, "send", "--group", group, path, "--wait",
                        timeout=TRANSFER_TIMEOUT)
        finally:
            # A transfer that fails or times out must not leave the sampler running.
            elapsed = time.monotonic() - started
            if timeline is not None:
                timeline.stop()
        server_sent = tx_bytes("server") - sent_before
        delivered = result.stdout.count(": delivered ")
        if delivered != members:
            raise RuntimeError(f"{delivered} of {members} delivered:\n{result.stdout}")
        cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before)]
        peaks = [peak_rss_mib(pid) for pid in pids]
        size = path.stat().st_size
        for i in range(1, members + 1):
            received = self.listeners[i][1] / path.name
            if received.stat().st_size != size:
                raise RuntimeError(f"m{i} holds {received.stat().st_size} bytes, not {size}")
            received.unlink()
        return {
            "seconds": elapsed,
            "server_sent_bytes": server_sent,
            "spool_seconds": self.spool_seconds(log_offset, wall_started),
            "server_cpu_seconds": cpu[0],
            "member_cpu_seconds": sum(cpu[1:]),
            "server_peak_rss_mib": peaks[0],
            "member_peak_rss_mib": max(peaks[1:]),
        }

    def spool_seconds(self, log_offset, wall_started):
        """Seconds from the send until the server logged the file as recorded: the part of the
        wall time spent copying and hashing the file into the spool, before any member is sent
        a byte."""
        with open(self.server_log, errors="replace") as log:
            log.seek(log_offset)
            for line in log:
                if "file recorded" in line:
                    stamp = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
                    return stamp.timestamp() - wall_started
        return float("nan")

    def close(self):
        for process, _ in self.listeners.values():
            process.send_signal(signal.SIGINT)
        self.server.send_signal(signal.SIGTERM)
        for process in [self.server] + [p for p, _ in self.listeners.values()]:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


# ---------------------------------------------------------------------------------------------
# UFTP


class Uftp:
    """uftpd on every member host, uftp on the server host, AES-256-GCM with ECDH/ECDSA."""

    GROUP = "239.255.71.71"

    def __init__(self, workdir, members, rate=None):
        # TFMCC congestion control by default; a fixed rate in Kbps (-1: as fast as possible)
        # when given.
        self.rate_args = ["-C", "tfmcc"] if rate is None else ["-C", "none", "-R", str(rate)]
        if shutil.which("uftp") is None:
            sh("apt-get", "install", "-y", "-qq", "uftp")
        self.dir = workdir / "uftp"
        self.dir.mkdir()
        self.daemons = {}
        for i in range(1, members + 1):
            out = self.dir / f"out-m{i}"
            out.mkdir()
            log = self.dir / f"uftpd-m{i}.log"
            process = subprocess.Popen(
                in_ns(f"m{i}", "uftpd", "-d", "-E", "-K", "ec:prime256v1", "-I", MEMBER_IP.format(10 + i), "-M", self.GROUP, "-D", out, "-B", "104857600"),
                stdout=subprocess.DEVNULL, stderr=open(log, "w"),
            )
            self.daemons[i] = (process, out)
        time.sleep(0.5)  # uftpd has no readiness signal; it binds within milliseconds

    def send(self, path, members):
        settle()
        clients = ",".join(f"0x{0xC0000200 + 10 + i:08x}" for i in range(1, members + 1))
        pids = [self.daemons[i][0].pid for i in range(1, members + 1)]
        cpu_before = [cpu_seconds(pid) for pid in pids]
        sent_before = tx_bytes("server")
        started = time.monotonic()
        log = self.dir / "uftp.log"
        process = subprocess.Popen(
            in_ns("server", "uftp", "-I", SERVER_IP, "-M", self.GROUP, "-P", "239.255.71.72", "-t", "1",
                  "-Y", "aes256-gcm", "-h", "sha256", "-e", "ecdh_ecdsa", *self.rate_args, "-B", "104857600",
                  "-H", clients, "-x", "1", path),
            stdout=subprocess.DEVNULL, stderr=open(log, "w"),
        )
        # `ip netns exec` execs uftp in place, so the child's resource usage is uftp's.
        deadline = time.monotonic() + TRANSFER_TIMEOUT
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("uftp: time limit reached")
            time.sleep(0.005)
        process.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - started
        server_sent = tx_bytes("server") - sent_before
        server_cpu = usage.ru_utime + usage.ru_stime
        stderr = log.read_text(errors="replace")
        cpu = sum(cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before))
        size = path.stat().st_size
        for i in range(1, members + 1):
            received = self.daemons[i][1] / path.name
            if not received.exists() or received.stat().st_size != size:
                raise RuntimeError(f"uftp: m{i} did not receive the file:\n{stderr[-2000:]}")
            received.unlink()
        return {"seconds": elapsed, "member_cpu_seconds": cpu, "server_cpu_seconds": server_cpu,
                "server_sent_bytes": server_sent}

    def close(self):
        for process, _ in self.daemons.values():
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", default="1,4,8", help="member counts, e.g. 1,4,8")
    parser.add_argument("--sizes", default="256M,1G", help="file sizes, e.g. 256M,1G")
    parser.add_argument("--runs", type=int, default=3, help="runs per case; the median is reported")
    parser.add_argument("--json", default=str(ROOT / "bench" / "out" / "results.json"), help="where to write the results")
    parser.add_argument("--skip-uftp", action="store_true", help="do not run UFTP")
    parser.add_argument("--uftp-rate", type=int, default=None,
                        help="run UFTP at this fixed rate in Kbps (-1: as fast as possible) instead of TFMCC")
    parser.add_argument("--no-swarm", action="store_true",
                        help="every member gets its own copy from the server ([delivery] swarm = false)")
    parser.add_argument("--link-mbit", type=int, default=None,
                        help="hold every host's link to this many Mbit/s each way (tc tbf); UFTP then runs at 95%% of it")
    parser.add_argument("--workdir", default=None,
                        help="where files, spool and received copies live (default: the system temp dir); "
                             "/dev/shm measures without the disk")
    args = parser.parse_args()
    member_counts = [int(n) for n in args.members.split(",")]
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if os.geteuid() != 0:
        sys.exit("error: the benchmark creates network namespaces and must run as root")
    for binary in ("gshare-server", "gshare-client"):
        if not (BIN / binary).exists():
            sys.exit(f"error: {BIN / binary} is missing; run `cargo build --release` first")
    if any(not 1 <= n <= 16 for n in member_counts):
        sys.exit("error: member counts are between 1 and 16")
    if args.link_mbit is not None:
        if args.link_mbit <= 0:
            sys.exit("error: --link-mbit must be positive")
        if args.uftp_rate is None:
            args.uftp_rate = int(args.link_mbit * 1000 * 0.95)

    cores = os.cpu_count() or 1
    cpu_model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    speeds = {algorithm: openssl_speed(algorithm) for algorithm in ("aes-256-gcm", "sha256")}
    print(f"machine: {cores} cores, {cpu_model}")
    print(f"one core: AES-256-GCM {speeds['aes-256-gcm'] / 1e9:.2f} GB/s, SHA-256 {speeds['sha256'] / 1e9:.2f} GB/s (openssl speed, 16 KiB)")

    results = []
    workdir = Path(tempfile.mkdtemp(prefix="gshare-bench-", dir=args.workdir))
    print(f"files under {workdir.parent}")
    try:
        with Lan(max(member_counts), args.link_mbit):
            gshare = Gshare(workdir, member_counts, swarm=not args.no_swarm)
            uftp = None if args.skip_uftp else Uftp(workdir, max(member_counts), args.uftp_rate)
            try:
                for size in sizes:
                    for members in member_counts:
                        # A new file for every run: members keep what they received (and
                        # share it), so bytes sent before would be a different measurement.
                        runs = []
                        for _ in range(args.runs):
                            data = make_file(workdir, size)
                            runs.append(gshare.send(data, members))
                        row = {
                            "members": members,
                            "size": size,
                            "runs": args.runs,
                            "gshare": {key: statistics.median(r[key] for r in runs) for key in runs[0]},
                            "gshare_seconds_each": [r["seconds"] for r in runs],
                            "ceiling_seconds": ceiling_seconds(size, members, speeds, cores),
                        }
                        if args.link_mbit:
                            row["link_mbit"] = args.link_mbit
                            row["link_limit_seconds"] = size * 8 / (args.link_mbit * 1e6)
                            row["tcp_chain_seconds"] = statistics.median(tcp_chain_seconds(size, members) for _ in range(args.runs))
                        else:
                            row["tcp_floor_seconds"] = statistics.median(tcp_floor_seconds(size, members) for _ in range(args.runs))
                        if uftp is not None:
                            uftp_runs = [uftp.send(data, members) for _ in range(args.runs)]
                            row["uftp"] = {key: statistics.median(r[key] for r in uftp_runs) for key in uftp_runs[0]}
                        results.append(row)
                        report_row(row)
                        data.unlink()
            finally:
                gshare.close()
                if uftp is not None:
                    uftp.close()
    finally:
        if not os.environ.get("GSHARE_BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}")

    output = Path(args.json)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"cores": cores, "cpu": cpu_model, "workdir": str(workdir.parent),
                                  "link_mbit": args.link_mbit, "speeds_bytes_per_second": speeds,
                                  "results": results}, indent=2))
    print()
    if args.link_mbit:
        print_link_table(results)
    else:
        print_table(results)
    print(f"\nresults written to {output}")


def report_row(row):
    g = row["gshare"]
    if "link_limit_seconds" in row:
        limit = row["link_limit_seconds"]
        line = (f"{human(row['size']):>8} x {row['members']} members at {row['link_mbit']} Mbit/s: "
                f"limit {limit:.2f} s, gshare {g['seconds']:.2f} s ({g['seconds'] / limit:.2f}x), "
                f"server sent {g['server_sent_bytes'] / row['size']:.2f}x the file; "
                f"plain TCP chain {row['tcp_chain_seconds'] / limit:.2f}x")
        if "uftp" in row:
            u = row["uftp"]
            line += f"; uftp {u['seconds']:.2f} s ({u['seconds'] / limit:.2f}x, sent {u['server_sent_bytes'] / row['size']:.2f}x)"
        print(line, flush=True)
        return
    each = ", ".join(f"{seconds:.2f}" for seconds in row["gshare_seconds_each"])
    line = (f"{human(row['size']):>8} x {row['members']} members: gshare {g['seconds']:.2f} s (runs: {each}) "
            f"({row['size'] * row['members'] / g['seconds'] / MIB:.0f} MiB/s aggregate), "
            f"ceiling {row['ceiling_seconds']:.2f} s, plain TCP {row['tcp_floor_seconds']:.2f} s")
    if "uftp" in row:
        line += f", uftp {row['uftp']['seconds']:.2f} s"
    print(line, flush=True)


def print_link_table(results):
    columns = ["size", "members", "link Mbit/s", "S / link s", "gshare s", "gshare / limit", "server sent / size",
               "TCP chain / limit", "UFTP s", "UFTP / limit", "UFTP sent / size", "server CPU s", "members CPU s", "server peak RSS MiB",
               "member peak RSS MiB"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in results:
        g, size, limit = row["gshare"], row["size"], row["link_limit_seconds"]
        uftp = row.get("uftp")
        cells = [
            human(size), str(row["members"]), str(row["link_mbit"]), f"{limit:.2f}", f"{g['seconds']:.2f}",
            f"{g['seconds'] / limit:.2f}", f"{g['server_sent_bytes'] / size:.2f}",
            f"{row['tcp_chain_seconds'] / limit:.2f}" if "tcp_chain_seconds" in row else "-",
            f"{uftp['seconds']:.2f}" if uftp else "-", f"{uftp['seconds'] / limit:.2f}" if uftp else "-",
            f"{uftp['server_sent_bytes'] / size:.2f}" if uftp else "-",
            f"{g['server_cpu_seconds']:.2f}", f"{g['member_cpu_seconds']:.2f}",
            f"{g['server_peak_rss_mib']:.0f}", f"{g['member_peak_rss_mib']:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


def print_table(results):
    columns = ["size", "members", "gshare s", "of which spooling s", "aggregate MiB/s", "per member MiB/s", "ceiling s",
               "gshare / ceiling", "plain TCP s", "UFTP s", "UFTP / gshare", "server CPU s", "members CPU s",
               "server peak RSS MiB", "member peak RSS MiB"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in results:
        g, size, members = row["gshare"], row["size"], row["members"]
        uftp = row.get("uftp")
        cells = [
            human(size), str(members), f"{g['seconds']:.2f}", f"{g.get('spool_seconds', float('nan')):.2f}",
            f"{size * members / g['seconds'] / MIB:.0f}", f"{size / g['seconds'] / MIB:.0f}",
            f"{row['ceiling_seconds']:.2f}", f"{g['seconds'] / row['ceiling_seconds']:.2f}",
            f"{row['tcp_floor_seconds']:.2f}" if "tcp_floor_seconds" in row else "-",
            f"{uftp['seconds']:.2f}" if uftp else "-", f"{uftp['seconds'] / g['seconds']:.1f}" if uftp else "-",
            f"{g['server_cpu_seconds']:.2f}", f"{g['member_cpu_seconds']:.2f}",
            f"{g['server_peak_rss_mib']:.0f}", f"{g['member_peak_rss_mib']:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
