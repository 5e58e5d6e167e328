"""Pure-Python BLAKE3 (hash, keyed_hash and derive_key modes, extendable output).

Theory of operation
-------------------
BLAKE3 splits the input into 1024-byte *chunks* (the last one may be shorter;
an empty input is one empty chunk).  Each chunk is absorbed as up to sixteen
64-byte *blocks*: every block is run through the compression function together
with the 8-word *chaining value* (CV) left by the previous block, starting from
the key (the IV in plain hash mode).  The chunk index is mixed in as a 64-bit
counter, and flags mark the first and last block of a chunk.  What the last
block leaves behind is the chunk's CV.

Chunk CVs are the leaves of a binary tree.  A *parent* node compresses the
concatenation of its two children's CVs (one 64-byte block, flag PARENT).  The
tree is left-full, which is the same as pairing nodes level by level, left to
right, and passing an unpaired last node up unchanged.  The one node that ends
up on top (the last block of the only chunk, or the top parent) is compressed
with the ROOT flag, and its full 16-word output, with the counter reused as an
output block index, is the extendable output.

Lane-parallel big-int arithmetic
--------------------------------
Running the compression function on plain Python ints costs about 1700
interpreter operations per 64 bytes, far too slow for files.  But the chunks
are independent until the tree is built, so N of them are processed at once:
word ``k`` of the state of every chunk is packed into one big int, chunk ``i``
in bits ``40*i .. 40*i+39`` (its *lane*).  One big-int ``+``, ``^``, ``&`` or
shift then does the work for all N chunks in a single C loop, and the
interpreter overhead is paid once per N chunks.

* The 8 spare bits per lane catch the carries.  The two row-words that are
  only ever added to (``a`` and ``c`` in the G function) are never reduced
  mod 2**32 during the 7 rounds: they stay below 2**38, so carries cannot
  spill into the next lane.  Only the final CV is masked.
* Rotations clean up after them: ``rotr(x, r)`` is computed as
  ``((x >> r) & L[32-r]) | ((x & L[r]) << (32-r))``, where ``L[w]`` holds the
  low ``w`` bits set in every lane.  The masks throw away the carry bits of
  ``x`` and the bits that the right shift drags in from the neighbouring lane.
* Message words are gathered with strided byte slices (byte ``q`` of word ``w``
  of block ``j`` of every chunk is ``buf[64*j + 4*w + q :: 1024]``), spread
  into 5-byte lanes, and turned into one int with ``int.from_bytes``.
* Chunk counters differ per lane; everything else is a constant times ``ONES``
  (a 1 in every lane).
* The parent levels are reduced the same way: all parents on one level are
  independent, and their message blocks are just consecutive 64-byte pieces of
  the children's CVs, so they are gathered with a 64-byte stride.
* The root's output blocks differ only in their counter, so a long
  extendable output is produced lane-parallel as well.

With few lanes (short inputs, the final partial chunk, the top of the tree,
the root) the cost is interpreter overhead rather than arithmetic, so the
state is packed once more: one int per state *row* (v0..v3, v4..v7, ...),
which runs the four G calls of a column or diagonal step side by side and
needs about 40% of the operations.  N = 1 is just the smallest case of this.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import NamedTuple

__all__ = [
    "DERIVE_KEY_CONTEXT",
    "DERIVE_KEY_MATERIAL",
    "KEYED_HASH",
    "Hasher",
    "blake3_digest",
    "blake3_hexdigest",
    "derive_key",
    "keyed_hash",
]

OUT_LEN = 32
KEY_LEN = 32
BLOCK_LEN = 64
CHUNK_LEN = 1024

CHUNK_START = 1 << 0
CHUNK_END = 1 << 1
PARENT = 1 << 2
ROOT = 1 << 3
KEYED_HASH = 1 << 4
DERIVE_KEY_CONTEXT = 1 << 5
DERIVE_KEY_MATERIAL = 1 << 6

IV: tuple[int, ...] = (
    0x6A09E667,
    0xBB67AE85,
    0x3C6EF372,
    0xA54FF53A,
    0x510E527F,
    0x9B05688C,
    0x1F83D9AB,
    0x5BE0CD19,
)

_M32 = 0xFFFFFFFF
_LANE_BYTES = 5  # 40-bit lanes: 32 data bits plus room for carries
_BLOCK_WORDS = struct.Struct("<16I")
_KEY_WORDS = struct.Struct("<8I")

# Chunks hashed per lane-parallel pass.  Big enough that interpreter overhead
# is negligible, small enough that the working set (about 40 ints of
# 5 * _GROUP bytes plus the group's input) stays in the CPU cache.
_GROUP = 1024
# Output blocks produced per lane-parallel pass of a long extendable output.
_OUT_GROUP = 1024
# Up to this many lanes, compress with the row layout (see _compress_rows).
_ROWS_MAX_LANES = 16


class _Lanes(NamedTuple):
    """Constants for N lanes: each value is repeated in every lane."""

    n: int
    ones: int
    ramp: int  # lane i holds i; added to a base counter
    l32: int
    l25: int
    l24: int
    l20: int
    l16: int
    l12: int
    l8: int
    l7: int
    iv0: int
    iv1: int
    iv2: int
    iv3: int


@lru_cache(maxsize=64)
def _lanes(n: int) -> _Lanes:
    ones = int.from_bytes(b"\x01\x00\x00\x00\x00" * n, "little")
    ramp = int.from_bytes(b"".join(i.to_bytes(_LANE_BYTES, "little") for i in range(n)), "little")
    return _Lanes(
        n,
        ones,
        ramp,
        _M32 * ones,
        ((1 << 25) - 1) * ones,
        ((1 << 24) - 1) * ones,
        ((1 << 20) - 1) * ones,
        ((1 << 16) - 1) * ones,
        ((1 << 12) - 1) * ones,
        ((1 << 8) - 1) * ones,
        ((1 << 7) - 1) * ones,
        IV[0] * ones,
        IV[1] * ones,
        IV[2] * ones,
        IV[3] * ones,
    )


def _compress(
    cv: tuple[int, ...] | list[int],
    m: tuple[int, ...] | list[int],
    t_lo: int,
    t_hi: int,
    block_len: int,
    flags: int,
    k: _Lanes,
    full: bool = False,
) -> list[int]:
    """The BLAKE3 compression function on lane-packed ints (see module doc).

    Returns the 8 output CV words, or all 16 output words when ``full``.
    Every argument must be lane-packed for ``k.n`` lanes with clean 32-bit
    lanes; the results are clean too.
    """
    if k.n <= _ROWS_MAX_LANES:
        return _compress_rows(cv, m, t_lo, t_hi, block_len, flags, k.n, full)
    return _compress_lanes(cv, m, t_lo, t_hi, block_len, flags, k, full)


class _Rows(NamedTuple):
    """Constants for the row layout: 4 * n lanes, shift = one row position."""

    shift: int
    lane_mask: int  # n lanes of 40 bits: one state word
    row_mask: int  # 4 * n lanes: a whole row
    iv: int  # IV[0..3] as a row
    k: _Lanes


@lru_cache(maxsize=64)
def _rows(n: int) -> _Rows:
    ones = _lanes(n).ones
    shift = 8 * _LANE_BYTES * n
    iv = 0
    for i in range(4):
        iv |= IV[i] * ones << (i * shift)
    return _Rows(shift, (1 << shift) - 1, (1 << 4 * shift) - 1, iv, _lanes(4 * n))


def _message_schedule() -> tuple[tuple[int, int, int, int], ...]:
    """For each round: message words of the column step's first and second
    additions, then the diagonal step's, four words (one per G) each."""
    order = list(range(16))
    out = []
    for _ in range(7):
        out += [tuple(order[i:8:2]) for i in (0, 1)]
        out += [tuple(order[i:16:2]) for i in (8, 9)]
        order = [order[i] for i in _MSG_PERMUTATION]
    return tuple((a, b, c, d) for a, b, c, d in out)


_MSG_PERMUTATION = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
_ROW_SCHEDULE = _message_schedule()


def _compress_rows(
    cv: tuple[int, ...] | list[int],
    m: tuple[int, ...] | list[int],
    t_lo: int,
    t_hi: int,
    block_len: int,
    flags: int,
    n: int,
    full: bool,
) -> list[int]:
    """The compression function with one big int per state *row*.

    For few lanes the cost is interpreter overhead, not arithmetic, so the
    four G calls of a step are also run side by side: row ``a`` holds v0..v3
    (n lanes each, v0 lowest), and so on.  The diagonal step lines up by
    rotating rows b, c, d by one, two and three words, and back afterwards.
    That is about 40% of the big-int operations of ``_compress_lanes``.
    """
    r = _rows(n)
    s1 = r.shift
    s2 = 2 * s1
    s3 = 3 * s1
    f = r.row_mask
    k = r.k
    l16 = k.l16
    l20 = k.l20
    l12 = k.l12
    l24 = k.l24
    l8 = k.l8
    l25 = k.l25
    l7 = k.l7
    a = cv[0] | cv[1] << s1 | cv[2] << s2 | cv[3] << s3
    b = cv[4] | cv[5] << s1 | cv[6] << s2 | cv[7] << s3
    c = r.iv
    d = t_lo | t_hi << s1 | block_len << s2 | flags << s3
    ms = [m[w] | m[x] << s1 | m[y] << s2 | m[z] << s3 for w, x, y, z in _ROW_SCHEDULE]
    # As in _compress_lanes, rows a and c are left unreduced.
    for i in range(0, 28, 4):
        mx, my, dx, dy = ms[i : i + 4]
        a = a + b + mx
        x = d ^ a
        d = ((x >> 16) & l16) | ((x & l16) << 16)
        c = c + d
        x = b ^ c
        b = ((x >> 12) & l20) | ((x & l12) << 20)
        a = a + b + my
        x = d ^ a
        d = ((x >> 8) & l24) | ((x & l8) << 24)
        c = c + d
        x = b ^ c
        b = ((x >> 7) & l25) | ((x & l7) << 25)

        b = ((b >> s1) | (b << s3)) & f
        c = ((c >> s2) | (c << s2)) & f
        d = ((d >> s3) | (d << s1)) & f

        a = a + b + dx
        x = d ^ a
        d = ((x >> 16) & l16) | ((x & l16) << 16)
        c = c + d
        x = b ^ c
        b = ((x >> 12) & l20) | ((x & l12) << 20)
        a = a + b + dy
        x = d ^ a
        d = ((x >> 8) & l24) | ((x & l8) << 24)
        c = c + d
        x = b ^ c
        b = ((x >> 7) & l25) | ((x & l7) << 25)

        b = ((b >> s3) | (b << s1)) & f
        c = ((c >> s2) | (c << s2)) & f
        d = ((d >> s1) | (d << s3)) & f

    lm = r.lane_mask
    rows = [(a ^ c) & k.l32, b ^ d]
    if full:
        rows.append((c ^ cv[0] ^ cv[1] << s1 ^ cv[2] << s2 ^ cv[3] << s3) & k.l32)
        rows.append(d ^ cv[4] ^ cv[5] << s1 ^ cv[6] << s2 ^ cv[7] << s3)
    return [(row >> s) & lm for row in rows for s in (0, s1, s2, s3)]


def _compress_lanes(
    cv: tuple[int, ...] | list[int],
    m: tuple[int, ...] | list[int],
    t_lo: int,
    t_hi: int,
    block_len: int,
    flags: int,
    k: _Lanes,
    full: bool = False,
) -> list[int]:
    """The compression function with one big int per state word (many lanes)."""
    l16 = k.l16
    l20 = k.l20
    l12 = k.l12
    l24 = k.l24
    l8 = k.l8
    l25 = k.l25
    l7 = k.l7
    v0, v1, v2, v3, v4, v5, v6, v7 = cv
    v8, v9, v10, v11 = k.iv0, k.iv1, k.iv2, k.iv3
    v12, v13, v14, v15 = t_lo, t_hi, block_len, flags
    m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15 = m
    # Rows: a = v0..v3 and c = v8..v11 only ever get added to, so they are
    # left unreduced; b and d are cleaned by the masked rotations.
    for _ in range(7):
        # Columns.
        v0 = v0 + v4 + m0
        x = v12 ^ v0
        v12 = ((x >> 16) & l16) | ((x & l16) << 16)
        v8 = v8 + v12
        x = v4 ^ v8
        v4 = ((x >> 12) & l20) | ((x & l12) << 20)
        v0 = v0 + v4 + m1
        x = v12 ^ v0
        v12 = ((x >> 8) & l24) | ((x & l8) << 24)
        v8 = v8 + v12
        x = v4 ^ v8
        v4 = ((x >> 7) & l25) | ((x & l7) << 25)

        v1 = v1 + v5 + m2
        x = v13 ^ v1
        v13 = ((x >> 16) & l16) | ((x & l16) << 16)
        v9 = v9 + v13
        x = v5 ^ v9
        v5 = ((x >> 12) & l20) | ((x & l12) << 20)
        v1 = v1 + v5 + m3
        x = v13 ^ v1
        v13 = ((x >> 8) & l24) | ((x & l8) << 24)
        v9 = v9 + v13
        x = v5 ^ v9
        v5 = ((x >> 7) & l25) | ((x & l7) << 25)

        v2 = v2 + v6 + m4
        x = v14 ^ v2
        v14 = ((x >> 16) & l16) | ((x & l16) << 16)
        v10 = v10 + v14
        x = v6 ^ v10
        v6 = ((x >> 12) & l20) | ((x & l12) << 20)
        v2 = v2 + v6 + m5
        x = v14 ^ v2
        v14 = ((x >> 8) & l24) | ((x & l8) << 24)
        v10 = v10 + v14
        x = v6 ^ v10
        v6 = ((x >> 7) & l25) | ((x & l7) << 25)

        v3 = v3 + v7 + m6
        x = v15 ^ v3
        v15 = ((x >> 16) & l16) | ((x & l16) << 16)
        v11 = v11 + v15
        x = v7 ^ v11
        v7 = ((x >> 12) & l20) | ((x & l12) << 20)
        v3 = v3 + v7 + m7
        x = v15 ^ v3
        v15 = ((x >> 8) & l24) | ((x & l8) << 24)
        v11 = v11 + v15
        x = v7 ^ v11
        v7 = ((x >> 7) & l25) | ((x & l7) << 25)

        # Diagonals.
        v0 = v0 + v5 + m8
        x = v15 ^ v0
        v15 = ((x >> 16) & l16) | ((x & l16) << 16)
        v10 = v10 + v15
        x = v5 ^ v10
        v5 = ((x >> 12) & l20) | ((x & l12) << 20)
        v0 = v0 + v5 + m9
        x = v15 ^ v0
        v15 = ((x >> 8) & l24) | ((x & l8) << 24)
        v10 = v10 + v15
        x = v5 ^ v10
        v5 = ((x >> 7) & l25) | ((x & l7) << 25)

        v1 = v1 + v6 + m10
        x = v12 ^ v1
        v12 = ((x >> 16) & l16) | ((x & l16) << 16)
        v11 = v11 + v12
        x = v6 ^ v11
        v6 = ((x >> 12) & l20) | ((x & l12) << 20)
        v1 = v1 + v6 + m11
        x = v12 ^ v1
        v12 = ((x >> 8) & l24) | ((x & l8) << 24)
        v11 = v11 + v12
        x = v6 ^ v11
        v6 = ((x >> 7) & l25) | ((x & l7) << 25)

        v2 = v2 + v7 + m12
        x = v13 ^ v2
        v13 = ((x >> 16) & l16) | ((x & l16) << 16)
        v8 = v8 + v13
        x = v7 ^ v8
        v7 = ((x >> 12) & l20) | ((x & l12) << 20)
        v2 = v2 + v7 + m13
        x = v13 ^ v2
        v13 = ((x >> 8) & l24) | ((x & l8) << 24)
        v8 = v8 + v13
        x = v7 ^ v8
        v7 = ((x >> 7) & l25) | ((x & l7) << 25)

        v3 = v3 + v4 + m14
        x = v14 ^ v3
        v14 = ((x >> 16) & l16) | ((x & l16) << 16)
        v9 = v9 + v14
        x = v4 ^ v9
        v4 = ((x >> 12) & l20) | ((x & l12) << 20)
        v3 = v3 + v4 + m15
        x = v14 ^ v3
        v14 = ((x >> 8) & l24) | ((x & l8) << 24)
        v9 = v9 + v14
        x = v4 ^ v9
        v4 = ((x >> 7) & l25) | ((x & l7) << 25)

        # The fixed message schedule permutation (one extra after the last
        # round is cheaper than a branch).
        m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15 = (
            m2,
            m6,
            m3,
            m10,
            m7,
            m0,
            m4,
            m13,
            m1,
            m11,
            m12,
            m5,
            m9,
            m14,
            m15,
            m8,
        )

    l32 = k.l32
    # v0..v3 and v8..v11 still carry their unreduced carries: mask them here.
    out = [
        (v0 ^ v8) & l32,
        (v1 ^ v9) & l32,
        (v2 ^ v10) & l32,
        (v3 ^ v11) & l32,
        v4 ^ v12,
        v5 ^ v13,
        v6 ^ v14,
        v7 ^ v15,
    ]
    if full:
        out += [
            (v8 ^ cv[0]) & l32,
            (v9 ^ cv[1]) & l32,
            (v10 ^ cv[2]) & l32,
            (v11 ^ cv[3]) & l32,
            v12 ^ cv[4],
            v13 ^ cv[5],
            v14 ^ cv[6],
            v15 ^ cv[7],
        ]
    return out


def _counters(first: int, k: _Lanes) -> tuple[int, int]:
    """Lane-packed low and high counter words for counters first .. first+n-1."""
    if (first + k.n - 1) >> 32 == 0:
        # Common case: no lane needs the high word, and adding the ramp to a
        # broadcast base cannot carry between lanes.
        return first * k.ones + k.ramp, 0
    counters = range(first, first + k.n)
    lo = b"".join((c & _M32).to_bytes(_LANE_BYTES, "little") for c in counters)
    hi = b"".join(((c >> 32) & _M32).to_bytes(_LANE_BYTES, "little") for c in counters)
    return int.from_bytes(lo, "little"), int.from_bytes(hi, "little")


def _gather(
    buf: bytes | bytearray | memoryview, start: int, n: int, stride: int, block: int, tmp: bytearray
) -> list[int]:
    """Lane-pack the 16 message words of block ``block`` of n records.

    Record i starts at ``start + i * stride``.  ``tmp`` is a zeroed
    scratch buffer of 5 * n bytes whose every fifth byte stays zero; that
    byte is the lane's carry room.
    """
    end = start + n * stride
    off = start + BLOCK_LEN * block
    words = []
    for w in range(off, off + BLOCK_LEN, 4):
        # Strided slices copy one byte of the word from every record.
        tmp[0::5] = buf[w:end:stride]
        tmp[1::5] = buf[w + 1 : end : stride]
        tmp[2::5] = buf[w + 2 : end : stride]
        tmp[3::5] = buf[w + 3 : end : stride]
        words.append(int.from_bytes(tmp, "little"))
    return words


def _scatter(words: list[int], n: int) -> bytes:
    """Inverse of the gather: n records of ``len(words)`` little-endian words."""
    if n == 1:
        return struct.pack(f"<{len(words)}I", *words)
    record = 4 * len(words)
    out = bytearray(record * n)
    for i, x in enumerate(words):
        lanes = x.to_bytes(_LANE_BYTES * n, "little")
        for q in range(4):
            out[4 * i + q :: record] = lanes[q::5]
    return bytes(out)


def _chunk_cvs(
    buf: bytes | bytearray | memoryview,
    start: int,
    n: int,
    counter: int,
    key: tuple[int, ...],
    flags: int,
) -> bytes:
    """CVs (32 bytes each, concatenated) of n full chunks hashed lane-parallel."""
    k = _lanes(n)
    ones = k.ones
    cv: list[int] = [w * ones for w in key]
    t_lo, t_hi = _counters(counter, k)
    block_len = BLOCK_LEN * ones
    tmp = bytearray(_LANE_BYTES * n)
    last = CHUNK_LEN // BLOCK_LEN - 1
    for j in range(last + 1):
        m = _gather(buf, start, n, CHUNK_LEN, j, tmp)
        f = flags | (CHUNK_START if j == 0 else 0) | (CHUNK_END if j == last else 0)
        cv = _compress(cv, m, t_lo, t_hi, block_len, f * ones, k)
    return _scatter(cv, n)


def _parent_cvs(nodes: bytes | bytearray, p: int, key: tuple[int, ...], flags: int) -> bytes:
    """CVs of the p parents of the first 2 * p nodes (32-byte CVs) of a level."""
    k = _lanes(p)
    ones = k.ones
    m = _gather(nodes, 0, p, BLOCK_LEN, 0, bytearray(_LANE_BYTES * p))
    cv = _compress([w * ones for w in key], m, 0, 0, BLOCK_LEN * ones, (flags | PARENT) * ones, k)
    return _scatter(cv, p)


class _Output(NamedTuple):
    """A node's compression inputs, kept so the root can be squeezed later."""

    cv: tuple[int, ...]
    block: tuple[int, ...]
    counter: int
    block_len: int
    flags: int

    def chaining_value(self) -> bytes:
        c = self.counter
        words = _compress(
            self.cv, self.block, c & _M32, c >> 32, self.block_len, self.flags, _lanes(1)
        )
        return _scatter(words, 1)

    def root_bytes(self, length: int) -> bytes:
        if length < 0:
            raise ValueError("output length must be non-negative")
        nblocks = -(-length // BLOCK_LEN)
        flags = self.flags | ROOT
        parts = []
        for first in range(0, nblocks, _OUT_GROUP):
            # All output blocks share their inputs except the counter.
            k = _lanes(min(_OUT_GROUP, nblocks - first))
            ones = k.ones
            t_lo, t_hi = _counters(first, k)
            cv = [w * ones for w in self.cv]
            m = [w * ones for w in self.block]
            words = _compress(cv, m, t_lo, t_hi, self.block_len * ones, flags * ones, k, True)
            parts.append(_scatter(words, k.n))
        return b"".join(parts)[:length]


def _chunk_output(
    data: bytes | bytearray, counter: int, key: tuple[int, ...], flags: int
) -> _Output:
    """Hash one (possibly short or empty) chunk up to, not including, its last block."""
    k = _lanes(1)
    nblocks = max(1, -(-len(data) // BLOCK_LEN))
    t_lo, t_hi = counter & _M32, counter >> 32
    cv: tuple[int, ...] | list[int] = key
    start = CHUNK_START
    for b in range(nblocks - 1):
        m = _BLOCK_WORDS.unpack_from(data, b * BLOCK_LEN)
        cv = _compress(cv, m, t_lo, t_hi, BLOCK_LEN, flags | start, k)
        start = 0
    tail = bytes(data[(nblocks - 1) * BLOCK_LEN :])
    block = _BLOCK_WORDS.unpack(tail.ljust(BLOCK_LEN, b"\0"))
    return _Output(tuple(cv), block, counter, len(tail), flags | start | CHUNK_END)


class Hasher:
    """Incremental BLAKE3 hasher (``update`` / ``digest``, like hashlib).

    Input is buffered until a whole group of chunks is available, which is
    then hashed lane-parallel.  The last chunk is always held back, because
    only ``digest`` knows whether it is the root.
    """

    __slots__ = ("_buf", "_chunks", "_flags", "_key", "_levels")

    def __init__(self, key: bytes | None = None, *, _flags: int = 0) -> None:
        if key is None:
            self._key: tuple[int, ...] = IV
            self._flags = _flags
        else:
            if len(key) != KEY_LEN:
                raise ValueError(f"key must be {KEY_LEN} bytes, got {len(key)}")
            self._key = _KEY_WORDS.unpack(key)
            self._flags = _flags or KEYED_HASH
        self._buf = bytearray()
        self._chunks = 0  # index of the first chunk still in _buf
        # _levels[h]: CVs of finished nodes at height h not yet paired up,
        # 32 bytes each, in input order.
        self._levels: list[bytearray] = []

    def update(self, data: bytes | bytearray | memoryview) -> Hasher:
        if isinstance(data, memoryview) and data.format != "B":
            data = data.cast("B")
        buf = self._buf
        # With nothing buffered, hash straight out of the caller's buffer
        # rather than copying a possibly large input first.
        src: bytes | bytearray | memoryview = data
        if buf:
            buf += data
            src = buf
        ready = (len(src) - 1) // CHUNK_LEN  # keep the last chunk back
        group_bytes = _GROUP * CHUNK_LEN
        done = max(0, ready) // _GROUP * group_bytes
        for start in range(0, done, group_bytes):
            cvs = _chunk_cvs(src, start, _GROUP, self._chunks, self._key, self._flags)
            self._chunks += _GROUP
            self._push(cvs)
        if src is buf:
            del buf[:done]
        else:
            buf += src[done:]
        return self

    def _push(self, cvs: bytes) -> None:
        """Add chunk CVs and pair up nodes on levels that have many waiting.

        Safe before the end of input: a later chunk always exists, so no
        parent built here can be the root.
        """
        levels = self._levels
        h = 0
        while True:
            if h == len(levels):
                levels.append(bytearray())
            level = levels[h]
            level += cvs
            pairs = len(level) // 64
            if pairs < _GROUP:
                return
            cvs = _parent_cvs(level, pairs, self._key, self._flags)
            del level[: pairs * 64]
            h += 1

    def _root(self) -> _Output:
        key, flags = self._key, self._flags
        buf = self._buf
        if self._chunks == 0 and len(buf) <= CHUNK_LEN:
            return _chunk_output(buf, 0, key, flags)
        levels = [bytearray(level) for level in self._levels]
        if not levels:
            levels.append(bytearray())
        full = len(buf) // CHUNK_LEN
        if full:
            levels[0] += _chunk_cvs(buf, 0, full, self._chunks, key, flags)
        if len(buf) % CHUNK_LEN:
            tail = buf[full * CHUNK_LEN :]
            levels[0] += _chunk_output(tail, self._chunks + full, key, flags).chaining_value()
        # Reduce level by level; an unpaired last node moves up unchanged.
        h = 0
        while True:
            level = levels[h]
            top = all(not higher for higher in levels[h + 1 :])
            if top and len(level) == 64:
                return _Output(key, _BLOCK_WORDS.unpack(level), 0, BLOCK_LEN, flags | PARENT)
            if top and len(level) < 64:
                raise AssertionError("BLAKE3 tree reduced to a single non-root node")
            pairs = len(level) // 64
            if h + 1 == len(levels):
                levels.append(bytearray())
            levels[h + 1] += _parent_cvs(level, pairs, key, flags)
            levels[h + 1] += level[pairs * 64 :]
            h += 1

    def digest(self, length: int = OUT_LEN) -> bytes:
        """Output ``length`` bytes; does not change the hasher's state."""
        return self._root().root_bytes(length)

    def hexdigest(self, length: int = OUT_LEN) -> str:
        return self.digest(length).hex()


def blake3_digest(data: bytes | bytearray | memoryview, length: int = OUT_LEN) -> bytes:
    """BLAKE3 hash of ``data``, ``length`` bytes long (default 32)."""
    return Hasher().update(data).digest(length)


def blake3_hexdigest(data: bytes | bytearray | memoryview, length: int = OUT_LEN) -> str:
    return blake3_digest(data, length).hex()


def keyed_hash(key: bytes, data: bytes | bytearray | memoryview, length: int = OUT_LEN) -> bytes:
    """BLAKE3 keyed_hash mode (a MAC) with a 32-byte key."""
    return Hasher(key).update(data).digest(length)


def derive_key(
    context: str, material: bytes | bytearray | memoryview, length: int = OUT_LEN
) -> bytes:
    """BLAKE3 derive_key mode: a subkey for ``material`` in a hard-coded ``context``."""
    context_key = Hasher(_flags=DERIVE_KEY_CONTEXT).update(context.encode("utf-8")).digest(KEY_LEN)
    return Hasher(context_key, _flags=DERIVE_KEY_MATERIAL).update(material).digest(length)
