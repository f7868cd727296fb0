"""In-process device stubs and the loop that drives an executor with them.

These are one caller of the executor API (the vGPU bridge of issue 4 is another): they
answer the requests a program issues, the way a broker would.  The executors know
nothing about them.

* ``Com1``: a 16550 UART at port 0x3f8 that collects transmitted bytes and answers
  line-status reads; ``busy_polls`` makes the transmitter report "busy" on that many
  LSR reads before each "ready", so the program's polling loop really polls.
* ``ScriptedMmio``: MMIO addresses with scripted read values; writes are logged.
* ``Events``: the values successive wait-for-event requests receive.
Anything they do not serve is answered DENY, as the microkernel's broker would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .executor import Executor, Fault, Request, Response, runaway_message
from .machine import MAX_BUDGET, RequestKind, Status

COM1 = 0x3F8
LSR_THRE_TEMT = 0x60


class Com1:
    def __init__(self, busy_polls: int = 0):
        self.output = bytearray()
        self.busy_polls = busy_polls
        self._busy_left = busy_polls
        self.lcr = self.ier = self.mcr = self.scr = self.fcr = 0
        self.divisor = 0

    def handles(self, port: int) -> bool:
        return COM1 <= port < COM1 + 8

    def read(self, port: int) -> int:
        off, dlab = port - COM1, bool(self.lcr & 0x80)
        if off == 0:
            return self.divisor & 0xFF if dlab else 0  # no input: RBR reads 0
        if off == 1:
            return self.divisor >> 8 if dlab else self.ier
        if off == 2:
            return 0xC1 if self.fcr & 1 else 0x01  # IIR: no interrupt pending
        if off == 3:
            return self.lcr
        if off == 4:
            return self.mcr
        if off == 5:  # LSR
            if self._busy_left:
                self._busy_left -= 1
                return 0x00
            return LSR_THRE_TEMT
        if off == 6:
            return 0xB0  # MSR: CTS, DSR, DCD
        return self.scr

    def write(self, port: int, value: int) -> None:
        off, dlab = port - COM1, bool(self.lcr & 0x80)
        if off == 0:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self.output.append(value)
                self._busy_left = self.busy_polls
        elif off == 1:
            if dlab:
                self.divisor = (self.divisor & 0xFF) | value << 8
            else:
                self.ier = value
        elif off == 2:
            self.fcr = value
        elif off == 3:
            self.lcr = value
        elif off == 4:
            self.mcr = value
        elif off == 7:
            self.scr = value


class ScriptedMmio:
    """reads: {address: value or [v1, v2, ...]} (a list scripts successive reads; its
    last value repeats).  Only addresses in reads (or writable) are served."""

    def __init__(
        self, reads: dict[int, int | list[int]] | None = None, writable: set[int] | None = None
    ):
        self.reads = {a: list(v) if isinstance(v, list) else [v] for a, v in (reads or {}).items()}
        self.writable = set(writable or ()) | set(self.reads)
        self.writes: list[tuple[int, int, int]] = []  # (address, width, value)

    def read(self, address: int) -> int | None:
        vals = self.reads.get(address)
        if vals is None:
            return None
        return vals.pop(0) if len(vals) > 1 else vals[0]

    def write(self, address: int, width: int, value: int) -> bool:
        if address not in self.writable:
            return False
        self.writes.append((address, width, value))
        return True


class Events:
    def __init__(self, values: list[int] | None = None):
        self.values = list(values or [])

    def next(self) -> int | None:
        return self.values.pop(0) if self.values else None


@dataclass
class Bus:
    com1: Com1 = field(default_factory=Com1)
    mmio: ScriptedMmio = field(default_factory=ScriptedMmio)
    events: Events = field(default_factory=Events)
    denied: list[Request] = field(default_factory=list)

    def answer(self, req: Request) -> Response | None:
        """A response, or None to leave the request pending (no event yet)."""
        k = req.kind
        if (
            k in (RequestKind.PORT_IN, RequestKind.PORT_OUT)
            and self.com1.handles(req.address)
            and req.width == 8
        ):
            if k == RequestKind.PORT_IN:
                return Response(req.thread, self.com1.read(req.address))
            self.com1.write(req.address, req.value)
            return Response(req.thread)
        if k == RequestKind.MMIO_READ:
            v = self.mmio.read(req.address)
            if v is not None:
                return Response(req.thread, v & ((1 << req.width) - 1))
        if k == RequestKind.MMIO_WRITE and self.mmio.write(req.address, req.width, req.value):
            return Response(req.thread)
        if k == RequestKind.WAIT_EVENT:
            v = self.events.next()
            return None if v is None else Response(req.thread, v)
        self.denied.append(req)
        return Response(req.thread, deny=True)


@dataclass
class DriveResult:
    requests: list[Request]  # every request, in the order the executor returned them
    faults: list[Fault]
    steps: int
    runs: int
    runaway: str | None  # the runaway message, if threads were still running at max_steps
    stuck: list[Request]  # requests left unanswered (waiting for events that never came)


def _answer(bus: Bus, req: Request) -> Response | None:
    a = bus.answer(req)
    if a is None or not req.posted:
        return a
    return Response(req.thread, deny=a.deny, posted=True)


def drive(ex: Executor, bus: Bus, max_steps: int = 10_000_000) -> DriveResult:
    """Run ex, answering its requests from bus, until every thread has stopped or some
    thread may have used max_steps instructions."""
    used, runs, steps = 0, 0, 0
    requests: list[Request] = []
    faults: list[Fault] = []
    while True:
        budget = min(MAX_BUDGET, max_steps - used)
        res = ex.run(budget)
        runs += 1
        steps += res.steps
        used += res.max_thread_steps
        requests += res.requests
        faults += res.faults
        # Per thread, its posted writes first: they were issued before what it waits on.
        todo = sorted(ex.posted() + ex.pending(), key=lambda r: (r.thread, not r.posted))
        answers = [a for a in (_answer(bus, r) for r in todo) if a is not None]
        if answers:
            faults += ex.respond(answers)
            continue
        if res.out_of_budget and used >= max_steps:
            st = ex.state()
            return DriveResult(
                requests,
                faults,
                steps,
                runs,
                runaway_message(st, ex.program, max_steps),
                ex.pending(),
            )
        if res.out_of_budget == 0 or budget == 0:
            break
    faults.sort(key=lambda f: f.thread)
    return DriveResult(requests, faults, steps, runs, None, ex.pending())


__all__ = ["Bus", "Com1", "DriveResult", "Events", "ScriptedMmio", "Status", "drive"]
