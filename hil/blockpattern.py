"""The block test's data pattern and checksum, defined once for host and GPU.

pxi/programs/lib/blockpattern.pxs is the pixel implementation; both follow the
definition below and tests/pxi/test_blockpattern.py runs the pixel routines on the NumPy
executor to prove they agree.  hil uses this module to compute the checksums a scenario
expects on the serial console and to check a used disk image on the host.

Word i (little-endian u32) of LBA l (its low 32 bits) for a seed s, mod 2^32::

    x = s ^ (l * 0x9e3779b1) ^ (i * 0x85ebca77)
    x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16

Checksum of a byte string (a multiple of 4 long) read as u32 words w::

    c = 0x811c9dc5; for each w: c = (c ^ w) * 0x01000193
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

K1, K2, M1, M2 = 0x9E3779B1, 0x85EBCA77, 0x7FEB352D, 0x846CA68B
CSUM_INIT, CSUM_PRIME = 0x811C9DC5, 0x01000193


def _words(seed: int, lbas: np.ndarray, lba_size: int) -> np.ndarray:
    """Pattern words, shape (len(lbas), lba_size // 4), uint32."""
    if lba_size <= 0 or lba_size % 4:
        raise ValueError(f"LBA size {lba_size} is not a positive multiple of 4")
    with np.errstate(over="ignore"):
        lo = (np.asarray(lbas, dtype=np.uint64) & 0xFFFFFFFF).astype(np.uint32)
        base = np.uint32(seed & 0xFFFFFFFF) ^ (lo * np.uint32(K1))
        i = np.arange(lba_size // 4, dtype=np.uint32) * np.uint32(K2)
        x = base[:, None] ^ i[None, :]
        x ^= x >> np.uint32(16)
        x *= np.uint32(M1)
        x ^= x >> np.uint32(15)
        x *= np.uint32(M2)
        x ^= x >> np.uint32(16)
    return x


def pattern(seed: int, lba: int, lba_size: int, count: int = 1) -> bytes:
    """The bytes of `count` LBAs from `lba` on, as the pixel program writes them."""
    lbas = np.arange(lba, lba + count, dtype=np.uint64)
    return _words(seed, lbas, lba_size).astype("<u4").tobytes()


def checksum(data: bytes, acc: int = CSUM_INIT) -> int:
    """The block test's checksum (u32) of `data`, continuing from `acc`."""
    if len(data) % 4:
        raise ValueError(f"checksum of {len(data)} bytes: not a multiple of 4")
    c = acc
    for w in np.frombuffer(data, dtype="<u4").tolist():
        c = ((c ^ w) * CSUM_PRIME) & 0xFFFFFFFF
    return c


FILL_SALT = 0x5EED0F11  # keeps a random fill distinct from the test pattern of the same seed
SECTOR = 512


def random_fill(seed: int, offset: int, length: int) -> bytes:
    """A seeded pseudo-random disk fill: bytes [offset, offset + length) of it (both
    multiples of 512).  Sector n holds pattern(seed ^ FILL_SALT, n, 512), so any part can
    be regenerated alone -- by hil when it creates a disk, and by the disk check."""
    if offset % SECTOR or length % SECTOR:
        raise ValueError("a random fill is addressed in whole 512-byte sectors")
    return pattern(seed ^ FILL_SALT, offset // SECTOR, SECTOR, length // SECTOR)


@dataclass(frozen=True)
class Mismatch:
    lba: int
    offset: int  # byte offset inside the LBA
    expected: int
    found: int

    def __str__(self) -> str:
        return (
            f"LBA {self.lba} byte {self.offset}: expected 0x{self.expected:02x}, "
            f"found 0x{self.found:02x}"
        )


def first_mismatch(
    image: Path,
    lba_size: int,
    seed: int,
    written: list[tuple[int, int]],
    untouched=None,
    chunk_lbas: int = 2048,
) -> Mismatch | None:
    """Check a used disk image: the LBAs in `written` ([(first, count)], in any order)
    must hold the pattern; every other LBA must equal the disk as it was created:
    `untouched` is None (zeros), bytes (the original image), or a function (offset,
    length) -> bytes that regenerates it (e.g. functools.partial(random_fill, seed))."""
    size = image.stat().st_size
    if size % lba_size:
        raise ValueError(f"{image}: {size} bytes is not a whole number of {lba_size}-byte LBAs")
    mask = np.zeros(size // lba_size, dtype=bool)
    for first, count in written:
        if first < 0 or first + count > len(mask):
            raise ValueError(f"written range {first}+{count} lies outside {len(mask)} LBAs")
        mask[first : first + count] = True
    with image.open("rb") as f:
        for first in range(0, len(mask), chunk_lbas):
            n = min(chunk_lbas, len(mask) - first)
            got = np.frombuffer(f.read(n * lba_size), dtype=np.uint8).reshape(n, lba_size)
            lbas = np.arange(first, first + n, dtype=np.uint64)
            want = _words(seed, lbas, lba_size).view(np.uint8).reshape(n, lba_size).copy()
            m = mask[first : first + n]
            if untouched is None:
                want[~m] = 0
            else:
                lo, hi = first * lba_size, (first + n) * lba_size
                raw = untouched(lo, hi - lo) if callable(untouched) else untouched[lo:hi]
                orig = np.frombuffer(raw, dtype=np.uint8).reshape(n, lba_size)
                want[~m] = orig[~m]
            bad = np.argwhere(got != want)
            if len(bad):
                row, col = (int(v) for v in bad[0])
                return Mismatch(first + row, col, int(want[row, col]), int(got[row, col]))
    return None
