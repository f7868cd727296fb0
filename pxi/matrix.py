"""Quantized matrices in the program image, defined once.

Layout (docs/pxi.md, "Matrices"): a 5-pixel header followed by the data.

    pixel 0   R = 'Q' (marker), G = dtype (1 = u8), B = A = 0
    pixel 1   rows (u32)
    pixel 2   cols (u32)
    pixel 3   scale  (float32 bits)
    pixel 4   offset (float32 bits)
    then rows*cols bytes, row-major, four per pixel in R, G, B, A order, wrapping at the
    image width; the last pixel is zero-padded.

Quantization is per matrix:  q = clip(round_half_even((f - offset) * scale), 0, 255)
Dequantization:              f = float32(q) / scale + offset      (float32 throughout)
Both executors and the reference forward pass call ``dequantize`` semantics exactly as
written here (the WGSL is ``f32(q) / scale + offset``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .machine import MatrixProblem
from .opcodes import MATRIX_DTYPE_U8, MATRIX_HEADER_PIXELS, MATRIX_MARKER


@dataclass(frozen=True)
class QMatrix:
    q: np.ndarray  # uint8 (rows, cols)
    scale: np.float32
    offset: np.float32

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    def dequantize(self) -> np.ndarray:
        return dequantize(self.q, self.scale, self.offset)

    def pixels(self) -> np.ndarray:
        """Header + data pixels (u32)."""
        rows, cols = self.q.shape
        head = np.array(
            [
                ord(MATRIX_MARKER) | MATRIX_DTYPE_U8 << 8,
                rows,
                cols,
                np.float32(self.scale).view(np.uint32),
                np.float32(self.offset).view(np.uint32),
            ],
            dtype=np.uint32,
        )
        return np.concatenate([head, pack_bytes(self.q.reshape(-1))])


def pack_bytes(data: np.ndarray) -> np.ndarray:
    """Bytes -> pixels (four per pixel, zero-padded)."""
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    pad = (-data.size) % 4
    return np.concatenate([data, np.zeros(pad, np.uint8)]).view("<u4").astype(np.uint32)


def dequantize(q: np.ndarray, scale, offset) -> np.ndarray:
    return q.astype(np.float32) / np.float32(scale) + np.float32(offset)


def quantize(f: np.ndarray) -> QMatrix:
    """Quantize a float array (1-D -> one row) with scale/offset spanning its range."""
    f = np.asarray(f, dtype=np.float32)
    if f.ndim == 1:
        f = f.reshape(1, -1)
    if f.ndim != 2 or f.size == 0:
        raise ValueError(f"a matrix must be 1-D or 2-D and non-empty, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("a matrix to quantize contains NaN or infinity")
    lo, hi = np.float32(f.min()), np.float32(f.max())
    scale = np.float32(255.0) / (hi - lo) if hi > lo else np.float32(1.0)
    if not np.isfinite(scale):  # range so small that 255/range overflows
        scale = np.float32(1.0)
    q = np.clip(np.rint((f - lo) * scale), 0, 255).astype(np.uint8)
    return QMatrix(q, np.float32(scale), np.float32(lo))


@dataclass(frozen=True)
class MatrixHeader:
    pc: int
    rows: int
    cols: int
    data_byte: int  # image byte address of element 0
    scale: np.float32
    offset: np.float32

    def q(self, pixels: np.ndarray) -> np.ndarray:
        raw = pixels.astype("<u4").view(np.uint8)
        n = self.rows * self.cols
        return raw[self.data_byte : self.data_byte + n].reshape(self.rows, self.cols)

    def dequantize(self, pixels: np.ndarray) -> np.ndarray:
        return dequantize(self.q(pixels), self.scale, self.offset)

    @property
    def end_pc(self) -> int:
        return self.pc + MATRIX_HEADER_PIXELS + (self.rows * self.cols + 3) // 4


def _finite_bits(bits: int) -> bool:
    return (bits & 0x7F800000) != 0x7F800000


def read_header(pixels: np.ndarray, pc: int) -> tuple[MatrixProblem | None, MatrixHeader | None]:
    """Validate the header at pc, in the order both executors use (docs/pxi.md)."""
    npix = int(pixels.size)
    if pc >= npix or npix - pc < MATRIX_HEADER_PIXELS:
        return MatrixProblem.PAST_END, None
    h0 = int(pixels[pc])
    if h0 & 0xFF != ord(MATRIX_MARKER):
        return MatrixProblem.MARKER, None
    if h0 >> 8 != MATRIX_DTYPE_U8:
        return MatrixProblem.DTYPE, None
    rows, cols = int(pixels[pc + 1]), int(pixels[pc + 2])
    if rows == 0 or cols == 0:
        return MatrixProblem.EMPTY, None
    avail = (npix - pc - MATRIX_HEADER_PIXELS) * 4
    if cols > avail // rows:
        return MatrixProblem.PAST_END, None
    sbits, obits = int(pixels[pc + 3]), int(pixels[pc + 4])
    if not _finite_bits(sbits) or (sbits & 0x7FFFFFFF) == 0 or sbits >> 31:
        return MatrixProblem.SCALE, None
    if not _finite_bits(obits):
        return MatrixProblem.SCALE, None
    scale = np.array([sbits], np.uint32).view(np.float32)[0]
    offset = np.array([obits], np.uint32).view(np.float32)[0]
    data = (pc + MATRIX_HEADER_PIXELS) * 4
    return None, MatrixHeader(pc, rows, cols, data, scale, offset)


PROBLEM_TEXT = {
    MatrixProblem.MARKER: "is not a matrix header (its R byte is not 'Q')",
    MatrixProblem.DTYPE: "has an unknown dtype or non-zero reserved bytes (want G=1, B=A=0)",
    MatrixProblem.EMPTY: "declares zero rows or columns",
    MatrixProblem.PAST_END: "extends past the end of the image (rows*cols bytes do not fit)",
    MatrixProblem.SCALE: "has a scale that is not finite and positive, or a non-finite offset",
}
