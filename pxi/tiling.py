"""The tiled MatMul kernel (WGSL), generated for a tile shape.

out[rows, N] = in[rows, K] @ dequant(W[K, N]).  Each workgroup computes a BM x BN output
tile; each invocation a TM x TN register tile held as TM x TN/4 vec4 accumulators.
K is walked in BK-deep slabs staged in workgroup memory.  While the invocations multiply
slab s, they have already issued the global loads of slab s+1 into registers; they store
them (the weights dequantized, once per element per workgroup) afterwards, into a second
buffer (double-buffered: one barrier per slab) or, for ``-sb`` tiles, into the same one
after a barrier (two barriers per slab, half the workgroup memory).  The loop body covers
two slabs so that every workgroup-memory read in the products has a constant buffer
index.

Layout (docs/pxi.md section 6):

* As[k][m] (the input tile transposed) and Bs[k][n] are arrays of vec4<f32>, so that an
  invocation reads its 4 rows (columns) for one k with one 16-byte load.  The rows of an
  invocation are ``c * 4*WY + ty*4 + i`` (chunk c < TM/4, i < 4), its columns
  ``d * 4*WX + tx*4 + j``: a warp's B reads are consecutive vec4s (no bank conflicts)
  and its A reads are broadcasts.  As rows are padded by one vec4 so that the transposing
  scalar stores spread over the banks (``-swz``: unpadded, XOR-swizzled instead).
* Entry points: ``matmul`` (any shape: weights byte by byte), ``matmul_n4`` (N % 4 == 0:
  four packed u8 weights per 32-bit load of the image) and, in a module of its own,
  ``matmul_v4`` (also K and both tensors' word addresses multiples of 4: 16-byte input
  loads and output stores through a vec4<u32> view of data memory).  The executor picks
  one per product.

Every output element accumulates over k in increasing order (zero-padded past K), each
step a fused multiply-add ``c = fma(a, w, c)`` unless the tile says ``-nofma``.

The register tile and the k loop are unrolled here in Python rather than left to loops
over private arrays: a driver that does not unroll them would put the accumulators in
local memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Tile:
    bm: int = 128
    bn: int = 128
    bk: int = 8
    tm: int = 8
    tn: int = 8
    fma: bool = True
    db: bool = True  # double-buffered slabs (else one buffer and two barriers per slab)
    swz: bool = False  # As unpadded, its vec4 columns XOR-swizzled by k (else padded)
    v4: bool = True  # use matmul_v4 where the shapes and addresses allow it
    # Benchmark diagnostics only (wrong results, for timing a stage by leaving it out):
    # "nodq" skips the dequantization arithmetic, "nomem" the global loads and staging
    # stores after the first slab, "noa" / "nob" only those of the input / the weights.
    diag: str = ""

    @property
    def wx(self) -> int:
        return self.bn // self.tn

    @property
    def wy(self) -> int:
        return self.bm // self.tm

    @property
    def threads(self) -> int:
        return self.wx * self.wy

    @property
    def sa(self) -> int:
        """vec4s per k-row of As (padded by one unless swizzled)."""
        return self.bm // 4 if self.swz else self.bm // 4 + 1

    @property
    def sb(self) -> int:
        return self.bn // 4

    @property
    def shared_bytes(self) -> int:
        return self.buffers * self.bk * (self.sa + self.sb) * 16

    @property
    def buffers(self) -> int:
        return 2 if self.db else 1

    def __str__(self) -> str:
        s = f"{self.bm}x{self.bn}x{self.bk}/{self.tm}x{self.tn}"
        s = s if self.fma else s + "-nofma"
        s = s if self.db else s + "-sb"
        s = s + "-swz" if self.swz else s
        s = s if self.v4 else s + "-nov4"
        return s + f"-{self.diag}" if self.diag else s


TILES = {
    "64": Tile(64, 64, 16, 4, 4),
    "128": Tile(128, 128, 8, 8, 8),
    "128x64": Tile(128, 64, 16, 8, 4),
    "64x128": Tile(64, 128, 16, 4, 8),
    # the auto choices, from the sweeps on an NVIDIA H200 (docs/pxi.md section 8)
    "small": Tile(64, 64, 32, 4, 4, db=False),
    "large": Tile(128, 256, 16, 8, 16, db=False, v4=False),
}
SMALL_TILE = TILES["small"]
LARGE_TILE = TILES["large"]
# Output tiles of LARGE_TILE at and above which it is used (auto selection): about one
# workgroup per multiprocessor of an H100/H200 (132).  Measured there: at 2048 (128 such
# workgroups) the large tile ran 35 TFLOP/s against 24 for a 64x64 tile.
LARGE_MIN_WORKGROUPS = 128


def choose_tile(rows: int, n: int) -> Tile:
    big = -(-rows // LARGE_TILE.bm) * -(-n // LARGE_TILE.bn)
    return LARGE_TILE if big >= LARGE_MIN_WORKGROUPS else SMALL_TILE


_SPEC = re.compile(
    r"^(\d+)x(\d+)x(\d+)/(\d+)x(\d+)(-nofma)?(-sb)?(-swz)?(-nov4)?(?:-(nodq|nomem|noa|nob))?$"
)


def parse_tile(spec: str) -> Tile:
    """A name from TILES or a shape 'BMxBNxBK/TMxTN', optionally followed by '-nofma'
    (multiply then add), '-sb' (single-buffered), '-swz' (swizzled, unpadded As),
    '-nov4' (no 16-byte entry point) and a diagnostic '-nodq' / '-nomem' / '-noa' / '-nob'."""
    if spec in TILES:
        return TILES[spec]
    m = _SPEC.match(spec)
    if not m:
        raise ValueError(f"unknown tile {spec!r}: a name ({', '.join(TILES)}) or BMxBNxBK/TMxTN")
    t = Tile(
        *(int(m.group(i)) for i in range(1, 6)),
        fma=not m.group(6),
        db=not m.group(7),
        swz=bool(m.group(8)),
        v4=not m.group(9),
        diag=m.group(10) or "",
    )
    check_tile(t)
    return t


def check_tile(t: Tile) -> None:
    if t.tm % 4 or t.tn % 4 or t.bm % t.tm or t.bn % t.tn or not 1 <= t.threads <= 1024:
        raise ValueError(
            f"tile {t}: TM and TN must be multiples of 4 dividing BM and BN, "
            f"with at most 1024 invocations"
        )
    if t.swz and (t.wy % 8 or t.bk % 8):
        raise ValueError(f"tile {t}: the swizzled layout needs BM/TM and BK multiples of 8")


def _parts(total: int, threads: int) -> list[tuple[int, bool]]:
    """(r, guarded) for the r-th element an invocation handles out of `total`."""
    n = -(-total // threads)
    return [(r, (r + 1) * threads > total) for r in range(n)]


def _entry(t: Tile, mode: str) -> str:
    """mode: "u8" (weights byte by byte), "n4" (four weights per 32-bit load; N % 4 == 0)
    or "v4" (n4, plus 16-byte input loads and output stores through a vec4<u32> view of
    data memory; K, N and both tensor addresses multiples of 4 words)."""
    n4 = mode in ("n4", "v4")
    v4 = mode == "v4"
    T, BK, SB = t.threads, t.bk, t.sb
    xyzw = "xyzw"
    lines: list[str] = []
    emit = lines.append
    acc = [(i, d) for i in range(t.tm) for d in range(t.tn // 4)]
    a_total = t.bm * BK // 4 if v4 else t.bm * BK
    a_parts = _parts(a_total, T)
    b_total = BK * t.bn // 4 if n4 else BK * t.bn
    b_parts = _parts(b_total, T)

    def guard(e: str, total: int, guarded: bool) -> tuple[str, str]:
        return (f"if ({e} < {total}u) {{ ", " }") if guarded else ("", "")

    def load(k0: str) -> list[str]:
        out = []
        later = k0 != "0u"  # not the prologue
        for r, g in a_parts if not (later and t.diag == "noa") else []:
            e = f"(t + {r * T}u)"
            g0, g1 = guard(e, a_total, g)
            if v4:
                out.append(
                    f"        {{ let e = {e}; let gm = row0 + e / {BK // 4}u; "
                    f"let gk = {k0} + (e % {BK // 4}u) * 4u; "
                    f"pa{r} = vec4<f32>(0.0); {g0}if (gm < Q.rows && gk < Q.kk) {{ "
                    f"pa{r} = bitcast<vec4<f32>>(mem[(Q.in_w + gm * Q.kk + gk) >> 2u]); }}{g1} }}"
                )
                continue
            out.append(
                f"        {{ let e = {e}; let gm = row0 + e / {BK}u; let gk = {k0} + e % {BK}u; "
                f"pa{r} = 0.0; {g0}if (gm < Q.rows && gk < Q.kk) {{ "
                f"pa{r} = bitcast<f32>(mem[Q.in_w + gm * Q.kk + gk]); }}{g1} }}"
            )
        for r, g in b_parts if not (later and t.diag == "nob") else []:
            e = f"(t + {r * T}u)"
            g0, g1 = guard(e, b_total, g)
            if n4:
                out.append(
                    f"        {{ let e = {e}; let gk = {k0} + e / {SB}u; "
                    f"let gn = col0 + (e % {SB}u) * 4u; "
                    f"pb{r} = 0u; {g0}if (gk < Q.kk && gn < Q.nn) {{ "
                    f"pb{r} = prog[(Q.data + gk * Q.nn + gn) >> 2u]; }}{g1} }}"
                )
            else:
                out.append(
                    f"        {{ let e = {e}; let gk = {k0} + e / {t.bn}u; "
                    f"let gn = col0 + e % {t.bn}u; pb{r} = 0u; "
                    f"{g0}if (gk < Q.kk && gn < Q.nn) {{ let byte = Q.data + gk * Q.nn + gn; "
                    f"pb{r} = (prog[byte >> 2u] >> ((byte & 3u) * 8u)) & 0xffu; }}{g1} }}"
                )
        return out

    def store(buf: str, later: bool = True) -> list[str]:
        out = []
        col = "(m / 4u) ^ (e & 7u)" if t.swz else "m / 4u"  # e % BK & 7 == e & 7 (BK % 8 == 0)
        for r, g in a_parts if not (later and t.diag == "noa") else []:
            e = f"(t + {r * T}u)"
            g0, g1 = guard(e, a_total, g)
            if v4:
                for c in range(4):
                    k = f"(e % {BK // 4}u) * 4u + {c}u"
                    cv = f"(m / 4u) ^ (({k}) & 7u)" if t.swz else "m / 4u"
                    out.append(
                        f"        {{ let e = {e}; let m = e / {BK // 4}u; {g0}"
                        f"As[{buf}u * {BK}u + {k}][{cv}][m % 4u] = pa{r}.{xyzw[c]};{g1} }}"
                    )
                continue
            out.append(
                f"        {{ let e = {e}; let m = e / {BK}u; {g0}"
                f"As[{buf}u * {BK}u + e % {BK}u][{col}][m % 4u] = pa{r};{g1} }}"
            )
        for r, g in b_parts if not (later and t.diag == "nob") else []:
            e = f"(t + {r * T}u)"
            g0, g1 = guard(e, b_total, g)
            if n4:
                w = f"pb{r}"
                out.append(
                    f"        {{ let e = {e}; {g0}Bs[{buf}u * {BK}u + e / {SB}u][e % {SB}u] = "
                    f"vec4<f32>(dq({w} & 0xffu), dq(({w} >> 8u) & 0xffu), "
                    f"dq(({w} >> 16u) & 0xffu), dq({w} >> 24u));{g1} }}"
                )
            else:
                out.append(
                    f"        {{ let e = {e}; let n = e % {t.bn}u; {g0}"
                    f"Bs[{buf}u * {BK}u + e / {t.bn}u][n / 4u][n % 4u] = dq(pb{r});{g1} }}"
                )
        return out

    def compute(buf: int) -> list[str]:
        out = []
        for k in range(BK):
            kk = buf * BK + k
            out.append("        {")
            for c in range(t.tm // 4):
                y = f"ty{k % 8}" if t.swz else "ty"
                out.append(f"            let a{c} = As[{kk}][{y} + {c * t.wy}u];")
            for d in range(t.tn // 4):
                out.append(f"            let b{d} = Bs[{kk}][tx + {d * t.wx}u];")
            for i, d in acc:
                a = f"a{i // 4}.{xyzw[i % 4]}"
                if t.fma:
                    out.append(f"            c{i}_{d} = fma(vec4<f32>({a}), b{d}, c{i}_{d});")
                else:
                    out.append(f"            c{i}_{d} = c{i}_{d} + {a} * b{d};")
            out.append("        }")
        return out

    def step(s: str, buf: int) -> list[str]:
        """Slab s (in buffer `buf`): prefetch slab s+1, multiply, stage slab s+1."""
        more = f"more{buf}"
        out = [f"        let {more} = {s} + 1u < nk;"]
        if not t.db:
            buf = 0
        if t.diag == "nomem":
            return out + compute(buf) + ["        workgroupBarrier();"]
        out.append(f"        if ({more}) {{ let k0 = ({s} + 1u) * {BK}u;")
        out += ["    " + x for x in load("k0")]
        out.append("        }")
        out += compute(buf)
        if not t.db:
            out.append("        workgroupBarrier();")
        out.append(f"        if ({more}) {{")
        out += ["    " + x for x in store(str(1 - buf if t.db else 0))]
        out.append("        }")
        out.append("        workgroupBarrier();")
        return out

    name = {"u8": "matmul", "n4": "matmul_n4", "v4": "matmul_v4"}[mode]
    emit(f"@compute @workgroup_size({t.wx}, {t.wy})")
    emit(
        f"fn {name}(@builtin(workgroup_id) wid: vec3<u32>, "
        "@builtin(local_invocation_id) lid3: vec3<u32>) {"
    )
    emit("    let tx = lid3.x;")
    emit("    let ty = lid3.y;")
    if t.swz:  # (ty + c*WY) ^ s == (ty ^ s) + c*WY for s < 8, WY % 8 == 0
        for sw in range(8):
            emit(f"    let ty{sw} = ty ^ {sw}u;")
    emit(f"    let t = ty * {t.wx}u + tx;")
    emit(f"    let row0 = wid.y * {t.bm}u;")
    emit(f"    let col0 = wid.x * {t.bn}u;")
    emit(f"    let nk = (Q.kk + {BK - 1}u) / {BK}u;")
    for i, d in acc:
        emit(f"    var c{i}_{d} = vec4<f32>(0.0);")
    for r, _ in a_parts:
        emit(f"    var pa{r} = {'vec4<f32>(0.0)' if v4 else '0.0'};")
    for r, _ in b_parts:
        emit(f"    var pb{r} = 0u;")
    lines += load("0u")
    lines += store("0", later=False)
    emit("    workgroupBarrier();")
    # Two slabs per iteration, so that the buffer of every shared-memory read in the
    # unrolled products is a constant (no index arithmetic or bounds clamp per read).
    emit("    for (var s = 0u; s < nk; s += 2u) {")
    lines += step("s", 0)
    emit("        if (more0) {")
    lines += ["    " + x for x in step("(s + 1u)", 1)]
    emit("        }")
    emit("    }")
    for i in range(t.tm):
        row = f"row0 + {(i // 4) * 4 * t.wy + i % 4}u + ty * 4u"
        emit(f"    {{ let gm = {row}; if (gm < Q.rows) {{")
        for d in range(t.tn // 4):
            col = f"col0 + {d * 4 * t.wx}u + tx * 4u"
            c = f"c{i}_{d}"
            if v4:
                emit(
                    f"        {{ let gn = {col}; if (gn < Q.nn) {{ "
                    f"mem[(Q.out_w + gm * Q.nn + gn) >> 2u] = bitcast<vec4<u32>>({c}); }} }}"
                )
            elif n4:
                emit(
                    f"        {{ let gn = {col}; if (gn < Q.nn) {{ "
                    "let o = Q.out_w + gm * Q.nn + gn; "
                    + " ".join(f"mem[o + {j}u] = bitcast<u32>({c}.{xyzw[j]});" for j in range(4))
                    + " } }"
                )
            else:
                emit(
                    f"        {{ let gn = {col}; let o = Q.out_w + gm * Q.nn + gn; "
                    + " ".join(
                        f"if (gn + {j}u < Q.nn) {{ mem[o + {j}u] = bitcast<u32>({c}.{xyzw[j]}); }}"
                        for j in range(4)
                    )
                    + " }"
                )
        emit("    } }")
    emit("}")
    return "\n".join(lines)


def _shared(t: Tile) -> str:
    return f"""
// MatMul tile {t}: {t.threads} invocations, {t.shared_bytes} bytes of workgroup memory.
// As[buffer * BK + k][m / 4] (input), Bs[buffer * BK + k][n / 4] (dequantized weights)
var<workgroup> As: array<array<vec4<f32>, {t.sa}>, {t.buffers * t.bk}>;
var<workgroup> Bs: array<array<vec4<f32>, {t.sb}>, {t.buffers * t.bk}>;

fn dq(q: u32) -> f32 {{
    return {"f32(q)" if t.diag == "nodq" else "f32(q) / Q.scale + Q.offset"};
}}
"""


def matmul_wgsl(t: Tile) -> str:
    """The entry points ``matmul`` and ``matmul_n4`` (for neural.wgsl, where data memory
    is an array<u32>) and their workgroup memory."""
    check_tile(t)
    return f"{_shared(t)}\n{_entry(t, 'u8')}\n\n{_entry(t, 'n4')}\n"


def matmul_v4_module(t: Tile, nparams_struct: str) -> str:
    """A module of its own for ``matmul_v4``: the same bindings as neural.wgsl, but data
    memory viewed as array<vec4<u32>> (16-byte loads and stores)."""
    check_tile(t)
    return f"""// Generated by pxi/tiling.py: the MatMul with 16-byte data-memory accesses.
{nparams_struct}

@group(0) @binding(0) var<storage, read> prog: array<u32>;
@group(0) @binding(1) var<storage, read_write> mem: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> Q: NParams;
{_shared(t)}
{_entry(t, "v4")}
"""
