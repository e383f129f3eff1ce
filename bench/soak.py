#!/usr/bin/env python3
"""gshare's soak: the real server and six members, files of random sizes, random kills, and a
count at the end of everything lost, duplicated or misdelivered.

It builds a LAN of its own out of network namespaces, as the benchmark does (bench/run.py: a
bridge, a server host and six member hosts on TEST-NET-1, nothing in the root namespace, all
removed at the end), and runs the real gshare-server and gshare-client binaries on it, with
swarm delivery on. Three groups overlap so that every file is addressed to some members and
not to others: Alpha (m1-m4), Beta (m3-m6), Gamma (m1, m6).

For `--minutes`, two loops run at once:

- a sender hands files to the server with `send`, one every few seconds: empty, 1 byte, a few
  KiB or MiB, and now and then one of a hundred MiB or more, each to a random group;
- a chaos loop kills (-9) a random listener or the server at random moments and starts it
  again a moment later, and now and then removes a user and adds it back (the member enrolls
  again and listens again).

Then it stops the chaos, makes sure everything runs, waits until no delivery is pending, and
checks every file the server recorded against every member: a delivery marked delivered is
present exactly once with the same bytes (no `name (1)` copy), a file not addressed to a member
is never present, no `.part` file is left, no `send` that exited 0 is missing from the server's
records, and the spool holds only what is still owed. Delivered files are checked and removed
as the run goes (so a long run does not fill the disk); one that comes back is a duplicate.

It prints the seed first and the counts last, and exits 1 if anything was lost, duplicated or
misdelivered. Every load is bounded: the run by `--minutes`, the drain at the end by
`--drain-seconds`, every command by a timeout.

Usage (root, from the repository root, after `cargo build --release`):

    python3 bench/soak.py --minutes 30 --seed 1
    python3 bench/soak.py --minutes 2 --bin target/debug --big-mib 64   # as the test suite runs it
"""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as lan_tools  # noqa: E402  (the benchmark's namespace LAN)

lan_tools.PREFIX = f"gss{os.getpid()}"
in_ns, sh = lan_tools.in_ns, lan_tools.sh
SERVER_IP, MEMBER_IP = lan_tools.SERVER_IP, lan_tools.MEMBER_IP
PASSWORD = "soak password 1"
MEMBERS = 6
GROUPS = {"Alpha": [1, 2, 3, 4], "Beta": [3, 4, 5, 6], "Gamma": [1, 6]}
COMMAND_TIMEOUT = 120  # seconds, any one command
MIB = 1024 * 1024


def groups_of(member):
    return [group for group, members in GROUPS.items() if member in members]


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Cluster:
    """The server and the listeners, with what was done to them."""

    def __init__(self, workdir, binaries):
        self.dir = workdir
        self.bin = binaries
        self.lock = threading.RLock()
        self.counts = {"listener kills": 0, "server kills": 0, "restarts": 0, "user removals": 0,
                       "unexpected listener exits": 0, "unexpected server exits": 0}
        self.config = workdir / "server.toml"
        self.config.write_text(
            f'groups = {json.dumps(list(GROUPS))}\n'
            f'[tls]\nlisten = "{SERVER_IP}:7443"\n'
            f'[multicast]\ninterface = "{SERVER_IP}"\nttl = 1\nloop = false\n'
        )
        for member in range(1, MEMBERS + 1):
            self.server_command("user", "add", f"m{member}", "--groups", ",".join(groups_of(member)),
                                "--password-stdin", stdin=PASSWORD + "\n")
        self.server_log = workdir / "server.log"
        self.server = None
        self.start_server()
        self.fingerprint = self.server_command("fingerprint").stdout.strip()
        self.listeners = {}
        self.expected_exit = set()  # members whose listener is meant to stop (user removed)
        for member in range(1, MEMBERS + 1):
            home = workdir / f"home-m{member}"
            home.mkdir()
            (home / "client.toml").write_text(
                f'[multicast]\ninterface = "{MEMBER_IP.format(10 + member)}"\nttl = 1\nloop = false\n'
                f'[peer]\nlisten = "{MEMBER_IP.format(10 + member)}:7444"\n'
            )
            (workdir / f"out-m{member}").mkdir()
            self.enroll(member)
            self.start_listener(member)
        for member in range(1, MEMBERS + 1):
            lan_tools.wait_for_line(workdir / f"listen-m{member}.log", "waiting for files", 60, self.listeners[member])

    # -- the server ---------------------------------------------------------------------------

    def server_command(self, *args, stdin=None, check=True):
        result = subprocess.run([self.bin / "gshare-server", "--config", self.config, *args], input=stdin,
                                capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        if check and result.returncode != 0:
            raise RuntimeError(f"gshare-server {' '.join(map(str, args))}: {result.stderr}")
        return result

    def start_server(self):
        ready_before = self.server_log.read_text(errors="replace").count("gshare-server ready") \
            if self.server_log.exists() else 0
        self.server = subprocess.Popen(
            in_ns("server", self.bin / "gshare-server", "--config", self.config),
            stdout=subprocess.DEVNULL, stderr=open(self.server_log, "a"), env={**os.environ, "RUST_LOG": "info"},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server_log.read_text(errors="replace").count("gshare-server ready") > ready_before:
                return
            if self.server.poll() is not None:
                raise RuntimeError(f"the server exited at start:\n{tail(self.server_log)}")
            time.sleep(0.05)
        raise RuntimeError(f"the server did not start within 60 s:\n{tail(self.server_log)}")

    def kill_server(self):
        with self.lock:
            self.server.kill()
            self.server.wait()
            self.counts["server kills"] += 1

    def restart_server(self):
        with self.lock:
            self.start_server()
            self.counts["restarts"] += 1

    def status(self):
        return json.loads(self.server_command("status", "--json").stdout)

    # -- the members --------------------------------------------------------------------------

    def home(self, member):
        return self.dir / f"home-m{member}"

    def out(self, member):
        return self.dir / f"out-m{member}"

    def enroll(self, member):
        """Enrolls `member`, trying again while the server is down (a bounded number of times)."""
        for _ in range(60):
            result = subprocess.run(
                in_ns(f"m{member}", self.bin / "gshare-client", "--home", self.home(member), "enroll",
                      "--user", f"m{member}", "--server", f"{SERVER_IP}:7443",
                      "--ca-fingerprint", self.fingerprint, "--password-stdin"),
                input=PASSWORD + "\n", capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
            )
            if result.returncode == 0:
                return
            time.sleep(1)
        raise RuntimeError(f"m{member} could not enroll: {result.stderr}")

    def start_listener(self, member):
        args = ["listen", "--out", self.out(member)]
        for group in groups_of(member):
            args += ["--group", group]
        log_path = self.dir / f"listen-m{member}.log"
        self.listeners[member] = subprocess.Popen(
            in_ns(f"m{member}", self.bin / "gshare-client", "--home", self.home(member), *args),
            stdout=open(log_path, "a"), stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "info"},
        )

    def kill_listener(self, member):
        with self.lock:
            self.listeners[member].kill()
            self.listeners[member].wait()
            self.counts["listener kills"] += 1

    def restart_listener(self, member):
        with self.lock:
            self.start_listener(member)
            self.counts["restarts"] += 1

    def remove_and_add_again(self, member):
        """Removes the user (its listener is refused and stops), adds it back, enrolls it again
        and listens again."""
        with self.lock:
            self.expected_exit.add(member)
            self.server_command("user", "remove", f"m{member}")
            self.counts["user removals"] += 1
        listener = self.listeners[member]
        try:
            listener.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # The server was down when the user was removed: nobody told the listener yet.
            listener.kill()
            listener.wait()
        with self.lock:
            self.server_command("user", "add", f"m{member}", "--groups", ",".join(groups_of(member)),
                                "--password-stdin", stdin=PASSWORD + "\n")
        self.enroll(member)
        with self.lock:
            self.expected_exit.discard(member)
            self.start_listener(member)
            self.counts["restarts"] += 1

    def check_alive(self):
        """Notes (and restarts) any process that stopped without being killed: a listener never
        gives up, and the server never stops by itself."""
        with self.lock:
            if self.server.poll() is not None:
                self.counts["unexpected server exits"] += 1
                log(f"the server exited by itself:\n{tail(self.server_log)}")
                self.start_server()
            for member, listener in self.listeners.items():
                if listener.poll() is not None and member not in self.expected_exit:
                    self.counts["unexpected listener exits"] += 1
                    log(f"m{member}'s listener exited by itself:\n{tail(self.dir / f'listen-m{member}.log')}")
                    self.start_listener(member)

    def stop(self):
        for listener in self.listeners.values():
            if listener.poll() is None:
                listener.send_signal(signal.SIGINT)
        if self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
        for process in [self.server, *self.listeners.values()]:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def tail(path, lines=15):
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Sender:
    """Hands files of random sizes to the server, one at a time, and remembers each."""

    def __init__(self, cluster, rng, source, big_mib, big_share):
        self.cluster, self.rng, self.source = cluster, rng, source
        self.big_mib, self.big_share = big_mib, big_share
        self.sent = []  # {name, group, sha256, size, ok, answer}
        self.sequence = 0

    def size(self):
        roll = self.rng.random()
        if roll < self.big_share:
            return self.rng.randint(self.big_mib // 2, self.big_mib) * MIB + self.rng.randint(0, 4095)
        if roll < self.big_share + 0.1:
            return 0
        if roll < self.big_share + 0.2:
            return 1
        if roll < self.big_share + 0.6:
            return self.rng.randint(2, 256 * 1024)
        return self.rng.randint(256 * 1024, 8 * MIB)

    def send_one(self):
        self.sequence += 1
        size = self.size()
        group = self.rng.choice(list(GROUPS))
        name = f"f{self.sequence:05d}-{size}.bin"
        path = self.source / name
        digest = hashlib.sha256()
        with open(path, "wb") as out:
            left = size
            while left > 0:
                chunk = os.urandom(min(left, 4 * MIB))
                out.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
        result = self.cluster.server_command("send", "--group", group, path, check=False)
        path.unlink()
        self.sent.append({"name": name, "group": group, "sha256": digest.hexdigest(), "size": size,
                          "ok": result.returncode == 0, "answer": (result.stdout + result.stderr).strip()})


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def copies(out, name):
    """The files in `out` that hold `name`: itself and numbered variants (`name (1).ext`)."""
    stem, dot, extension = name.rpartition(".")
    pattern = re.compile(re.escape(stem) + r"( \(\d+\))?" + re.escape(dot + extension) + "$")
    return [entry for entry in out.iterdir() if pattern.match(entry.name)]


class Checker:
    """Checks deliveries against what members hold; removes files once checked."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.checked = set()  # (member, name) verified and removed
        self.counts = {"deliveries checked": 0, "lost": 0, "duplicated": 0, "misdelivered": 0, "corrupted": 0,
                       ".part files left": 0, "spool entries not owed": 0, "sends exited 0 but not recorded": 0}
        self.problems = []

    def problem(self, kind, message):
        self.counts[kind] += 1
        self.problems.append(f"{kind}: {message}")

    def harvest(self, status, final=False):
        """Checks every delivered file (and, at the end, every other delivery) at its member."""
        files = status["files"]
        for file in files:
            states = {int(d["user"][1:]): d for d in file["deliveries"]}
            for member in range(1, MEMBERS + 1):
                if (member, file["name"]) in self.checked:
                    continue
                out = self.cluster.out(member)
                held = copies(out, file["name"])
                delivery = states.get(member)
                state = delivery["state"] if delivery else None
                if state == "delivered":
                    if len(held) != 1:
                        kind = "lost" if not held else "duplicated"
                        self.problem(kind, f"m{member} holds {len(held)} copies of {file['name']} ({file['group']})")
                    for path in held:
                        if sha256_of(path) != file["sha256"]:
                            self.problem("corrupted", f"m{member}: {path.name} does not match its SHA-256")
                        path.unlink()
                    self.checked.add((member, file["name"]))
                    self.counts["deliveries checked"] += 1
                elif not final:
                    continue
                elif state == "dropped":
                    # Removed while it was owed: kept if it arrived before, never twice.
                    if len(held) > 1:
                        self.problem("duplicated", f"m{member} holds {len(held)} copies of dropped {file['name']}")
                    self.counts["deliveries checked"] += 1
                elif state is None:
                    if held:
                        self.problem("misdelivered", f"m{member} holds {file['name']}, sent to {file['group']}")
                else:
                    self.problem("lost", f"m{member}: {file['name']} ended {state} ({delivery.get('reason')})")

    def final(self, status, sender):
        self.harvest(status, final=True)
        recorded = {file["name"] for file in status["files"]}
        for send in sender.sent:
            nobody = "nothing to deliver" in send["answer"]  # recorded for no member: not in status
            if send["ok"] and send["name"] not in recorded and not nobody:
                self.problem("sends exited 0 but not recorded", f"{send['name']}: {send['answer']}")
            if send["name"] not in recorded:
                for member in range(1, MEMBERS + 1):
                    if copies(self.cluster.out(member), send["name"]):
                        self.problem("misdelivered", f"m{member} holds {send['name']}, which was never recorded")
        for member in range(1, MEMBERS + 1):
            for entry in self.cluster.out(member).iterdir():
                if entry.name.endswith(".part"):
                    self.problem(".part files left", f"m{member}: {entry.name}")
        owed = {file["sha256"] for file in status["files"]
                if any(d["state"] == "pending" for d in file["deliveries"])}
        spool = self.cluster.dir / "state" / "spool"
        for entry in spool.iterdir():
            if not entry.name.endswith((".ends", ".pieces")) and entry.name not in owed:
                self.problem("spool entries not owed", entry.name)


def pending_count(status):
    return sum(1 for file in status["files"] for d in file["deliveries"] if d["state"] == "pending")


def chaos(cluster, rng, stop, pause_scale):
    """Kills and restarts at random until `stop` is set."""
    while not stop.wait(rng.uniform(2, 8) * pause_scale):
        cluster.check_alive()
        roll = rng.random()
        if roll < 0.55:
            member = rng.randint(1, MEMBERS)
            cluster.kill_listener(member)
            time.sleep(rng.uniform(0, 3) * pause_scale)
            cluster.restart_listener(member)
        elif roll < 0.85:
            cluster.kill_server()
            time.sleep(rng.uniform(0, 3) * pause_scale)
            cluster.restart_server()
        else:
            cluster.remove_and_add_again(rng.randint(1, MEMBERS))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    parser.add_argument("--bin", type=Path, default=lan_tools.BIN, help="where the binaries are (default target/release)")
    parser.add_argument("--big-mib", type=int, default=300, help="largest file, in MiB (the big ones are half to all of it)")
    parser.add_argument("--big-share", type=float, default=0.03, help="share of sends that are big files")
    parser.add_argument("--drain-seconds", type=int, default=600, help="longest wait for pending deliveries at the end")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, out dirs)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randint(1, 2**31)
    print(f"soak: seed {seed}, {args.minutes} minutes, binaries in {args.bin}", flush=True)
    if os.geteuid() != 0:
        sys.exit("the soak needs root (it builds network namespaces)")
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="gshare-soak-"))
    started = time.monotonic()
    ok = False
    with lan_tools.Lan(MEMBERS):
        cluster = Cluster(workdir, args.bin.resolve())
        sender = Sender(cluster, rng, workdir, args.big_mib, args.big_share)
        checker = Checker(cluster)
        stop = threading.Event()
        chaos_rng = random.Random(rng.random())
        chaos_thread = threading.Thread(target=chaos, args=(cluster, chaos_rng, stop, 1.0), daemon=True)
        chaos_thread.start()
        deadline = started + args.minutes * 60
        last_harvest = time.monotonic()
        try:
            while time.monotonic() < deadline:
                sender.send_one()
                if time.monotonic() - last_harvest > 20:
                    try:
                        checker.harvest(cluster.status())
                    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError):
                        pass  # the server is down just now; next time
                    last_harvest = time.monotonic()
                time.sleep(rng.uniform(0.2, 3))
            stop.set()
            chaos_thread.join(timeout=COMMAND_TIMEOUT)
            log("chaos stopped; waiting for every pending delivery")
            cluster.check_alive()
            drain_deadline = time.monotonic() + args.drain_seconds
            while True:
                status = cluster.status()
                pending = pending_count(status)
                if pending == 0 or time.monotonic() > drain_deadline:
                    break
                cluster.check_alive()
                time.sleep(1)
            checker.final(status, sender)
        finally:
            stop.set()
            cluster.stop()
        counts = {"files sent": sum(s["ok"] for s in sender.sent),
                  "sends refused or cut short": sum(not s["ok"] for s in sender.sent),
                  "bytes sent": sum(s["size"] for s in sender.sent if s["ok"]),
                  **cluster.counts, **checker.counts}
        for problem in checker.problems[:50]:
            print(f"  {problem}")
        print(f"soak: seed {seed}, {(time.monotonic() - started) / 60:.1f} minutes")
        width = max(len(key) for key in counts)
        for key, value in counts.items():
            print(f"  {key:<{width}}  {value}")
        bad = ["lost", "duplicated", "misdelivered", "corrupted", ".part files left", "spool entries not owed",
               "sends exited 0 but not recorded", "unexpected listener exits", "unexpected server exits"]
        ok = all(counts[key] == 0 for key in bad) and counts["files sent"] > 0
        print("soak: PASSED" if ok else "soak: FAILED", flush=True)
    if args.keep or not ok:
        print(f"soak: logs and out dirs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
