"""pcap (post-run): assertions over the capture QEMU wrote of a NIC's traffic
(``-object filter-dump``, artifact ``<nic>.pcap``), parsed with dpkt.

    checks:
      - pcap:
          device: nic0                        # the nic instance whose capture it reads
          arp_reply_from: '52:55:0a:00:02:02' # an ARP reply sent by this MAC
          udp_echo: {port: 40007, count: 32}  # exactly 32 datagrams to port 40007 and 32
                                              # back from it, the i-th reply carrying the
                                              # i-th request's payload
          icmp_echo: {id: 0x4242, count: 9}   # exactly 9 ICMP echo requests with this id
                                              # and 9 replies, each after its request (same
                                              # seq), carrying its payload
          checksums: true                     # no IPv4 header, UDP or ICMP checksum is wrong

A failure names the frame: its index in the capture, its time since the first frame,
a summary and its first bytes in hex.  dpkt (well kept, pure Python, no dependencies)
reads pcap and decodes Ethernet/ARP/IPv4/UDP; the checksums are recomputed here from
the frame's own bytes with dpkt's RFC 1071 helpers.
"""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from ..devices.base import Finding
from .base import CHECKS, CheckKind

MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
HEX_BYTES = 48


@dataclass(frozen=True)
class PcapCheck:
    device: str
    arp_reply_from: str | None = None
    echo_port: int | None = None
    echo_count: int | None = None
    checksums: bool = False
    icmp_id: int | None = None
    icmp_count: int | None = None


@dataclass(frozen=True)
class Frame:
    index: int
    t: float  # seconds since the capture's first frame
    raw: bytes

    def quote(self, what: str = "") -> str:
        head = self.raw[:HEX_BYTES].hex(" ")
        more = " ..." if len(self.raw) > HEX_BYTES else ""
        return (
            f"frame {self.index} at {self.t:.3f} s ({len(self.raw)} bytes{', ' + what if what else ''}): "
            f"{summary(self.raw)}; {head}{more}"
        )


@CHECKS.register
class PcapKind(CheckKind):
    name = "pcap"
    post = True
    keys = ("device", "arp_reply_from", "udp_echo", "icmp_echo", "checksums")

    def parse(self, f, ctx):
        from ..yamlsrc import Fields

        before = len(f.problems.items)
        device = f.get("device", str, example="device: nic0")
        mac = f.get("arp_reply_from", str, None, example="arp_reply_from: '52:55:0a:00:02:02'")
        if mac is not None and not MAC.fullmatch(mac.lower()):
            f.error(
                "arp_reply_from",
                f"{mac[:40]!r} is not a MAC address: six two-digit hex bytes with colons, "
                "e.g. '52:55:0a:00:02:02' (quote it: YAML reads some such values as numbers).",
            )
        checksums = f.get("checksums", bool, False, example="checksums: true")
        port = count = None
        raw = f.get("udp_echo", dict, None, example="udp_echo: {port: 40007, count: 32}")
        if raw is not None:
            e = Fields(
                ctx.problems, raw, f.path("udp_echo"), ("port", "count"), f.line_of("udp_echo")
            )
            port = e.get("port", int, example="port: 40007")
            count = e.get("count", int, example="count: 32")
            e.done()
            if port is not None and not 1 <= port <= 65535:
                e.error("port", f"{port} is not a UDP port (1 to 65535).")
            if count is not None and count < 0:
                e.error("count", f"must be 0 or more, got {count}.")
        icmp_id, icmp_count = self._icmp(f, ctx)
        if device is None or len(f.problems.items) > before:
            return None
        return PcapCheck(
            device, mac.lower() if mac else None, port, count, checksums, icmp_id, icmp_count
        )

    @staticmethod
    def _icmp(f, ctx) -> tuple[int | None, int | None]:
        from ..yamlsrc import Fields

        raw = f.get("icmp_echo", dict, None, example="icmp_echo: {id: 0x4242, count: 9}")
        if raw is None:
            return None, None
        e = Fields(ctx.problems, raw, f.path("icmp_echo"), ("id", "count"), f.line_of("icmp_echo"))
        ident = e.get("id", int, example="id: 0x4242")
        count = e.get("count", int, example="count: 9")
        e.done()
        if ident is not None and not 0 <= ident <= 0xFFFF:
            e.error("id", f"{ident} is not an ICMP echo identifier (0 to 65535).")
        if count is not None and count < 0:
            e.error("count", f"must be 0 or more, got {count}.")
        return ident, count

    def run_post(self, spec, ctx) -> Finding:
        name = ctx.artifacts.get(f"{spec.device}.pcap")
        if name is None:
            known = sorted(a[:-5] for a in ctx.artifacts if a.endswith(".pcap"))
            return fail(
                f"no capture of a NIC named {spec.device!r} in this run (captures: "
                f"{', '.join(known) or 'none'})"
            )
        try:
            frames = read(ctx.run_dir / name)
        except (OSError, ValueError) as e:
            return fail(f"{name}: cannot read the capture: {e}")
        said = []
        for judge in (arp_reply, udp_echo, icmp_echo, checksums):
            verdict = judge(spec, frames)
            if isinstance(verdict, Finding):
                return verdict
            if verdict:
                said.append(verdict)
        return Finding("pcap", "pass", f"{name}: {len(frames)} frames; " + "; ".join(said))


def fail(reason: str, evidence: list[str] | None = None) -> Finding:
    return Finding("pcap", "fail", reason, "pcap", evidence=evidence or [])


def read(path: Path) -> list[Frame]:
    import dpkt

    with path.open("rb") as fh:
        try:
            rows = list(dpkt.pcap.Reader(fh))
        except (dpkt.dpkt.NeedData, dpkt.dpkt.UnpackError, ValueError) as e:
            raise ValueError(f"not a complete pcap file ({e})") from None
    t0 = rows[0][0] if rows else 0.0
    return [Frame(i, ts - t0, bytes(buf)) for i, (ts, buf) in enumerate(rows)]


def summary(raw: bytes) -> str:
    """One line about a frame: its layers as dpkt decodes them."""
    import dpkt

    try:
        eth = dpkt.ethernet.Ethernet(raw)
    except (dpkt.dpkt.UnpackError, dpkt.dpkt.NeedData):
        return "not an Ethernet frame"
    src, dst = mac_str(eth.src), mac_str(eth.dst)
    d = eth.data
    if isinstance(d, dpkt.arp.ARP):
        op = {1: "request", 2: "reply"}.get(d.op, f"op {d.op}")
        return f"ARP {op} {mac_str(d.sha)} {socket.inet_ntoa(d.spa)} -> {socket.inet_ntoa(d.tpa)}"
    if isinstance(d, dpkt.ip.IP):
        a, b = socket.inet_ntoa(d.src), socket.inet_ntoa(d.dst)
        if isinstance(d.data, dpkt.udp.UDP):
            u = d.data
            return f"UDP {a}:{u.sport} -> {b}:{u.dport} {len(u.data)} bytes"
        if d.p == 1 and len(d.data) >= 8 and isinstance(d.data, dpkt.icmp.ICMP):
            t, raw8 = d.data.type, bytes(d.data)
            what = {8: "echo request", 0: "echo reply"}.get(t, f"type {t}")
            if t in (0, 8):
                ident, seq = struct.unpack("!HH", raw8[4:8])
                what += f" id {ident:#06x} seq {seq} {len(raw8) - 8} bytes"
            return f"ICMP {a} -> {b} {what}"
        return f"IPv4 {a} -> {b} protocol {d.p}"
    return f"Ethernet {src} -> {dst} type {eth.type:04x}"


def mac_str(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def decode(frame: Frame):
    import dpkt

    try:
        return dpkt.ethernet.Ethernet(frame.raw)
    except (dpkt.dpkt.UnpackError, dpkt.dpkt.NeedData):
        return None


def arp_reply(spec, frames) -> Finding | str:
    import dpkt

    if spec.arp_reply_from is None:
        return ""
    arps = [(f, e.data) for f in frames if (e := decode(f)) and isinstance(e.data, dpkt.arp.ARP)]
    if any(a.op == 2 and mac_str(a.sha) == spec.arp_reply_from for _, a in arps):
        return f"an ARP reply from {spec.arp_reply_from}"
    return fail(
        f"no ARP reply from {spec.arp_reply_from} among {len(arps)} ARP frames"
        + (f"; the first: {arps[0][0].quote()}" if arps else ""),
        [f.quote() for f, _ in arps[:10]],
    )


def udp_echo(spec, frames) -> Finding | str:
    import dpkt

    if spec.echo_port is None:
        return ""
    out, back = [], []
    for f in frames:
        e = decode(f)
        if (
            e is None
            or not isinstance(e.data, dpkt.ip.IP)
            or not isinstance(e.data.data, dpkt.udp.UDP)
        ):
            continue
        u = e.data.data
        if u.dport == spec.echo_port:
            out.append((f, bytes(u.data)))
        elif u.sport == spec.echo_port:
            back.append((f, bytes(u.data)))
    n, port = spec.echo_count, spec.echo_port
    for what, got in (("to", out), ("from", back)):
        if len(got) != n:
            extra = f"; the first beyond them: {got[n][0].quote()}" if len(got) > n else ""
            return fail(
                f"{len(got)} UDP datagrams {what} port {port}, the scenario expects {n}{extra}",
                [f.quote() for f, _ in got[:10]],
            )
    for i, ((fo, po), (fb, pb)) in enumerate(zip(out, back, strict=True)):
        if po != pb:
            at = next(
                (k for k in range(min(len(po), len(pb))) if po[k] != pb[k]), min(len(po), len(pb))
            )
            return fail(
                f"UDP echo {i}: the reply does not carry the request's payload (they differ "
                f"from byte {at}): request {fo.quote()}; reply {fb.quote()}",
                [fo.quote(), fb.quote()],
            )
        if fb.index < fo.index:
            return fail(f"UDP echo {i}: the reply comes before its request: {fb.quote()}")
    return f"{n} UDP datagrams to port {port} and {n} back in order, payloads intact"


def icmp_echo(spec, frames) -> Finding | str:
    """Echo requests with the id and their replies, paired by sequence number."""
    if spec.icmp_id is None:
        return ""
    req, rep = {}, {}
    for f in frames:
        msg = icmp_of(f)
        if msg is None or msg[0] not in (0, 8) or len(msg) < 8:
            continue
        ident, seq = struct.unpack("!HH", msg[4:8])
        if ident == spec.icmp_id:
            (req if msg[0] == 8 else rep).setdefault(seq, (f, msg[8:]))
    n, ident = spec.icmp_count, spec.icmp_id
    for what, got in (("requests", req), ("replies", rep)):
        if len(got) != n:
            return fail(
                f"{len(got)} ICMP echo {what} with id {ident:#06x}, the scenario expects {n}",
                [f.quote() for f, _ in list(got.values())[:10]],
            )
    for seq, (fq, pq) in sorted(req.items()):
        if seq not in rep:
            return fail(f"ICMP echo request seq {seq} has no reply: {fq.quote()}", [fq.quote()])
        fr, pr = rep[seq]
        if fr.index < fq.index:
            return fail(f"ICMP echo seq {seq}: the reply comes before its request: {fr.quote()}")
        if pr != pq:
            return fail(
                f"ICMP echo seq {seq}: the reply does not carry the request's payload: request "
                f"{fq.quote()}; reply {fr.quote()}",
                [fq.quote(), fr.quote()],
            )
    return f"{n} ICMP echo requests with id {ident:#06x} and {n} replies, payloads intact"


def icmp_of(f: Frame) -> bytes | None:
    """The ICMP message of an unfragmented IPv4 frame, cut at the IPv4 total length."""
    raw = f.raw
    if len(raw) < 34 or raw[12:14] != b"\x08\x00" or raw[23] != 1:
        return None
    hl = (raw[14] & 15) * 4
    total = struct.unpack("!H", raw[16:18])[0]
    if hl < 20 or total < hl or 14 + total > len(raw):
        return None  # a runt: its header claims more than the frame holds
    return raw[14 + hl : 14 + total]


def checksums(spec, frames) -> Finding | str:
    import dpkt

    if not spec.checksums:
        return ""
    n = 0
    for f in frames:
        e = decode(f)
        if e is None or not isinstance(e.data, dpkt.ip.IP):
            continue
        raw = f.raw[14:]
        hl = (raw[0] & 15) * 4
        if dpkt.in_cksum(raw[:hl]) != 0:
            return fail(f"bad IPv4 header checksum: {f.quote()}", [f.quote()])
        n += 1
        total = struct.unpack("!H", raw[2:4])[0]
        if raw[9] == 17 and len(raw) >= hl + 8 and raw[hl + 6 : hl + 8] != b"\0\0":
            udp = raw[hl:total]
            pseudo = raw[12:20] + struct.pack("!BBH", 0, 17, len(udp))
            if dpkt.in_cksum(pseudo + udp) != 0:
                return fail(f"bad UDP checksum: {f.quote()}", [f.quote()])
        msg = icmp_of(f)
        if msg is not None and dpkt.in_cksum(msg) != 0:
            return fail(f"bad ICMP checksum: {f.quote()}", [f.quote()])
    return f"{n} IPv4 frames with correct checksums"
