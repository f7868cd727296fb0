"""The tiled MatMul kernel (WGSL), generated for a tile shape.

out[rows, N] = in[rows, K] @ dequant(W[K, N]).  Each workgroup computes a BM x BN output
tile; each invocation a TM x TN register tile (rows ty + i*WY, cols tx + j*WX, so that
shared-memory reads are broadcast or consecutive and stores coalesce).  K is walked in
BK-deep slabs staged in workgroup memory: the f32 input tile as-is, the u8 weight tile
dequantized once on load.  Every output element accumulates over k in increasing order,
like the inline path and the NumPy definition.

The register tile is unrolled here in Python rather than left to loops over private
arrays: a driver that does not unroll them would put the accumulators in local memory.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tile:
    bm: int = 64
    bn: int = 64
    bk: int = 16
    tm: int = 4
    tn: int = 4

    @property
    def wx(self) -> int:
        return self.bn // self.tn

    @property
    def wy(self) -> int:
        return self.bm // self.tm

    @property
    def threads(self) -> int:
        return self.wx * self.wy

    def __str__(self) -> str:
        return f"{self.bm}x{self.bn}x{self.bk}/{self.tm}x{self.tn}"


TILES = {
    "64": Tile(64, 64, 16, 4, 4),
    "128": Tile(128, 128, 8, 8, 8),
    "128x64": Tile(128, 64, 16, 8, 4),
}
DEFAULT_TILE = TILES["64"]


def matmul_wgsl(t: Tile) -> str:
    assert t.bm % t.tm == 0 and t.bn % t.tn == 0 and t.threads <= 1024
    acc = [f"c{i}_{j}" for i in range(t.tm) for j in range(t.tn)]
    decl = "\n".join(f"    var {c} = 0.0;" for c in acc)
    loads_a = "\n".join(
        f"            let a{i} = As[k * {t.bm}u + ty + {i * t.wy}u];" for i in range(t.tm)
    )
    loads_b = "\n".join(
        f"            let b{j} = Bs[k * {t.bn}u + tx + {j * t.wx}u];" for j in range(t.tn)
    )
    fmas = "\n".join(
        f"            c{i}_{j} = c{i}_{j} + a{i} * b{j};" for i in range(t.tm) for j in range(t.tn)
    )
    stores = []
    for i in range(t.tm):
        stores.append(f"    {{ let gm = row0 + ty + {i * t.wy}u; if (gm < Q.rows) {{")
        for j in range(t.tn):
            stores.append(
                f"        {{ let gn = col0 + tx + {j * t.wx}u; if (gn < Q.nn) {{ mem[Q.out_w + gm * Q.nn + gn] = bitcast<u32>(c{i}_{j}); }} }}"
            )
        stores.append("    } }")
    store = "\n".join(stores)
    return f"""
var<workgroup> As: array<f32, {t.bk * t.bm}>;  // As[k * BM + m]
var<workgroup> Bs: array<f32, {t.bk * t.bn}>;  // Bs[k * BN + n], dequantized

@compute @workgroup_size({t.wx}, {t.wy})
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {{
    let tx = lid3.x;
    let ty = lid3.y;
    let t = ty * {t.wx}u + tx;
    let row0 = wid.y * {t.bm}u;
    let col0 = wid.x * {t.bn}u;
{decl}
    for (var k0 = 0u; k0 < Q.kk; k0 += {t.bk}u) {{
        for (var i = t; i < {t.bm * t.bk}u; i += {t.threads}u) {{
            let m = i / {t.bk}u;
            let k = i % {t.bk}u;
            let gm = row0 + m;
            let gk = k0 + k;
            var v = 0.0;
            if (gm < Q.rows && gk < Q.kk) {{
                v = bitcast<f32>(mem[Q.in_w + gm * Q.kk + gk]);
            }}
            As[k * {t.bm}u + m] = v;
        }}
        for (var i = t; i < {t.bk * t.bn}u; i += {t.threads}u) {{
            let k = i / {t.bn}u;
            let n = i % {t.bn}u;
            let gk = k0 + k;
            let gn = col0 + n;
            var v = 0.0;
            if (gk < Q.kk && gn < Q.nn) {{
                v = wq(gk * Q.nn + gn);
            }}
            Bs[k * {t.bn}u + n] = v;
        }}
        workgroupBarrier();
        for (var k = 0u; k < {t.bk}u; k += 1u) {{
{loads_a}
{loads_b}
{fmas}
        }}
        workgroupBarrier();
    }}
{store}
}}
"""
