"""Pure-Python BLAKE3 against the official vectors and the ``blake3`` package,
plus the file-checksum front-end and its caches."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamo_lite import _pyblake3, checksum
from tests.support.extras import require_module

VECTORS = json.loads(
    (Path(__file__).parents[1] / "vectors" / "blake3_test_vectors.json").read_text("utf-8")
)
KEY = VECTORS["key"].encode("ascii")
CONTEXT = VECTORS["context_string"]
EMPTY_HASH = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def vector_input(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def deterministic(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Every test gets its own checksum cache dir and an empty memory cache."""
    cache_home = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    monkeypatch.delenv(checksum.CACHE_ENV, raising=False)
    monkeypatch.delenv(checksum.PURE_ENV, raising=False)
    checksum.clear_cache()
    yield cache_home
    checksum.clear_cache()


# --- official vectors -------------------------------------------------------------------


def test_vector_file_shape() -> None:
    assert len(KEY) == 32
    lengths = [case["input_len"] for case in VECTORS["cases"]]
    assert {0, 1, 1023, 1024, 1025, 102400} <= set(lengths)


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: str(c["input_len"]))
def test_official_vectors(case: dict[str, Any]) -> None:
    data = vector_input(case["input_len"])
    for mode, compute in (
        ("hash", lambda n: _pyblake3.blake3_digest(data, n)),
        ("keyed_hash", lambda n: _pyblake3.keyed_hash(KEY, data, n)),
        ("derive_key", lambda n: _pyblake3.derive_key(CONTEXT, data, n)),
    ):
        expected = bytes.fromhex(case[mode])
        assert compute(len(expected)) == expected, mode
        # The default length is a prefix of the extended output.
        assert compute(32) == expected[:32], mode
    assert _pyblake3.blake3_hexdigest(data) == case["hash"][:64]


def test_streaming_matches_one_shot_on_vectors() -> None:
    rng = random.Random(7)
    for case in VECTORS["cases"]:
        data = vector_input(case["input_len"])
        hasher = _pyblake3.Hasher()
        pos = 0
        while pos < len(data):
            step = rng.choice((1, 63, 64, 65, 1000, 1024, 4096))
            hasher.update(data[pos : pos + step])
            pos += step
        assert hasher.hexdigest(len(case["hash"]) // 2) == case["hash"]
        # digest() leaves the state alone, so asking twice gives the same answer.
        assert hasher.hexdigest() == case["hash"][:64]


def test_api_edges() -> None:
    assert _pyblake3.blake3_hexdigest(b"") == EMPTY_HASH
    assert _pyblake3.blake3_digest(b"", 0) == b""
    assert _pyblake3.blake3_digest(bytearray(b"abc")) == _pyblake3.blake3_digest(b"abc")
    data = deterministic(3000, 1)
    assert _pyblake3.blake3_digest(memoryview(data)) == _pyblake3.blake3_digest(data)
    # A memoryview with a wider item type is hashed as its raw bytes.
    words = memoryview(data[:2000]).cast("I")
    assert _pyblake3.blake3_digest(words) == _pyblake3.blake3_digest(data[:2000])
    # Output of any length, its prefixes consistent.
    long = _pyblake3.blake3_digest(data, 5000)
    assert len(long) == 5000
    assert _pyblake3.blake3_digest(data, 65) == long[:65]
    with pytest.raises(ValueError):
        _pyblake3.blake3_digest(b"", -1)
    with pytest.raises(ValueError):
        _pyblake3.keyed_hash(b"short key", b"")


@pytest.mark.parametrize("n", [3, 40])  # row layout and one-int-per-word layout
def test_chunk_counters_above_32_bits(n: int) -> None:
    # Inputs over 4 TiB are out of reach, so compare the lane-parallel chunk
    # path with the one-chunk-at-a-time path directly, across the 2**32 boundary.
    data = deterministic(n * 1024, n)
    first = 2**32 - n // 2
    lanes = _pyblake3._chunk_cvs(data, 0, n, first, _pyblake3.IV, 0)
    one_by_one = b"".join(
        _pyblake3._chunk_output(
            data[i * 1024 : (i + 1) * 1024], first + i, _pyblake3.IV, 0
        ).chaining_value()
        for i in range(n)
    )
    assert lanes == one_by_one


# --- against the blake3 package ---------------------------------------------------------


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=st.one_of(
        st.binary(max_size=3 * 1024),
        st.integers(0, 20 * 1024).map(lambda n: deterministic(n, n)),
    ),
    length=st.sampled_from([32, 1, 64, 65, 200]),
    key=st.binary(min_size=32, max_size=32),
)
def test_matches_blake3_package(data: bytes, length: int, key: bytes) -> None:
    blake3 = require_module("blake3")
    assert _pyblake3.blake3_digest(data, length) == blake3.blake3(data).digest(length)
    assert _pyblake3.keyed_hash(key, data, length) == blake3.blake3(data, key=key).digest(length)
    assert (
        _pyblake3.derive_key("ctx", data) == blake3.blake3(data, derive_key_context="ctx").digest()
    )


MIB = 1 << 20


@pytest.mark.parametrize(
    "n",
    [
        MIB - 1,  # just below one lane-parallel group of chunks
        MIB + 1,
        2 * MIB + 1024,  # two groups plus a full last chunk
        3 * MIB + 7,  # parent levels merged while streaming
    ],
)
def test_multi_megabyte_matches_blake3_package(n: int) -> None:
    blake3 = require_module("blake3")
    data = deterministic(n, n)
    expected = blake3.blake3(data).digest(length=96)
    assert _pyblake3.blake3_digest(data, 96) == expected
    hasher = _pyblake3.Hasher()
    view = memoryview(data)
    for start in range(0, n, 300_001):
        hasher.update(view[start : start + 300_001])
    assert hasher.digest(96) == expected


# --- checksum front-end -----------------------------------------------------------------


def write(path: Path, data: bytes, age_s: float = 100.0) -> Path:
    """Write a file with an mtime in the past (fresh files are not cached)."""
    path.write_bytes(data)
    stamp = time.time_ns() - int(age_s * 1e9)
    os.utime(path, ns=(stamp, stamp))
    return path


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every time file_checksum really reads and hashes a file."""
    calls: list[str] = []
    real: Callable[[str], tuple[str, int]] = checksum._hash_file

    def counting(path: str) -> tuple[str, int]:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(checksum, "_hash_file", counting)
    return calls


def test_blake3_hex() -> None:
    assert checksum.blake3_hex(b"") == EMPTY_HASH
    data = vector_input(1025)
    assert checksum.blake3_hex(data) == VECTORS["cases"][4]["hash"][:64]


def test_file_checksum_format_and_size(tmp_path: Path) -> None:
    data = deterministic(5000, 3)
    value, size = checksum.file_checksum(write(tmp_path / "f.bin", data))
    assert size == 5000
    assert value == "blake3:" + _pyblake3.blake3_hexdigest(data)
    assert len(value) == len("blake3:") + 64
    assert value == value.lower()
    empty, zero = checksum.file_checksum(write(tmp_path / "empty", b""))
    assert (empty, zero) == ("blake3:" + EMPTY_HASH, 0)


def test_memory_cache_hit_does_not_rehash(tmp_path: Path, hash_calls: list[str]) -> None:
    path = write(tmp_path / "f.bin", b"x" * 2048)
    first = checksum.file_checksum(path)
    assert checksum.file_checksum(path) == first
    assert checksum.file_checksum(str(path)) == first
    assert len(hash_calls) == 1


def test_symlink_shares_the_cache_entry(tmp_path: Path, hash_calls: list[str]) -> None:
    path = write(tmp_path / "f.bin", b"y" * 100)
    link = tmp_path / "link.bin"
    link.symlink_to(path)
    assert checksum.file_checksum(link) == checksum.file_checksum(path)
    assert len(hash_calls) == 1


def test_disk_cache_survives_process_cache(
    tmp_path: Path, _isolated: Path, hash_calls: list[str]
) -> None:
    path = write(tmp_path / "f.bin", b"z" * 3000)
    first = checksum.file_checksum(path)
    cache_file = _isolated / "dynamo_lite" / "checksums.json"
    stored = json.loads(cache_file.read_text("utf-8"))
    assert first[0] in stored["entries"].values()
    checksum.clear_cache()  # as if a new process started
    assert checksum.file_checksum(path) == first
    assert len(hash_calls) == 1
    assert not [p for p in cache_file.parent.iterdir() if p.name != "checksums.json"]


def test_same_size_rewrite_with_new_mtime_is_rehashed(
    tmp_path: Path, hash_calls: list[str]
) -> None:
    path = write(tmp_path / "f.bin", b"a" * 4096, age_s=200)
    old = checksum.file_checksum(path)
    write(path, b"b" * 4096, age_s=100)  # same inode, same size, new mtime
    new = checksum.file_checksum(path)
    assert new != old
    assert new == ("blake3:" + _pyblake3.blake3_hexdigest(b"b" * 4096), 4096)
    assert len(hash_calls) == 2
    # ... also when only the disk cache is left.
    checksum.clear_cache()
    assert checksum.file_checksum(path) == new
    assert len(hash_calls) == 2


def test_replaced_file_with_same_size_and_mtime_is_rehashed(
    tmp_path: Path, hash_calls: list[str]
) -> None:
    path = write(tmp_path / "f.bin", b"a" * 4096)
    old = checksum.file_checksum(path)
    st = path.stat()
    replacement = write(tmp_path / "tmp.bin", b"c" * 4096)
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, path)  # new inode, identical size and mtime
    assert path.stat().st_mtime_ns == st.st_mtime_ns
    new = checksum.file_checksum(path)
    assert new != old
    assert new[0] == "blake3:" + _pyblake3.blake3_hexdigest(b"c" * 4096)
    assert len(hash_calls) == 2


def test_freshly_written_file_is_not_cached(tmp_path: Path, hash_calls: list[str]) -> None:
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"new")
    assert checksum.file_checksum(path) == checksum.file_checksum(path)
    assert len(hash_calls) == 2


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff not json",
        b'{"version": 1, "entries": ',
        b"[1, 2, 3]",
        b'{"version": 1, "entries": {"k": 5}}',
        b'{"version": 1, "entries": []}',
        b'{"version": 99, "entries": {}}',
    ],
)
def test_corrupt_disk_cache_is_ignored(tmp_path: Path, _isolated: Path, content: bytes) -> None:
    cache_file = _isolated / "dynamo_lite" / "checksums.json"
    cache_file.parent.mkdir(parents=True)
    cache_file.write_bytes(content)
    data = b"q" * 1500
    path = write(tmp_path / "f.bin", data)
    assert checksum.file_checksum(path) == ("blake3:" + _pyblake3.blake3_hexdigest(data), 1500)
    # The cache was rewritten in a good state.
    assert json.loads(cache_file.read_text("utf-8"))["version"] == 1


def test_bad_entry_in_disk_cache_is_not_trusted(
    tmp_path: Path, _isolated: Path, hash_calls: list[str]
) -> None:
    path = write(tmp_path / "f.bin", b"r" * 10)
    good = checksum.file_checksum(path)
    cache_file = _isolated / "dynamo_lite" / "checksums.json"
    stored = json.loads(cache_file.read_text("utf-8"))
    stored["entries"] = {k: "blake3:nothex" for k in stored["entries"]}
    cache_file.write_text(json.dumps(stored), "utf-8")
    checksum.clear_cache()
    assert checksum.file_checksum(path) == good
    assert len(hash_calls) == 2


def test_unwritable_disk_cache_is_tolerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hash_calls: list[str]
) -> None:
    not_a_dir = tmp_path / "not-a-dir"
    not_a_dir.write_bytes(b"")
    monkeypatch.setenv("XDG_CACHE_HOME", str(not_a_dir))
    path = write(tmp_path / "f.bin", b"s" * 10)
    first = checksum.file_checksum(path)
    assert checksum.file_checksum(path) == first  # the memory cache still works
    assert len(hash_calls) == 1


def test_disk_cache_can_be_disabled(
    tmp_path: Path, _isolated: Path, monkeypatch: pytest.MonkeyPatch, hash_calls: list[str]
) -> None:
    monkeypatch.setenv(checksum.CACHE_ENV, "0")
    path = write(tmp_path / "f.bin", b"t" * 10)
    first = checksum.file_checksum(path)
    assert not _isolated.exists()
    checksum.clear_cache()
    assert checksum.file_checksum(path) == first
    assert len(hash_calls) == 2


def test_pure_env_forces_pure_implementation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[object] = []

    class Spy(_pyblake3.Hasher):
        __slots__ = ()

        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(_pyblake3, "Hasher", Spy)
    monkeypatch.setenv(checksum.PURE_ENV, "1")
    assert checksum.implementation() == "pure-python"
    assert checksum.blake3_hex(b"") == EMPTY_HASH
    data = deterministic(2 * MIB + 5, 11)
    value, size = checksum.file_checksum(write(tmp_path / "big.bin", data))
    assert len(made) == 2
    assert size == len(data)
    assert value == "blake3:" + _pyblake3.blake3_hexdigest(data)


def test_native_package_is_used_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    require_module("blake3")
    monkeypatch.setattr(_pyblake3, "Hasher", None)  # would fail if used
    assert checksum.implementation() == "blake3"
    assert checksum.blake3_hex(vector_input(1025)) == VECTORS["cases"][4]["hash"][:64]
    monkeypatch.setenv(checksum.PURE_ENV, "0")
    assert checksum.implementation() == "blake3"


def test_falls_back_without_native_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checksum, "_native_tried", True)
    monkeypatch.setattr(checksum, "_native_module", None)
    assert checksum.implementation() == "pure-python"
    assert checksum.blake3_hex(b"") == EMPTY_HASH
