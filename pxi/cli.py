"""The `pxi` command: assemble, inspect, run and store pixel programs.

    pxi asm prog.pxs -o prog.png        pxi disasm prog.png [-o prog.pxs]
    pxi run prog.png|prog.pxs [--backend numpy|wgpu] [--threads N] ...
    pxi info prog.png                   pxi isa
    pxi view prog.png -o view.png [--heatmap]
    pxi store add|get|ls ...            pxi generate [--backend ...] [--png out.png]
    pxi doc-table [--check]

User mistakes produce one paragraph naming the file/line (or pc and pixel) and the fix,
never a traceback; exit codes: 0 ok, 1 the program faulted or ran away, 2 bad input,
3 infrastructure (no wgpu adapter).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from .errors import EXIT_FAULT, PxiError

DEFAULT_MEMORY = 1 << 16


def _load(path: str):
    """A program from a .png (decoded) or a .pxs (assembled on the fly)."""
    from .asm import assemble_file
    from .image import load_png

    p = Path(path)
    if not p.exists():
        raise PxiError(f"{path}: no such file.")
    if p.suffix == ".pxs":
        return assemble_file(p)
    return load_png(p)


def _int(text: str) -> int:
    return int(text, 0)


# --- asm / disasm / info / isa ----------------------------------------------------------


def cmd_asm(a) -> int:
    from .asm import assemble_file
    from .image import save_png

    prog = assemble_file(a.source)
    out = a.output or str(Path(a.source).with_suffix(".png"))
    save_png(prog, out)
    print(
        f"{out}: {prog.width}x{prog.height} pixels, {len(prog.meta.symbols)} symbols, sha256 {prog.sha256()[:16]}"
    )
    return 0


def cmd_disasm(a) -> int:
    from .disasm import disassemble

    text = disassemble(_load(a.image))
    if a.output:
        Path(a.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_info(a) -> int:
    from .disasm import decode
    from .matrix import read_header

    prog = _load(a.image)
    m = prog.meta
    print(
        f"{prog.name}: {prog.width}x{prog.height} pixels ({prog.npix}), format version {m.version}"
    )
    print(f"sha256 (canonical pixels): {prog.sha256()}")
    if m.entries:
        print("entries: " + ", ".join(f"{n}={pc}" for n, pc in m.entries.items()))
    if m.threads or m.memory:
        print(f"defaults: threads={m.threads or 1} memory={m.memory or DEFAULT_MEMORY}")
    if m.sections:
        print("sections:")
        for s in m.sections:
            x0, y0 = prog.xy(s.start)
            line = f"  {s.kind:6} {s.name:24} pc {s.start}..{s.end - 1} ({s.end - s.start} px, from x={x0} y={y0})"
            if s.kind == "matrix":
                problem, h = read_header(prog.pixels, s.start)
                if h:
                    line += f"  {h.rows}x{h.cols} u8 scale={float(h.scale):.6g} offset={float(h.offset):.6g}"
            print(line)
    ops: Counter = Counter()
    code = [s for s in m.sections if s.kind == "code"] or []
    for s in code:
        pc = s.start
        while pc < s.end:
            d = decode(prog.pixels, pc)
            ops[d.op.mnemonic if d else ".word"] += 1
            pc += d.op.length if d else 1
    if ops:
        print("instructions: " + ", ".join(f"{k} {v}" for k, v in ops.most_common()))
    print(
        f"symbols: {len(m.symbols)}"
        + (
            f" ({', '.join(sorted(m.symbols)[:12])}{' ...' if len(m.symbols) > 12 else ''})"
            if m.symbols
            else ""
        )
    )
    return 0


def cmd_isa(a) -> int:
    from .doctable import isa_table

    print(isa_table())
    return 0


def cmd_doc_table(a) -> int:
    from .doctable import check_doc, update_doc

    if a.check:
        problem = check_doc(Path(a.doc))
        if problem:
            print(problem, file=sys.stderr)
            return EXIT_FAULT
        print(f"{a.doc}: the ISA table is current.")
        return 0
    update_doc(Path(a.doc))
    print(f"{a.doc}: ISA table regenerated.")
    return 0


# --- run --------------------------------------------------------------------------------


def _mmio(specs: list[str]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for spec in specs or []:
        try:
            addr, vals = spec.split("=", 1)
            out[int(addr, 0)] = [int(v, 0) for v in vals.split(",")]
        except ValueError:
            raise PxiError(
                f"--mmio {spec!r}: want ADDR=VALUE[,VALUE...] (e.g. 0xfebf0000=0x1234)."
            ) from None
    return out


def cmd_run(a) -> int:
    from .backends import create
    from .devices import Bus, Com1, Events, ScriptedMmio, drive
    from .executor import fault_message
    from .machine import Status

    prog = _load(a.program)
    threads = a.threads or prog.meta.threads or 1
    memory = a.memory or prog.meta.memory or DEFAULT_MEMORY
    ex = create(a.backend, prog, threads, memory, profile=False)
    for spec in a.load or []:
        path, _, addr = spec.rpartition("@")
        try:
            ex.write_memory(int(addr, 0), Path(path).read_bytes())
        except (ValueError, OSError) as e:
            raise PxiError(
                f"--load {spec}: {e} (want FILE@ADDRESS inside {memory} bytes of memory)."
            ) from None
    mmio = _mmio(a.mmio)
    bus = Bus(
        com1=Com1(busy_polls=a.busy_polls),
        mmio=ScriptedMmio(mmio, writable=set(mmio)),
        events=Events(a.event or []),
    )
    res = drive(ex, bus, max_steps=a.max_steps)
    st = ex.state()
    print(f"backend: {ex.describe()}")
    out = bytes(bus.com1.output)
    print(f"serial ({len(out)} bytes):")
    sys.stdout.write(out.decode("latin-1"))
    if out and not out.endswith(b"\n"):
        print()
    kinds = Counter(r.kind.name.lower() for r in res.requests)
    print(
        f"requests: {len(res.requests)}"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})" if kinds else "")
    )
    if a.requests:
        for r in res.requests:
            print(f"  {r}")
    for r in bus.denied:
        print(f"  DENIED {r}")
    print(f"steps: {int(st.steps.sum())} in {res.runs} run(s)")
    for t in range(min(threads, a.show_threads)):
        pc = int(st.pc[t])
        x, y = prog.xy(pc)
        print(
            f"thread {t}: {Status(int(st.status[t])).name.lower()} at pc {pc} (x={x}, y={y}), {int(st.steps[t])} steps"
        )
        regs = st.regs[t]
        for row in range(0, 16, 4):
            print("   " + "  ".join(f"r{i:<2}=0x{int(regs[i]):08x}" for i in range(row, row + 4)))
    if a.dump:
        addr, _, n = a.dump.partition(":")
        data = ex.read_memory(int(addr, 0), int(n, 0))
        print(f"memory 0x{int(addr, 0):x}: {data.hex()}")
    if res.faults:
        for f in res.faults[:5]:
            print(f"fault: {fault_message(f, prog)}", file=sys.stderr)
        return EXIT_FAULT
    if res.runaway:
        print(f"runaway: {res.runaway}", file=sys.stderr)
        return EXIT_FAULT
    if res.stuck:
        print(
            f"stuck: {len(res.stuck)} thread(s) wait for events nobody sends (first: {res.stuck[0]})",
            file=sys.stderr,
        )
        return EXIT_FAULT
    return 0


# --- view / store / generate ----------------------------------------------------------------


def cmd_view(a) -> int:
    from .view import render_view

    prog = _load(a.image)
    counts = None
    if a.heatmap:
        from .backends import create
        from .devices import Bus, drive

        threads = a.threads or prog.meta.threads or 1
        ex = create(a.backend, prog, threads, prog.meta.memory or DEFAULT_MEMORY, profile=True)
        drive(ex, Bus(), max_steps=a.max_steps)
        counts = ex.profile_counts()
    img = render_view(prog, scale=a.scale, counts=counts)
    img.save(a.output)
    print(
        f"{a.output}: {img.width}x{img.height}"
        + (f", heatmap of {int(counts.sum())} executions" if counts is not None else "")
    )
    return 0


def cmd_store(a) -> int:
    from .store import Store

    store = Store(Path(a.store))
    if a.action == "add":
        for path in a.args:
            pid, new_blobs = store.add(_load(path))
            print(f"{pid}  {path}  ({new_blobs} new blob(s))")
    elif a.action == "get":
        if len(a.args) != 1:
            raise PxiError("usage: pxi store get ID [-o out.png]")
        from .image import save_png

        prog = store.get(a.args[0])
        out = a.output or f"{prog.sha256()[:16]}.png"
        save_png(prog, out)
        print(f"{out}: {prog.sha256()}")
    else:
        for pid, info in store.ls():
            print(f"{pid}  {info}")
    return 0


def cmd_generate(a) -> int:
    from .charmodel import generate_cli

    return generate_cli(a)


# --- entry point ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pxi", description="PXI pixel programs: assemble, inspect, run, store."
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("asm", help="assemble a .pxs source into a .png program")
    s.add_argument("source")
    s.add_argument("-o", "--output")
    s.set_defaults(fn=cmd_asm)

    s = sub.add_parser("disasm", help="disassemble a .png program into .pxs source")
    s.add_argument("image")
    s.add_argument("-o", "--output")
    s.set_defaults(fn=cmd_disasm)

    s = sub.add_parser("info", help="describe a program image")
    s.add_argument("image")
    s.set_defaults(fn=cmd_info)

    s = sub.add_parser("isa", help="print the instruction set table")
    s.set_defaults(fn=cmd_isa)

    s = sub.add_parser("doc-table", help="regenerate (or --check) the ISA table in docs/pxi.md")
    s.add_argument("--doc", default="docs/pxi.md")
    s.add_argument("--check", action="store_true")
    s.set_defaults(fn=cmd_doc_table)

    s = sub.add_parser("run", help="run a program with the COM1/MMIO device stubs")
    s.add_argument("program", help=".png program, or .pxs source (assembled on the fly)")
    s.add_argument("--backend", choices=("numpy", "wgpu"), default="numpy")
    s.add_argument("--threads", type=int)
    s.add_argument(
        "--memory", type=_int, help="data memory bytes (default: the program's, else 65536)"
    )
    s.add_argument(
        "--max-steps", type=_int, default=10_000_000, help="steps any thread may execute"
    )
    s.add_argument("--show-threads", type=int, default=1, help="threads whose registers to print")
    s.add_argument("--requests", action="store_true", help="list every request")
    s.add_argument(
        "--busy-polls", type=int, default=0, help="COM1 reports busy this often before ready"
    )
    s.add_argument("--mmio", action="append", help="ADDR=V[,V...]: scripted MMIO read values")
    s.add_argument("--event", action="append", type=_int, help="a value for the next wait request")
    s.add_argument("--load", action="append", help="FILE@ADDR: copy a file into data memory first")
    s.add_argument("--dump", help="ADDR:LEN: print data memory afterwards")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("view", help="render an enlarged view (sections coloured, optional heatmap)")
    s.add_argument("image")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--scale", type=int, default=8)
    s.add_argument(
        "--heatmap", action="store_true", help="profile a run and overlay execution counts"
    )
    s.add_argument("--backend", choices=("numpy", "wgpu"), default="numpy")
    s.add_argument("--threads", type=int)
    s.add_argument("--max-steps", type=_int, default=10_000_000)
    s.set_defaults(fn=cmd_view)

    s = sub.add_parser("store", help="content-addressed program store")
    s.add_argument("action", choices=("add", "get", "ls"))
    s.add_argument("args", nargs="*")
    s.add_argument("-o", "--output")
    s.add_argument("--store", default=str(Path.home() / ".cache" / "pxi-store"))
    s.set_defaults(fn=cmd_store)

    s = sub.add_parser("generate", help="generate text with the shipped character model")
    s.add_argument("--backend", choices=("numpy", "wgpu"), default="numpy")
    s.add_argument("--prompt", default="The GPU ")
    s.add_argument("--tokens", type=int, default=120)
    s.add_argument("--png", help="render the text to this PNG (glyph blitting in pixels)")
    s.add_argument("--program", help="the char-model program (default: the shipped one)")
    s.set_defaults(fn=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except PxiError as e:
        print(f"pxi: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
