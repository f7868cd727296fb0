"""`pxi view`: an enlarged rendering of a program image.

Left panel: every pixel as a block of its RGB colour (R is the opcode, so code looks
banded by instruction kind), framed in the colour of its section (code blue, data green,
matrix orange, outside any section grey).  Right panel (with a profile): an execution
heatmap, black for never executed, then dark red -> yellow -> white on a log scale of how
often the pixel was executed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .image import Program

SECTION_COLOURS = {"code": (40, 90, 255), "data": (40, 200, 80), "matrix": (255, 150, 30)}
NO_SECTION = (90, 90, 90)


def _blocks(rgb: np.ndarray, frame: np.ndarray, scale: int) -> np.ndarray:
    """(h, w, 3) colours + (h, w, 3) frame colours -> enlarged image with 1-px frames."""
    big = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    if scale >= 3:
        fr = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)
        edge = np.zeros((scale, scale), bool)
        edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
        mask = np.tile(edge, rgb.shape[:2])
        big[mask] = fr[mask]
    return big


def heat_colours(counts: np.ndarray) -> np.ndarray:
    """Counts -> RGB on a log scale (0 stays black)."""
    c = counts.astype(np.float64)
    t = np.zeros_like(c)
    nz = c > 0
    if nz.any():
        lc = np.log1p(c)
        t[nz] = 0.15 + 0.85 * lc[nz] / lc.max()
    r = np.clip(t * 3, 0, 1)
    g = np.clip(t * 3 - 1, 0, 1)
    b = np.clip(t * 3 - 2, 0, 1)
    rgb = (np.stack([r, g, b], -1) * 255).astype(np.uint8)
    rgb[~nz] = 0
    return rgb


def render_view(prog: Program, scale: int = 8, counts: np.ndarray | None = None) -> Image.Image:
    h, w = prog.height, prog.width
    rgb = prog.rgba()[:, :, :3].copy()
    frame = np.zeros((h * w, 3), np.uint8)
    frame[:] = NO_SECTION
    for s in prog.meta.sections:
        frame[s.start : s.end] = SECTION_COLOURS.get(s.kind, NO_SECTION)
    panels = [_blocks(rgb, frame.reshape(h, w, 3), scale)]
    if counts is not None:
        heat = heat_colours(np.asarray(counts)[: h * w]).reshape(h, w, 3)
        gap = np.full((h * scale, max(scale, 4), 3), 255, np.uint8)
        panels += [gap, _blocks(heat, frame.reshape(h, w, 3), scale)]
    return Image.fromarray(np.concatenate(panels, axis=1), "RGB")
