"""The raw peer's verdict (``raw-peer.json``, written by hil/rawpeer.py) read back.

The peer is a process of ours, but its file is read like anything from outside: at
most MAX_BYTES, every field type-checked and bounded, strings cut; a file that is
missing, too large or malformed is itself the finding (an error: the peer, part of the
machine, did not report), never a traceback.  What it yields: the ``net.ping.*``
metrics, the peer's section in run.json, and a failing finding quoting the peer's
evidence when it saw a fault (a reply missing or damaged, QEMU not taking frames).
"""

from __future__ import annotations

import json
from pathlib import Path

from .devices.base import AfterContext, Finding
from .netmetrics import quantile

RESULT = "raw-peer.json"
MAX_BYTES = 1 << 20
MAX_PINGS = 1024
MAX_TEXT = 600
PHASES = ("start", "announce", "arp", "bad frames", "burst", "quit", "done")


class BadResult(ValueError):
    pass


def collect(ctx: AfterContext, path: Path) -> list[Finding]:
    try:
        r = load(path)
    except BadResult as e:
        return [Finding("raw_peer", "error", f"{path.name}: {e}", "infra")]
    ctx.artifacts[RESULT] = RESULT
    ctx.sections["raw_peer"] = r
    rtts = sorted(p["rtt_ms"] for p in r["pings"] if p["ok"])
    ctx.metrics["net.ping.replies"] = len(rtts)
    if rtts:
        ctx.metrics["net.ping.rtt_ms.p50"] = quantile(rtts, 0.5)
        ctx.metrics["net.ping.rtt_ms.p99"] = quantile(rtts, 0.99)
    if r["ok"] and r["phase"] == "done":
        return []
    first = r["failures"][0] if r["failures"] else f"it stopped in phase {r['phase']!r}"
    more = f" (and {len(r['failures']) - 1} more)" if len(r["failures"]) > 1 else ""
    return [
        Finding(
            "raw_peer",
            "fail",
            f"the raw network peer saw a fault: {first}{more}",
            "check",
            evidence=r["failures"],
        )
    ]


def load(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as e:
        raise BadResult(f"the raw peer wrote no result ({e.strerror or e})") from None
    if len(raw) > MAX_BYTES:
        raise BadResult(f"larger than {MAX_BYTES} bytes: not the peer's result")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadResult(f"not JSON ({e})") from None
    return validate(doc)


def validate(doc) -> dict:
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise BadResult("not a version-1 raw peer result")
    out = {
        "ok": _typed(doc, "ok", bool),
        "phase": _text(doc, "phase"),
        "failures": [_cut(x) for x in _list(doc, "failures", str, 20)],
        "guest_mac": _opt_text(doc, "guest_mac"),
        "announced": _opt_text(doc, "announced"),
        "frames_in": _int(doc, "frames_in", 0, 1 << 31),
        "sent": {
            k: _int(_typed(doc, "sent", dict), k, 0, 1 << 20)
            for k in ("runts", "long", "oversize", "burst")
            if k in doc["sent"]
        },  # fmt: skip
        "pings": [_ping(p) for p in _list(doc, "pings", dict, MAX_PINGS)],
    }
    if not out["phase"].startswith("ping ") and out["phase"] not in PHASES:
        raise BadResult(f"unknown phase {out['phase']!r}")
    return out


def _ping(p: dict) -> dict:
    rtt = p.get("rtt_ms")
    if rtt is not None and (not isinstance(rtt, int | float) or isinstance(rtt, bool)
                            or not 0 <= rtt < 1e7):  # fmt: skip
        raise BadResult(f"a ping's rtt_ms is {str(rtt)[:40]!r}, not a time in ms")
    ok = _typed(p, "ok", bool)
    if ok and rtt is None:
        raise BadResult("a ping is ok without a round trip time")
    return {
        "seq": _int(p, "seq", 0, 0xFFFF),
        "id": _int(p, "id", 0, 0xFFFF),
        "size": _int(p, "size", 0, 65535),
        "rtt_ms": rtt,
        "ok": ok,
    }


def _typed(d: dict, key: str, kind: type):
    v = d.get(key)
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise BadResult(f"{key!r} is {type(v).__name__}, not {kind.__name__}")
    return v


def _int(d: dict, key: str, lo: int, hi: int) -> int:
    v = _typed(d, key, int)
    if not lo <= v <= hi:
        raise BadResult(f"{key!r} = {v} is outside {lo}..{hi}")
    return v


def _list(d: dict, key: str, kind: type, most: int) -> list:
    v = _typed(d, key, list)
    if len(v) > most or not all(isinstance(x, kind) for x in v):
        raise BadResult(f"{key!r} is not a list of at most {most} {kind.__name__} values")
    return v


def _cut(s: str) -> str:
    return s if len(s) <= MAX_TEXT else s[:MAX_TEXT] + " ..."


def _text(d: dict, key: str) -> str:
    return _cut(_typed(d, key, str))


def _opt_text(d: dict, key: str) -> str | None:
    return None if d.get(key) is None else _text(d, key)
