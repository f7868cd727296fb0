"""The host-side peer of a network scenario: a UDP echo server on the host's loopback.

Run by the ``nic`` device kind (``udp_echo: {port: P}``) as its helper, beside QEMU;
slirp maps the guest's 10.0.2.2 to 127.0.0.1, so the guest reaches it at 10.0.2.2:P.
It echoes every datagram back to its sender unchanged and keeps a count; on SIGTERM it
writes ``peer.json`` (datagrams, bytes) into the run directory and exits.

    python -m hil.netpeer --port P --run-dir DIR     (prints READY once bound)
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import sys
from pathlib import Path


def serve(sock: socket.socket, stop: list[bool], stats: dict) -> None:
    while not stop[0]:
        if not select.select([sock], [], [], 0.2)[0]:
            continue
        try:
            data, addr = sock.recvfrom(65535)
        except BlockingIOError:
            continue
        sock.sendto(data, addr)
        stats["datagrams"] += 1
        stats["bytes"] += len(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hil.netpeer")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--run-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", args.port))
    except OSError as e:
        print(f"BIND {e.strerror or e}", flush=True)
        return 3
    sock.setblocking(False)
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    signal.signal(signal.SIGINT, lambda *_: stop.__setitem__(0, True))
    stats = {"port": args.port, "datagrams": 0, "bytes": 0}
    print("READY", flush=True)
    try:
        serve(sock, stop, stats)
    finally:
        sock.close()
        (args.run_dir / "peer.json").write_text(json.dumps(stats) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
