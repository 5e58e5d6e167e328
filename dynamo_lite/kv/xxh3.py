"""XXH3-64 (xxHash 0.8) with a seed, in pure Python, plus the block hash the router uses.

The stock KV publisher sends, for every stored block, ``tokens_hash`` =
XXH3-64 over the block's token ids as little-endian u32, seed 1337 (verified
against captured traffic: ``tests/vectors/kv/README.md``). The router hashes a
request's prompt the same way, so a worker's announced blocks match only if
this function is bit-exact.

The ``xxhash`` package is used when importable (a speed-up only); set
``DYN_LITE_PURE_XXH3=1`` to force the pure-Python code. Both give the same
value (``tests/unit/test_kv_codec.py`` compares them on random inputs).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

__all__ = [
    "BLOCK_HASH_SEED",
    "block_hash_seed",
    "block_tokens_hash",
    "implementation",
    "xxh3_64",
    "xxh3_64_pure",
]

BLOCK_HASH_SEED = 1337
PURE_ENV = "DYN_LITE_PURE_XXH3"

_M = (1 << 64) - 1
_P32_1 = 0x9E3779B1
_P32_2 = 0x85EBCA77
_P32_3 = 0xC2B2AE3D
_P64_1 = 0x9E3779B185EBCA87
_P64_2 = 0xC2B2AE3D27D4EB4F
_P64_3 = 0x165667B19E3779F9
_P64_4 = 0x85EBCA77C2B2AE63
_P64_5 = 0x27D4EB2F165667C5
_MX1 = 0x165667919E3779F9
_MX2 = 0x9FB21C651E98DF25

_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)
_SECRET_LEN = len(_SECRET)  # 192
_STRIPE = 64
_STRIPES_PER_BLOCK = (_SECRET_LEN - _STRIPE) // 8
_BLOCK = _STRIPE * _STRIPES_PER_BLOCK

_u32 = struct.Struct("<I").unpack_from
_u64 = struct.Struct("<Q").unpack_from
_8u64 = struct.Struct("<8Q").unpack_from


def _r32(b: bytes, off: int) -> int:
    return int(_u32(b, off)[0])


def _r64(b: bytes, off: int) -> int:
    return int(_u64(b, off)[0])


def _fold(a: int, b: int) -> int:
    p = a * b
    return (p & _M) ^ (p >> 64)


def _avalanche(h: int) -> int:
    h ^= h >> 37
    h = (h * _MX1) & _M
    return h ^ (h >> 32)


def _xxh64_avalanche(h: int) -> int:
    h ^= h >> 33
    h = (h * _P64_2) & _M
    h ^= h >> 29
    h = (h * _P64_3) & _M
    return h ^ (h >> 32)


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _mix16(data: bytes, off: int, sec: bytes, soff: int, seed: int) -> int:
    lo = _r64(data, off)
    hi = _r64(data, off + 8)
    return _fold(lo ^ ((_r64(sec, soff) + seed) & _M), hi ^ ((_r64(sec, soff + 8) - seed) & _M))


def _len_1to3(data: bytes, n: int, seed: int) -> int:
    combined = (data[0] << 16) | (data[n >> 1] << 24) | data[n - 1] | (n << 8)
    bitflip = ((_r32(_SECRET, 0) ^ _r32(_SECRET, 4)) + seed) & _M
    return _xxh64_avalanche(combined ^ bitflip)


def _len_4to8(data: bytes, n: int, seed: int) -> int:
    low = seed & 0xFFFFFFFF
    swapped = int.from_bytes(low.to_bytes(4, "little"), "big")
    seed ^= swapped << 32
    in1 = _r32(data, 0)
    in2 = _r32(data, n - 4)
    bitflip = ((_r64(_SECRET, 8) ^ _r64(_SECRET, 16)) - seed) & _M
    h = (in2 + (in1 << 32)) ^ bitflip
    h ^= _rotl(h, 49) ^ _rotl(h, 24)
    h = (h * _MX2) & _M
    h ^= (h >> 35) + n
    h = (h * _MX2) & _M
    return h ^ (h >> 28)


def _len_9to16(data: bytes, n: int, seed: int) -> int:
    bitflip1 = ((_r64(_SECRET, 24) ^ _r64(_SECRET, 32)) + seed) & _M
    bitflip2 = ((_r64(_SECRET, 40) ^ _r64(_SECRET, 48)) - seed) & _M
    lo = _r64(data, 0) ^ bitflip1
    hi = _r64(data, n - 8) ^ bitflip2
    swapped = int.from_bytes(lo.to_bytes(8, "little"), "big")
    return _avalanche((n + swapped + hi + _fold(lo, hi)) & _M)


def _len_17to128(data: bytes, n: int, seed: int) -> int:
    acc = n * _P64_1
    if n > 32:
        if n > 64:
            if n > 96:
                acc += _mix16(data, 48, _SECRET, 96, seed)
                acc += _mix16(data, n - 64, _SECRET, 112, seed)
            acc += _mix16(data, 32, _SECRET, 64, seed)
            acc += _mix16(data, n - 48, _SECRET, 80, seed)
        acc += _mix16(data, 16, _SECRET, 32, seed)
        acc += _mix16(data, n - 32, _SECRET, 48, seed)
    acc += _mix16(data, 0, _SECRET, 0, seed)
    acc += _mix16(data, n - 16, _SECRET, 16, seed)
    return _avalanche(acc & _M)


def _len_129to240(data: bytes, n: int, seed: int) -> int:
    acc = n * _P64_1
    for i in range(8):
        acc += _mix16(data, 16 * i, _SECRET, 16 * i, seed)
    acc = _avalanche(acc & _M)
    for i in range(8, n // 16):
        acc += _mix16(data, 16 * i, _SECRET, 16 * (i - 8) + 3, seed)
    acc += _mix16(data, n - 16, _SECRET, 136 - 17, seed)
    return _avalanche(acc & _M)


def _accumulate_512(acc: list[int], data: bytes, off: int, sec: bytes, soff: int) -> None:
    vals = _8u64(data, off)
    keys = _8u64(sec, soff)
    for i in range(8):
        v = vals[i]
        k = v ^ keys[i]
        acc[i ^ 1] = (acc[i ^ 1] + v) & _M
        acc[i] = (acc[i] + (k & 0xFFFFFFFF) * (k >> 32)) & _M


def _scramble(acc: list[int], sec: bytes, soff: int) -> None:
    keys = _8u64(sec, soff)
    for i in range(8):
        a = acc[i]
        a ^= a >> 47
        a ^= keys[i]
        acc[i] = (a * _P32_1) & _M


def _long(data: bytes, n: int, seed: int) -> int:
    if seed == 0:
        sec = _SECRET
    else:
        words = struct.unpack(f"<{_SECRET_LEN // 8}Q", _SECRET)
        sec = struct.pack(
            f"<{len(words)}Q",
            *(((w + seed) if i % 2 == 0 else (w - seed)) & _M for i, w in enumerate(words)),
        )
    acc = [_P32_3, _P64_1, _P64_2, _P64_3, _P64_4, _P32_2, _P64_5, _P32_1]
    nb_blocks = (n - 1) // _BLOCK
    for b in range(nb_blocks):
        base = b * _BLOCK
        for s in range(_STRIPES_PER_BLOCK):
            _accumulate_512(acc, data, base + s * _STRIPE, sec, s * 8)
        _scramble(acc, sec, _SECRET_LEN - _STRIPE)
    base = nb_blocks * _BLOCK
    for s in range(((n - 1) - base) // _STRIPE):
        _accumulate_512(acc, data, base + s * _STRIPE, sec, s * 8)
    _accumulate_512(acc, data, n - _STRIPE, sec, _SECRET_LEN - _STRIPE - 7)
    result = n * _P64_1
    for i in range(4):
        result += _fold(
            acc[2 * i] ^ _r64(sec, 11 + 16 * i), acc[2 * i + 1] ^ _r64(sec, 19 + 16 * i)
        )
    return _avalanche(result & _M)


def xxh3_64_pure(data: bytes, seed: int = 0) -> int:
    """XXH3-64 of ``data`` as an unsigned 64-bit integer."""
    seed &= _M
    n = len(data)
    if n <= 16:
        if n > 8:
            return _len_9to16(data, n, seed)
        if n >= 4:
            return _len_4to8(data, n, seed)
        if n:
            return _len_1to3(data, n, seed)
        return _xxh64_avalanche(seed ^ _r64(_SECRET, 56) ^ _r64(_SECRET, 64))
    if n <= 128:
        return _len_17to128(data, n, seed)
    if n <= 240:
        return _len_129to240(data, n, seed)
    return _long(data, n, seed)


def _pick() -> tuple[Callable[[bytes, int], int], str]:
    from ..config import process_switches

    if not process_switches().pure_xxh3:
        try:
            import xxhash
        except ImportError:
            pass
        else:
            native = xxhash.xxh3_64_intdigest

            def fast(data: bytes, seed: int = 0) -> int:
                return int(native(data, seed=seed))

            return fast, "xxhash"
    return xxh3_64_pure, "pure"


_impl: tuple[Callable[[bytes, int], int], str] | None = None


def _chosen() -> tuple[Callable[[bytes, int], int], str]:
    # Chosen on first use, so importing this module loads no compiled code.
    global _impl
    if _impl is None:
        _impl = _pick()
    return _impl


def xxh3_64(data: bytes, seed: int = 0) -> int:
    """XXH3-64 of ``data``: the compiled package when available, else pure Python."""
    return _chosen()[0](data, seed)


def implementation() -> str:
    """``"xxhash"`` (compiled package) or ``"pure"``."""
    return _chosen()[1]


def block_hash_seed(lora_name: str | None = None, cache_salt: str | None = None) -> int:
    """The seed of a block's ``tokens_hash``: 1337, plus XXH3-64(seed 0) of the LoRA
    name and XXH3-64(seed 1) of the cache salt when given (empty means none),
    wrapping at 64 bits. Verified for each alone against the stock publisher."""
    seed = BLOCK_HASH_SEED
    if lora_name:
        seed += xxh3_64(lora_name.encode(), 0)
    if cache_salt:
        seed += xxh3_64(cache_salt.encode(), 1)
    return seed & _M


def block_tokens_hash(tokens: Sequence[int], seed: int = BLOCK_HASH_SEED) -> int:
    """The router's ``tokens_hash`` of one block: XXH3-64 over u32 LE tokens."""
    return xxh3_64(struct.pack(f"<{len(tokens)}I", *tokens), seed)
