#!/usr/bin/env python3
"""What plain TCP does on the link-bound benchmark's LAN when every member sends to and receives
from several others at once, as members passing pieces on do: no encryption, hashing, disk or
scheduling, just fixed shares of bytes. Run as root, after `cargo build --release` is not even
needed (it uses only the LAN of bench/run.py):

    sudo python3 bench/tcp_mesh.py --members 16 --flows 4 --link-mbit 100 --size 256M

Every member sends `size / flows` bytes to each of the `flows` members after it (on a ring) and
receives as much from each of the `flows` before it, all at once; the time until the last byte
arrives is reported against the link limit (size / link), with how busy the CPUs were.
`--flows 1` is a ring of single connections.
"""

import argparse
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import Lan, MEMBER_IP, in_ns, parse_size  # noqa: E402
from tcp_floor import receive, send  # noqa: E402

PORT = 7600


def member(me, share, flows, targets):
    """One member: accepts `flows` connections and reads `share` bytes from each, while sending
    `share` bytes to each target; starts both on a line on stdin."""
    server = socket.create_server((me, PORT), backlog=64)
    print("ready", flush=True)
    sys.stdin.readline()

    def accept_all():
        readers = []
        for _ in range(flows):
            connection, _ = server.accept()
            readers.append(threading.Thread(target=receive, args=(connection, share)))
            readers[-1].start()
        for reader in readers:
            reader.join()

    threads = [threading.Thread(target=accept_all)] + [threading.Thread(target=send, args=((t, PORT), share)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def busy_ticks():
    fields = [int(f) for f in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "member":
        member(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--flows", type=int, default=4, help="connections each member sends on (and receives on)")
    parser.add_argument("--link-mbit", type=int, default=100)
    parser.add_argument("--size", default="256M", help="bytes each member receives in all")
    args = parser.parse_args()
    if not 1 <= args.flows < args.members <= 16:
        sys.exit("error: need 1 <= flows < members <= 16")
    size = parse_size(args.size)
    address = lambda i: MEMBER_IP.format(10 + i)  # noqa: E731  members are 1..members
    with Lan(args.members, args.link_mbit):
        members = []
        try:
            for i in range(1, args.members + 1):
                targets = [address((i - 1 + k) % args.members + 1) for k in range(1, args.flows + 1)]
                process = subprocess.Popen(
                    in_ns(f"m{i}", sys.executable, __file__, "member", address(i), str(size // args.flows),
                          str(args.flows), *targets),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                members.append(process)
                if process.stdout.readline().strip() != "ready":
                    sys.exit(f"error: member m{i} did not start")
            before = busy_ticks()
            started = time.monotonic()
            for process in members:
                process.stdin.write("go\n")
                process.stdin.flush()
            failed = [p for p in members if p.wait(timeout=600) != 0]
            seconds = time.monotonic() - started
            after = busy_ticks()
        finally:
            for process in members:
                if process.poll() is None:
                    process.kill()
        if failed:
            sys.exit("error: a member failed")
        total, idle = after[0] - before[0], after[1] - before[1]
        limit = size * 8 / (args.link_mbit * 1e6)
        print(f"{args.members} members, {args.flows} flows each way: {seconds:.2f} s, "
              f"{seconds / limit:.2f}x the limit, CPUs {100 * (total - idle) / total:.0f}% busy")


if __name__ == "__main__":
    main()
