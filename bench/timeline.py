#!/usr/bin/env python3
"""Reads a transfer's link timeline (`timeline-<n>.tsv`, written by bench/run.py with
GSHARE_BENCH_TIMELINE=1 GSHARE_BENCH_KEEP=1) and shows where the links sat idle:

    python3 bench/timeline.py /tmp/gshare-bench-XXXX/gshare/timeline-1.tsv [--every 1.0] [--rate-mbit 100]

Each line covers about `--every` seconds: how busy each member's link was receiving (down) and
sending (up), in % of the link rate, what the server's host sent, how far the members lag
behind the server (the bytes the server has sent that the average, and the furthest behind,
member has yet to receive, in seconds of link), and the packets all members sent per second
with their average size. A packet here is what the emulated LAN's kernel handles as one (a
batch of TCP segments sent together counts once, an acknowledgement too): on this benchmark's
one machine its cost per packet is most of the CPU, so fewer, larger packets for the same
bytes leave more of it to gshare. (A sample's columns: its time, then for every bridge port,
the server's first, the bytes it sent to its host, the bytes it took from it, and the same in
packets.) The counters include packet headers, so a full link reads a little under 100%.
"""

import argparse


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("timeline")
    parser.add_argument("--every", type=float, default=1.0, help="seconds per line")
    parser.add_argument("--rate-mbit", type=float, default=100, help="the link rate the benchmark held")
    args = parser.parse_args()
    rate = args.rate_mbit * 1e6 / 8
    rows = [[float(field) for field in line.split()] for line in open(args.timeline) if len(line.split()) > 3]
    if len(rows) < 2:
        raise SystemExit("error: the timeline holds fewer than two samples")
    start = rows[0]
    hosts = (len(start) - 1) // 4

    def received(row, host):
        return row[1 + 4 * host] - start[1 + 4 * host]

    def sent(row, host):
        return row[2 + 4 * host] - start[2 + 4 * host]

    def packets_sent(row, host):
        return row[4 + 4 * host] - start[4 + 4 * host]

    members = range(1, hosts)
    print("   s  " + " ".join(f"m{m:<3}" for m in members) + " server  | members sending"
          + " " * (4 * len(members) - 15) + "| lag avg  max | packets/s  bytes")
    previous = start
    for row in rows[1:]:
        elapsed = row[0] - previous[0]
        if elapsed < args.every and row is not rows[-1]:
            continue
        down = [(received(row, m) - received(previous, m)) / elapsed / rate * 100 for m in members]
        up = [(sent(row, m) - sent(previous, m)) / elapsed / rate * 100 for m in members]
        server = (sent(row, 0) - sent(previous, 0)) / elapsed / rate * 100
        behind = [sent(row, 0) - received(row, m) for m in members]
        packets = sum(packets_sent(row, m) - packets_sent(previous, m) for m in members)
        up_bytes = sum(sent(row, m) - sent(previous, m) for m in members)
        print(f"{row[0] - start[0]:5.1f} " + " ".join(f"{x:4.0f}" for x in down) + f"  {server:4.0f}  | "
              + " ".join(f"{x:3.0f}" for x in up)
              + f" | {sum(behind) / len(behind) / rate:5.2f} {max(behind) / rate:5.2f}"
              + f" | {packets / elapsed:7.0f} {up_bytes / max(packets, 1):6.0f}")
        previous = row


if __name__ == "__main__":
    main()
