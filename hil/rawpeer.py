"""The host end of a raw network: Ethernet frames to and from the guest's NIC, one per
datagram, over QEMU's ``-netdev dgram`` (unix datagram sockets).

Run by the ``nic`` device kind (``raw_peer: {...}``, docs/scenarios.md) as its helper,
beside QEMU.  The peer plays a host on the guest's network and follows a script:

1. wait for the guest's gratuitous ARP (it announces itself once its NIC is up);
2. ARP for the guest's address; 3. ICMP echo requests (``pings.before``), one at a time,
   each reply checked (type, code, id, seq, payload, both checksums, the addresses) and
   timed; 4. frames that are too short for what their headers claim (``runts``), frames
   longer than the MTU allows but within the NIC's 1522 (``long``), frames the NIC must
   drop (``oversize``: 1600 bytes); 5. a burst of ``burst`` UDP datagrams to the guest's
   discard port, back to back; 6. more pings (``pings.after``): the driver survived;
   7. a QUIT datagram (the guest reports and halts).

It writes ``raw-peer.json`` into the run directory (docs/results.md, read back by
hil/devices/nic.py with a bounded, validated parse) and idles until SIGTERM.

    python -m hil.rawpeer --config FILE --socket PATH --qemu-socket PATH --run-dir DIR
    (prints READY once its socket is bound)
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULT = "raw-peer.json"
ETH_IP, ETH_ARP = 0x0800, 0x0806
BROADCAST = b"\xff" * 6
OVERSIZE = 1600  # QEMU's e1000 drops frames over 1522 bytes (RCTL.LPE off)
QUOTE = 48  # bytes of a frame quoted in a failure


def cksum(data: bytes) -> int:
    import dpkt

    return dpkt.in_cksum(data)


def mac_bytes(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def mac_str(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def hexq(frame: bytes) -> str:
    return frame[:QUOTE].hex(" ") + (" ..." if len(frame) > QUOTE else "")


class Stopped(Exception):
    """SIGTERM arrived before the script's end."""


class Abort(Exception):
    """The script cannot go on (the failure is recorded)."""


@dataclass
class Frames:
    """Builds the frames the peer sends (checksums computed, or lies told on purpose)."""

    mac: bytes
    ip: bytes

    def eth(self, dst: bytes, etype: int, body: bytes) -> bytes:
        return dst + self.mac + struct.pack("!H", etype) + body

    def arp(self, op: int, dst_mac: bytes, tpa: bytes) -> bytes:
        tha = b"\0" * 6 if op == 1 else dst_mac
        body = struct.pack("!HHBBH", 1, ETH_IP, 6, 4, op) + self.mac + self.ip + tha + tpa
        return self.eth(dst_mac, ETH_ARP, body)

    def ipv4(self, dst: bytes, proto: int, payload: bytes, total: int | None = None) -> bytes:
        total = 20 + len(payload) if total is None else total
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, proto, 0, self.ip, dst)
        h = h[:10] + struct.pack("!H", cksum(h)) + h[12:]
        return h + payload

    def echo_request(self, dst_mac, dst, ident, seq, data, total=None) -> bytes:
        head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        msg = head[:2] + struct.pack("!H", cksum(head + data)) + head[4:] + data
        return self.eth(dst_mac, ETH_IP, self.ipv4(dst, 1, msg, total))

    def udp(self, dst_mac, dst, sport, dport, data) -> bytes:
        u = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
        pseudo = self.ip + dst + struct.pack("!BBH", 0, 17, len(u))
        s = cksum(pseudo + u) or 0xFFFF
        u = u[:6] + struct.pack("!H", s) + u[8:]
        return self.eth(dst_mac, ETH_IP, self.ipv4(dst, 17, u))


def payload(seq: int, size: int) -> bytes:
    return bytes((seq * 7 + i * 3 + 1) & 0xFF for i in range(size))


@dataclass
class Result:
    ok: bool = True
    phase: str = "start"
    failures: list[str] = field(default_factory=list)
    guest_mac: str | None = None
    announced: str | None = None
    pings: list[dict] = field(default_factory=list)
    sent: dict = field(default_factory=dict)
    frames_in: int = 0

    def fail(self, why: str) -> None:
        self.ok = False
        if len(self.failures) < 20:
            self.failures.append(why)

    def to_json(self) -> dict:
        return {"version": 1, **self.__dict__}


class Peer:
    def __init__(self, cfg: dict, sock: socket.socket, qemu_path: str, stop: list[bool]):
        self.cfg = cfg
        self.sock = sock
        self.qemu_path = qemu_path
        self.stop = stop
        self.f = Frames(mac_bytes(cfg["mac"]), socket.inet_aton(cfg["address"]))
        self.guest_ip = socket.inet_aton(cfg["guest"])
        self.guest_mac = BROADCAST
        self.announced = self.guest_ip
        self.r = Result()

    # ---------------------------------------------------------------- wire
    def send(self, frame: bytes) -> None:
        deadline = time.monotonic() + self.cfg["timeout_s"]
        while True:  # QEMU stops reading while the NIC has no RX descriptor: wait for it
            self._check_stop()
            try:
                self.sock.sendto(frame, self.qemu_path)
                return
            except (BlockingIOError, TimeoutError, InterruptedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def recv(self, want, timeout: float) -> tuple[bytes, float] | None:
        """The first frame from the guest that ``want(frame)`` accepts, and its arrival
        time; None after ``timeout`` seconds.  Others are counted and passed over."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self._check_stop()
            self.sock.settimeout(min(left, 0.2))
            try:
                frame = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError, InterruptedError):
                continue
            t = time.perf_counter()
            self.r.frames_in += 1
            if want(frame):
                return frame, t
        return None

    def _check_stop(self) -> None:
        if self.stop[0]:
            raise Stopped

    # ---------------------------------------------------------------- script
    def run(self) -> Result:
        try:
            self.announce()
            self.arp()
            p = self.cfg["pings"]
            for seq in range(1, p["before"] + 1):
                self.ping(seq)
            self.bad_frames()
            self.burst()
            for seq in range(p["before"] + 1, p["before"] + p["after"] + 1):
                self.ping(seq)
            self.r.phase = "quit"  # to the address the guest announced: it ends either way
            quit_ = self.f.udp(self.guest_mac, self.announced, 9, self.cfg["discard_port"], b"QUIT")
            self.send(quit_)
            self.r.phase = "done"
        except Abort:
            pass
        except Stopped:
            self.r.fail(f"stopped by hil during phase {self.r.phase!r}, before the script's end")
        except (TimeoutError, BlockingIOError) as e:
            self.r.fail(
                f"phase {self.r.phase}: QEMU took no frame for "
                f"{self.cfg['timeout_s']} s ({e.__class__.__name__})"
            )
        except OSError as e:
            self.r.fail(f"phase {self.r.phase}: the socket to QEMU failed: {e}")
        return self.r

    def announce(self) -> None:
        self.r.phase = "announce"

        def gratuitous(fr: bytes) -> bool:
            return (
                len(fr) >= 42
                and fr[12:14] == b"\x08\x06"
                and fr[20:22] == b"\0\x01"
                and fr[28:32] == fr[38:42]
            )

        got = self.recv(gratuitous, self.cfg["start_timeout_s"])
        if got is None:
            self.r.fail(
                f"no gratuitous ARP from the guest within {self.cfg['start_timeout_s']} s "
                "(its NIC never came up, or it sent nothing)"
            )
            raise Abort
        fr = got[0]
        self.guest_mac = fr[22:28]
        self.announced = fr[28:32]
        self.r.announced = socket.inet_ntoa(fr[28:32])

    def arp(self) -> None:
        self.r.phase = "arp"
        req = self.f.arp(1, BROADCAST, self.guest_ip)
        self.send(req)

        def reply(fr: bytes) -> bool:
            return (
                len(fr) >= 42
                and fr[12:14] == b"\x08\x06"
                and fr[20:22] == b"\0\x02"
                and fr[28:32] == self.guest_ip
                and fr[38:42] == self.f.ip
            )

        got = self.recv(reply, self.cfg["timeout_s"])
        if got is None:
            self.r.fail(
                f"no ARP reply for {self.cfg['guest']} within {self.cfg['timeout_s']} s (the guest "
                f"announced {self.r.announced} at {mac_str(self.guest_mac)}); the request: "
                f"{hexq(req)}"
            )
            return  # the pings still go, to the announced MAC: each is judged on its own
        self.guest_mac = got[0][22:28]
        self.r.guest_mac = mac_str(self.guest_mac)

    def ping(self, seq: int) -> None:
        self.r.phase = f"ping {seq}"
        p = self.cfg["pings"]
        size = p["sizes"][(seq - 1) % len(p["sizes"])]
        data = payload(seq, size)
        req = self.f.echo_request(self.guest_mac, self.guest_ip, p["id"], seq, data)
        row = {"seq": seq, "id": p["id"], "size": size, "rtt_ms": None, "ok": False}
        self.r.pings.append(row)
        t0 = time.perf_counter()
        self.send(req)

        def reply(fr: bytes) -> bool:
            return (
                len(fr) >= 42
                and fr[12:14] == b"\x08\x00"
                and fr[23] == 1
                and fr[26:30] == self.guest_ip
                and fr[34] == 0
                and fr[38:42] == struct.pack("!HH", p["id"], seq)
            )

        got = self.recv(reply, p["timeout_s"])
        what = f"echo request id {p['id']:#06x} seq {seq} ({size} bytes) to {self.cfg['guest']}"
        if got is None:
            self.r.fail(f"{what}: no reply within {p['timeout_s']} s; the request: {hexq(req)}")
            return
        fr, t1 = got
        row["rtt_ms"] = round((t1 - t0) * 1000, 3)
        bad = self.judge_reply(fr, data)
        if bad:
            self.r.fail(f"{what}: the reply {bad}; the reply: {hexq(fr)}")
            return
        row["ok"] = True

    def judge_reply(self, fr: bytes, data: bytes) -> str:
        if fr[14] != 0x45:
            return f"has IPv4 version/IHL {fr[14]:#04x}, not 0x45"
        total = struct.unpack("!H", fr[16:18])[0]
        if total != 28 + len(data) or len(fr) < 14 + total:
            return (
                f"claims IPv4 total length {total} in a {len(fr)}-byte frame "
                f"(expected {28 + len(data)})"
            )
        ip, msg = fr[14:34], fr[34 : 14 + total]
        if cksum(ip) != 0:
            return "has a bad IPv4 header checksum"
        if ip[16:20] != self.f.ip:
            return f"goes to {socket.inet_ntoa(ip[16:20])}, not to the peer"
        if fr[0:6] != self.f.mac or fr[6:12] != self.guest_mac:
            return f"has Ethernet {mac_str(fr[6:12])} -> {mac_str(fr[0:6])}"
        if msg[1] != 0:
            return f"has ICMP code {msg[1]}"
        if cksum(msg) != 0:
            return "has a bad ICMP checksum"
        if msg[8:] != data:
            at = next(i for i in range(len(data)) if msg[8 + i] != data[i])
            return f"does not carry the request's payload (they differ from byte {at})"
        return ""

    def bad_frames(self) -> None:
        self.r.phase = "bad frames"
        g, gm = self.guest_ip, self.guest_mac
        sent = self.r.sent
        for i in range(self.cfg["runts"]):
            if i % 2 == 0:  # a 42-byte frame (QEMU pads it to 60) whose IPv4 header claims 84
                fr = self.f.echo_request(gm, g, 0x7272, i, b"", total=84)
            else:  # an IPv4 datagram of 24 bytes: too short for any ICMP echo header
                four = b"\x08\0" + struct.pack("!H", cksum(b"\x08\0\0\0"))  # its checksum true
                fr = self.f.eth(gm, ETH_IP, self.f.ipv4(g, 1, four))
            self.send(fr)
        sent["runts"] = self.cfg["runts"]
        for i in range(self.cfg["long"]):  # 1519..1522 bytes: the NIC takes them, the MTU not
            size = 1519 + i % 4 - 42
            self.send(self.f.echo_request(gm, g, 0x7272, 100 + i, payload(i, size)))
        sent["long"] = self.cfg["long"]
        for i in range(self.cfg["oversize"]):
            self.send(self.f.echo_request(gm, g, 0x7272, 200 + i, payload(i, OVERSIZE - 42)))
        sent["oversize"] = self.cfg["oversize"]

    def burst(self) -> None:
        self.r.phase = "burst"
        n = self.cfg["burst"]
        for i in range(n):
            data = b"BRST" + struct.pack("!II", i, n) + bytes(range(48))
            self.send(self.f.udp(self.guest_mac, self.guest_ip, 9, self.cfg["discard_port"], data))
        self.r.sent["burst"] = n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hil.rawpeer")
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--qemu-socket", required=True)
    ap.add_argument("--run-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    import dpkt  # noqa: F401  (its checksums: a broken install fails here, before READY)

    cfg = json.loads(args.config.read_text())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(0.2)  # never blocks for long: SIGTERM is looked at in between
    try:
        sock.bind(args.socket)
    except OSError as e:
        print(f"BIND {e.strerror or e}", flush=True)
        return 3
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    signal.signal(signal.SIGINT, lambda *_: stop.__setitem__(0, True))
    print("READY", flush=True)
    out = args.run_dir / RESULT
    try:
        result = Peer(cfg, sock, args.qemu_socket, stop).run()
        out.write_text(json.dumps(result.to_json()) + "\n")
        while not stop[0]:  # hil stops us when the run ends
            time.sleep(0.1)
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
