"""The bridge's view of VRAM: header, rings, program and heap -- trusting nothing.

The guest can write any byte of VRAM at any time.  So every offset used here comes from
the bridge's own ``Regions`` (never from header fields the guest could overwrite), every
index and size read from VRAM is checked before use, and a bad value is reported as a
``Problem`` (logged by the bridge) instead of being followed.  Nothing here can read or
write outside the buffer it was given.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import layout as L

U32 = 1 << 32


@dataclass(frozen=True)
class Problem:
    what: str

    def __str__(self) -> str:
        return self.what


@dataclass(frozen=True)
class ProgramSpec:
    width: int
    pixels: int
    entry: int
    threads: int
    memory: int


@dataclass(frozen=True)
class Posted:
    seq: int
    thread: int
    kind: int
    width: int
    pc: int
    addr: int
    value: int
    flags: int = 0  # L.REQ_FLAGS


class Vram:
    def __init__(self, buf, regions: L.Regions):
        if len(buf) < regions.vram_size:
            raise ValueError("buffer smaller than the VRAM size")
        self.buf = buf
        self.r = regions
        self.n = L.RING_ENTRIES
        self.mask = self.n - 1
        # The bridge's own ring counters live here; VRAM only gets copies of them for
        # the guest to read, so a guest scribbling on them cannot steer the bridge.
        self.mine = {"req_head": 0, "rsp_tail": 0, "evt_tail": 0}

    # -- header ------------------------------------------------------------------
    def get(self, name: str) -> int:
        return L.HEADER.get(self.buf, 0, name)

    def put(self, name: str, value: int) -> None:
        L.HEADER.put(self.buf, 0, name, value)

    def initialise(self) -> None:
        """What the bridge writes before QEMU starts: the header, empty rings."""
        self.buf[: self.r.prog_off] = bytes(self.r.prog_off)
        for name, value in self.r.header_values().items():
            self.put(name, value)

    @property
    def state(self) -> int:
        return self.get("state")

    # -- the program ----------------------------------------------------------------
    def program(self, max_threads: int) -> tuple[ProgramSpec | None, int]:
        """The program the guest asked for, or (None, L.ERRORS code)."""
        g = {k: self.get(f"prog_{k}") for k in ("width", "pixels", "entry", "threads", "memory")}
        if (
            not g["width"]
            or not g["pixels"]
            or g["pixels"] % g["width"]
            or g["pixels"] * 4 > self.r.prog_max
        ):
            return None, L.ERRORS["BAD_SIZE"]
        if not g["memory"] or g["memory"] % 4 or g["memory"] > self.r.heap_size:
            return None, L.ERRORS["BAD_MEMORY"]
        if not 1 <= g["threads"] <= max_threads:
            return None, L.ERRORS["BAD_THREADS"]
        if g["entry"] >= g["pixels"]:
            return None, L.ERRORS["BAD_ENTRY"]
        return ProgramSpec(**g), L.ERRORS["NONE"]

    def program_pixels(self, spec: ProgramSpec) -> bytes:
        off = self.r.prog_off
        return bytes(self.buf[off : off + spec.pixels * 4])

    # -- the heap ---------------------------------------------------------------------
    def read_heap(self, length: int) -> bytes:
        length = min(length, self.r.heap_size)
        return bytes(self.buf[self.r.heap_off : self.r.heap_off + length])

    def write_heap(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self.r.heap_size:
            raise ValueError("write outside the heap")
        start = self.r.heap_off + offset
        self.buf[start : start + len(data)] = data

    # -- rings --------------------------------------------------------------------------
    def _counter(self, name: str) -> int:
        return self.mine[name] if name in self.mine else self.get(name)

    def _filled(self, head: str, tail: str) -> tuple[int, Problem | None]:
        """Entries between tail and head (free-running u32 counters); the guest's
        counter is checked against ours."""
        h, t = self._counter(head), self._counter(tail)
        n = (h - t) % U32
        if n > self.n:
            return 0, Problem(
                f"{head}={h} and {tail}={t} are {n} apart, more than the ring's "
                f"{self.n} entries; ignoring the ring until they make sense"
            )
        return n, None

    def request_space(self) -> tuple[int, Problem | None]:
        """Requests we may post now.  Request i is answered in response slot i, so a
        slot is free only once *we* have consumed its response: count against our own
        rsp_tail, never against the guest's req_tail (which runs ahead of it while the
        guest answers requests whose responses we have not read yet)."""
        return self.n - self.in_flight(), None

    def in_flight(self) -> int:
        """Requests posted whose responses we have not consumed (0..ring entries: take()
        never consumes more responses than there are requests in flight)."""
        return (self.mine["req_head"] - self.mine["rsp_tail"]) % U32

    def post_requests(self, items: list[Posted]) -> None:
        """Write entries at req_head and then publish them by advancing req_head.
        The caller checked request_space()."""
        head = self.mine["req_head"]
        for it in items:
            base = self.r.req_off + (head & self.mask) * L.REQUEST.size
            self.buf[base : base + L.REQUEST.size] = bytes(L.REQUEST.size)
            for name in ("seq", "thread", "kind", "width", "flags", "pc", "addr", "value"):
                L.REQUEST.put(self.buf, base, name, getattr(it, name))
            head = (head + 1) % U32
        self.mine["req_head"] = head
        self.put("req_head", head)  # publish last: the guest reads entries after this

    def take(self, ring: str) -> tuple[list[dict], Problem | None]:
        """Entries the guest posted to 'rsp' or 'evt' since we last looked."""
        s = L.RESPONSE if ring == "rsp" else L.EVENT
        off = self.r.rsp_off if ring == "rsp" else self.r.evt_off
        n, p = self._filled(f"{ring}_head", f"{ring}_tail")
        if ring == "rsp" and n > self.in_flight():
            p = Problem(
                f"rsp_head={self.get('rsp_head')} claims {n} responses but only "
                f"{self.in_flight()} requests are in flight; ignoring the ring until it makes sense"
            )
            n = 0
        tail = self.mine[f"{ring}_tail"]
        out = []
        for i in range(n):
            out.append(s.read(self.buf, off + ((tail + i) & self.mask) * s.size))
        self.mine[f"{ring}_tail"] = (tail + n) % U32
        self.put(f"{ring}_tail", self.mine[f"{ring}_tail"])
        return out, p
