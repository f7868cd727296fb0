"""The bridge's record of a run: everything needed to replay it without QEMU.

Format: JSON Lines (``trace.jsonl`` in the run directory), one record per line, each with
a type ``t``.  Byte strings are zlib-compressed and base64-encoded (``"z"`` fields).  The
bridge writes records in the order things happened; ``read`` returns them as dicts with
bytes already decoded.  docs/vgpu.md ("Trace") is the format's documentation.

    start    program (width, pixels, entry, threads, memory, sha256, pixels:z),
             backend, adapter, budget
    memory   the data memory as the executor got it before the first run (z)
    writes   bytes someone other than the executor changed in the heap since the
             last run (the guest CPU, device DMA): [[offset, z], ...]
    run      one executor run: at (start, s since the bridge started) and dt (its
             duration) for benchmarks, not replayed; n, budget, steps, requests [[seq, thread, pc, kind,
             width, addr, value, posted], ...], faults [[thread, pc, code, d0, d1], ...]
    respond  responses given to the executor: [[seq, thread, value, deny, posted], ...]
             (seq -1: a WAIT_EVENT answered from the event queue; posted 1: the answer
             to a posted write, which gives its thread the posting credit back)
    end      why the bridge stopped (halted, fault, error, stopped), final memory (z),
             threads [[pc, status, steps], ...]

A trace is complete only with its `end` record, the last line: one without it (the
bridge was killed, the file was cut) replays as a divergence "incomplete", never a pass.
"""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path
from typing import IO

# 2: posted writes (a `posted` flag ending every request row and respond item).  A
# version-1 trace has none, and reads as version 2 with every flag 0.
FORMAT_VERSION = 2
READS = (1, 2)


def pack(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data, 6)).decode("ascii")


def unpack(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text))


class TraceWriter:
    def __init__(self, path: Path):
        self._f: IO[str] = path.open("w", encoding="utf-8")

    def write(self, kind: str, **fields) -> None:
        # One write and a flush per record: a bridge that is killed leaves whole records
        # (and at most one cut line, which read() recognises), never a buffer's worth lost.
        self._f.write(json.dumps({"t": kind, **fields}, separators=(",", ":")) + "\n")
        self._f.flush()

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class TraceError(Exception):
    pass


def _check_shape(t: str, rec: dict) -> None:
    """Rows of the length this version writes (a malformed record, else)."""
    rows = {"run": ("requests", 8), "respond": ("items", 5)}.get(t)
    if rows and any(len(row) != rows[1] for row in rec[rows[0]]):
        raise ValueError(f"'{t}' {rows[0]} must have {rows[1]} fields each")


def read(path: Path) -> list[dict]:
    """All records, with 'z' byte fields decoded (pixels, data, ranges)."""
    records = []
    version = FORMAT_VERSION
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: cannot read the trace ({e})") from None
    lines = text.splitlines()
    # The writer ends every record with a newline: a last line without one was cut off
    # (the bridge killed mid-write, a full disk).  It is dropped, and the missing `end`
    # record then makes the replay report the trace as incomplete.
    if lines and not text.endswith("\n"):
        lines.pop()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            t = rec["t"]
            if t == "start":
                if rec.get("version") not in READS:
                    raise TraceError(
                        f"{path}:{n}: trace format {rec.get('version')}, this "
                        f"hil reads {', '.join(map(str, READS))}"
                    )
                version = rec["version"]
                rec["program"]["pixels"] = unpack(rec["program"].pop("pixels_z"))
            elif t in ("memory", "end") and "z" in rec:
                rec["data"] = unpack(rec.pop("z"))
            elif t == "writes":
                rec["ranges"] = [(off, unpack(z)) for off, z in rec["ranges"]]
            elif t == "run" and version == 1:
                rec["requests"] = [[*row, 0] for row in rec["requests"]]
            elif t == "respond" and version == 1:
                rec["items"] = [[*item, 0] for item in rec["items"]]
            _check_shape(t, rec)
        except TraceError:
            raise
        except (ValueError, KeyError, TypeError, zlib.error) as e:
            raise TraceError(f"{path}:{n}: malformed trace record ({e})") from None
        records.append(rec)
    if not records or records[0]["t"] != "start":
        raise TraceError(
            f"{path}: not a vGPU trace (no 'start' record); was the run made "
            "with a virtual GPU that received a program?"
        )
    return records
