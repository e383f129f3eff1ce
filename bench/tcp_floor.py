#!/usr/bin/env python3
"""The transport floor of the fan-out benchmark: the same bytes sent over plain TCP through the
same namespaces, with no encryption, no hashing and no disk, to show what the kernel's
networking alone costs on this machine. bench/run.py runs it; by hand:

    tcp_floor.py sink 192.0.2.11:7500 1073741824      # in each member's namespace
    tcp_floor.py source 1073741824 192.0.2.11:7500 ...  # in the server's namespace

`sink` prints "ready" once listening, takes one connection, reads the given number of bytes
into a reused buffer and exits 0. `source` sends that many bytes to every sink at once, one
thread each (the GIL is released while a thread waits in sendall).

For the link-bound benchmark, the floor of passing pieces on: members in a chain, each
receiving the bytes once and sending them on once (the least any member-to-member design can
move), the server sending them once, to the first:

    tcp_floor.py relay 192.0.2.12:7500 268435456             # the last member
    tcp_floor.py relay 192.0.2.11:7500 268435456 192.0.2.12:7500
    tcp_floor.py source 268435456 192.0.2.11:7500

`relay` prints "ready" once listening, takes one connection, passes every byte it reads on to
the next member (if any) and exits 0 once the given number of bytes went through.
"""

import socket
import sys
import threading

CHUNK = 256 * 1024


def address(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def receive(connection, size, onward=None):
    """Reads `size` bytes from `connection` into a reused buffer, passing them on to the
    connection `onward` if there is one."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    left = size
    with connection:
        while left:
            read = connection.recv_into(buffer, min(left, CHUNK))
            if read == 0:
                sys.exit(f"the sender closed with {left} bytes to go")
            if onward:
                onward.sendall(view[:read])
            left -= read


def send(target, size):
    """Sends `size` zero bytes to `target` (host, port)."""
    payload = bytes(CHUNK)
    with socket.create_connection(target) as connection:
        left = size
        while left:
            step = min(left, CHUNK)
            connection.sendall(payload[:step])
            left -= step


def relay(listen, size, onward):
    with socket.create_server(address(listen)) as server:
        print("ready", flush=True)
        connection, _ = server.accept()
        if onward is None:
            receive(connection, size)
            return
        with socket.create_connection(address(onward)) as nxt:
            receive(connection, size, nxt)


def source(size, targets):
    errors = []

    def send_to(target):
        try:
            send(address(target), size)
        except OSError as error:
            errors.append(f"{target}: {error}")

    threads = [threading.Thread(target=send_to, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        sys.exit("source: " + "; ".join(errors))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "sink":
        relay(sys.argv[2], int(sys.argv[3]), None)
    elif len(sys.argv) in (4, 5) and sys.argv[1] == "relay":
        relay(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) == 5 else None)
    elif len(sys.argv) >= 4 and sys.argv[1] == "source":
        source(int(sys.argv[2]), sys.argv[3:])
    else:
        sys.exit(__doc__)
