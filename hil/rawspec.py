"""The ``raw_peer`` key of a ``nic`` device: the script of the raw network's host end
(hil/rawpeer.py), validated with file:line errors (docs/scenarios.md, "nic").

    raw_peer:
      guest: 10.0.3.15             # the address the guest's program takes (its GUEST_IP)
      address: 10.0.3.1            # the peer's own (default)
      mac: '02:00:00:00:00:01'     # the peer's MAC (default; quote it)
      pings: {before: 6, after: 2, id: 0x4242, sizes: [0, 56, 1472], timeout_s: 30}
      runts: 2                     # frames shorter than their IPv4 header claims
      long: 1                      # 1519..1522-byte frames: past the MTU, within the NIC
      oversize: 1                  # 1600-byte frames: QEMU's e1000 drops them
      burst: 24                    # UDP datagrams to the discard port, back to back
      discard_port: 9
      timeout_s: 30                # for ARP and for QEMU to take a frame
      start_timeout_s: 120         # for the guest's gratuitous ARP
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass

from .yamlsrc import Fields

MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
MAX_PAYLOAD = 1472  # an MTU of 1500 less the IPv4 and ICMP headers
KEYS = ("guest", "address", "mac", "pings", "runts", "long", "oversize", "burst",
        "discard_port", "timeout_s", "start_timeout_s")  # fmt: skip
PING_KEYS = ("before", "after", "id", "sizes", "timeout_s")


@dataclass(frozen=True)
class Pings:
    before: int = 4
    after: int = 2
    id: int = 0x4242
    sizes: tuple[int, ...] = (56,)
    timeout_s: int = 30


@dataclass(frozen=True)
class RawPeerSpec:
    guest: str
    address: str = "10.0.3.1"
    mac: str = "02:00:00:00:00:01"
    pings: Pings = Pings()
    runts: int = 0
    long: int = 0
    oversize: int = 0
    burst: int = 0
    discard_port: int = 9
    timeout_s: int = 30
    start_timeout_s: int = 120

    def to_json(self) -> dict:
        d = asdict(self)
        d["pings"]["sizes"] = list(self.pings.sizes)
        return d


def parse_raw_peer(f: Fields, ctx) -> RawPeerSpec | None:
    raw = f.get("raw_peer", dict, None, example="raw_peer: {guest: 10.0.3.15}")
    if raw is None:
        return None
    before = len(ctx.problems.items)
    e = Fields(ctx.problems, raw, f.path("raw_peer"), KEYS, f.line_of("raw_peer"))
    guest = _ipv4(e, "guest")
    address = _ipv4(e, "address", "10.0.3.1")
    mac = e.get("mac", str, "02:00:00:00:00:01", example="mac: '02:00:00:00:00:01'")
    if mac is not None and not MAC.fullmatch(mac.lower()):
        e.error("mac", f"{mac[:40]!r} is not a MAC address: six two-digit hex bytes with "
                "colons, e.g. '02:00:00:00:00:01' (quote it).")  # fmt: skip
    if guest is not None and guest == address:
        e.error("guest", f"the guest and the peer cannot both be {guest}.")
    counts = {
        k: _count(e, k, 1024 if k == "burst" else 64)
        for k in ("runts", "long", "oversize", "burst")
    }
    port = _ranged(e, "discard_port", 9, 1, 65535)
    timeout = _ranged(e, "timeout_s", 30, 1, 600)
    start = _ranged(e, "start_timeout_s", 120, 1, 600)
    pings = _pings(e, ctx)
    e.done()
    if len(ctx.problems.items) > before:
        return None
    return RawPeerSpec(guest, address, mac.lower(), pings, discard_port=port, timeout_s=timeout,
                       start_timeout_s=start, **counts)  # fmt: skip


def _ipv4(e: Fields, key: str, *default):
    text = e.get(key, str, *default, example=f"{key}: 10.0.3.15")  # no default: required
    if text is None:
        return None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        e.error(key, f"{text[:40]!r} is not an IPv4 address in dotted form, e.g. 10.0.3.15.")
        return None


def _ranged(e: Fields, key: str, default: int, lo: int, hi: int) -> int | None:
    value = e.get(key, int, default, example=f"{key}: {default}")
    if value is not None and not lo <= value <= hi:
        e.error(key, f"{value} is out of range: {lo} to {hi}.")
        return None
    return value


def _count(e: Fields, key: str, most: int) -> int | None:
    return _ranged(e, key, 0, 0, most)


def _pings(e: Fields, ctx) -> Pings:
    raw = e.get("pings", dict, None, example="pings: {before: 4, after: 2}")
    if raw is None:
        return Pings()
    p = Fields(ctx.problems, raw, e.path("pings"), PING_KEYS, e.line_of("pings"))
    before = _ranged(p, "before", 4, 0, 256)
    after = _ranged(p, "after", 2, 0, 256)
    ident = _ranged(p, "id", 0x4242, 0, 0xFFFF)
    timeout = _ranged(p, "timeout_s", 30, 1, 600)
    sizes = p.get("sizes", list, [56], example="sizes: [0, 56, 1472]")
    if sizes is not None and (
        not sizes
        or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_PAYLOAD for n in sizes
        )  # fmt: skip
    ):
        p.error("sizes", f"must be a list of ICMP payload sizes, each 0 to {MAX_PAYLOAD} bytes "
                "(the MTU less the IPv4 and ICMP headers), e.g. [0, 56, 1472].")  # fmt: skip
        sizes = None
    p.done()
    if None in (before, after, ident, timeout, sizes):
        return Pings()
    return Pings(before, after, ident, tuple(sizes), timeout)
