"""The vector store engine and its persistence, without gRPC."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from localfleet.errors import BadInput, EngineFailure, NotLoaded
from localfleet_local_store import journal
from localfleet_local_store.engine import VectorStore

F32 = npt.NDArray[np.float32]


def keys_of(*rows: list[float]) -> F32:
    return np.array(rows, dtype=np.float32)


def random_keys(n: int, dim: int, seed: int = 0) -> F32:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def values_for(n: int, tag: str = "v") -> list[bytes]:
    return [f"{tag}{i}".encode() for i in range(n)]


def cosine(keys: F32, query: F32) -> npt.NDArray[np.float64]:
    k = keys.astype(np.float64)
    q = query.astype(np.float64)
    norms = np.linalg.norm(k, axis=1) * np.linalg.norm(q)
    dots: npt.NDArray[np.float64] = k @ q
    out = np.zeros_like(dots)
    np.divide(dots, norms, out=out, where=norms > 0)
    return out


def contents(store: VectorStore, keys: F32) -> dict[bytes, bytes]:
    found, values = store.get(keys)
    return {k.tobytes(): v for k, v in zip(found, values, strict=True)}


# -- semantics ---------------------------------------------------------------------------------------


def test_set_and_get_returns_found_keys_in_request_order() -> None:
    store = VectorStore.open(None)
    store.set(keys_of([1, 0, 0], [0, 1, 0], [0, 0, 1]), [b"a", b"b", b"c"])
    found, values = store.get(keys_of([0, 0, 1], [9, 9, 9], [1, 0, 0]))
    assert found.dtype == np.float32
    assert found.tolist() == [[0, 0, 1], [1, 0, 0]]
    assert values == [b"c", b"a"]
    assert len(store) == 3
    assert store.dim == 3


def test_get_returns_keys_bit_exact() -> None:
    store = VectorStore.open(None)
    keys = random_keys(5, 7)
    store.set(keys, values_for(5))
    found, _ = store.get(keys)
    assert found.tobytes() == keys.tobytes()


def test_upsert_replaces_value_of_equal_key() -> None:
    store = VectorStore.open(None)
    store.set(keys_of([1, 2], [3, 4]), [b"old1", b"old2"])
    store.set(keys_of([3, 4]), [b"new2"])
    assert len(store) == 2
    assert store.get(keys_of([1, 2], [3, 4]))[1] == [b"old1", b"new2"]


def test_duplicate_keys_in_one_batch_last_wins() -> None:
    store = VectorStore.open(None)
    store.set(keys_of([1, 2], [5, 6], [1, 2]), [b"first", b"x", b"last"])
    assert len(store) == 2
    assert store.get(keys_of([1, 2]))[1] == [b"last"]


def test_delete_counts_removed_and_ignores_missing() -> None:
    store = VectorStore.open(None)
    keys = random_keys(10, 4)
    store.set(keys, values_for(10))
    assert store.delete(np.vstack([keys[[2, 7, 2]], keys_of([9, 9, 9, 9])])) == 2
    assert len(store) == 8
    assert store.delete(keys_of([8, 8, 8, 8])) == 0
    remaining = [i for i in range(10) if i not in (2, 7)]
    found, values = store.get(keys)
    assert found.tobytes() == keys[remaining].tobytes()
    assert values == [f"v{i}".encode() for i in remaining]
    # Moved columns still answer find correctly.
    for i in remaining:
        _, vals, sims = store.find(keys[i], 1)
        assert vals == [f"v{i}".encode()]
        assert sims[0] == pytest.approx(1.0, abs=1e-6)


def test_delete_many_then_reinsert() -> None:
    store = VectorStore.open(None)
    keys = random_keys(3000, 8)
    store.set(keys, values_for(3000))
    assert store.delete(keys[::2]) == 1500
    assert len(store) == 1500
    assert contents(store, keys) == {keys[i].tobytes(): f"v{i}".encode() for i in range(1, 3000, 2)}
    assert store.delete(keys) == 1500
    assert len(store) == 0
    store.set(keys[:5], values_for(5))
    assert store.get(keys[:5])[1] == values_for(5)


def test_find_matches_numpy_cosine_reference() -> None:
    store = VectorStore.open(None)
    keys = random_keys(500, 16, seed=1)
    store.set(keys, values_for(500))
    query = random_keys(1, 16, seed=2)[0]
    found, values, sims = store.find(query, 10)
    ref = cosine(keys, query)
    order = np.argsort(-ref)[:10]
    assert found.tobytes() == keys[order].tobytes()
    assert values == [f"v{i}".encode() for i in order]
    assert sims.dtype == np.float32
    np.testing.assert_allclose(sims, ref[order], atol=1e-5)
    assert np.all(np.diff(sims) <= 0)


def test_find_block_shortcut_matches_reference_on_large_store() -> None:
    # Above the size where find prunes candidates by block maxima.
    store = VectorStore.open(None)
    keys = random_keys(20000, 8, seed=3)
    store.set(keys, values_for(20000))
    for seed in range(5):
        query = random_keys(1, 8, seed=100 + seed)[0]
        _, values, sims = store.find(query, 7)
        ref = cosine(keys, query)
        order = np.argsort(-ref)[:7]
        assert values == [f"v{i}".encode() for i in order]
        np.testing.assert_allclose(sims, ref[order], atol=1e-5)


def test_find_top_k_larger_than_store_returns_all_sorted() -> None:
    store = VectorStore.open(None)
    store.set(keys_of([1, 0], [0, 1], [1, 1]), [b"x", b"y", b"xy"])
    _, values, sims = store.find(np.array([1, 0.1], dtype=np.float32), 100)
    assert values == [b"x", b"xy", b"y"]
    assert len(sims) == 3


def test_find_on_empty_store_is_empty() -> None:
    store = VectorStore.open(None)
    found, values, sims = store.find(np.ones(3, dtype=np.float32), 5)
    assert found.shape == (0, 3)
    assert values == []
    assert sims.shape == (0,)
    assert store.get(keys_of([1, 2, 3]))[1] == []
    assert store.delete(keys_of([1, 2, 3])) == 0


def test_zero_vectors_score_zero_never_nan() -> None:
    store = VectorStore.open(None)
    store.set(keys_of([0, 0, 0], [1, 0, 0]), [b"zero", b"x"])
    _, values, sims = store.find(np.array([1, 0, 0], dtype=np.float32), 2)
    assert values == [b"x", b"zero"]
    assert sims.tolist() == [pytest.approx(1.0), 0.0]
    _, _, sims = store.find(np.zeros(3, dtype=np.float32), 2)
    assert sims.tolist() == [0.0, 0.0]
    assert store.get(keys_of([0, 0, 0]))[1] == [b"zero"]


def test_huge_and_tiny_magnitudes_normalise_without_overflow() -> None:
    store = VectorStore.open(None)
    store.set(keys_of([1e30, 1e30], [1e-40, 0]), [b"big", b"tiny"])
    _, values, sims = store.find(np.array([1, 1], dtype=np.float32), 2)
    assert values == [b"big", b"tiny"]
    np.testing.assert_allclose(sims, [1.0, np.sqrt(0.5)], atol=1e-6)


def test_dimension_mismatch_names_both_dimensions() -> None:
    store = VectorStore.open(None)
    store.set(random_keys(2, 384), values_for(2))
    for call in (
        lambda: store.set(keys_of([1, 2, 3]), [b"x"]),
        lambda: store.get(keys_of([1, 2, 3])),
        lambda: store.delete(keys_of([1, 2, 3])),
        lambda: store.find(np.ones(3, dtype=np.float32), 1),
    ):
        with pytest.raises(BadInput, match=r"dimension 3 does not match the store's dimension 384"):
            call()


def test_empty_store_accepts_a_new_dimension() -> None:
    store = VectorStore.open(None)
    keys = random_keys(3, 4)
    store.set(keys, values_for(3))
    store.delete(keys)
    assert store.dim is None
    store.set(keys_of([1, 2]), [b"2d"])
    assert store.dim == 2
    assert store.find(np.array([1, 2], dtype=np.float32), 1)[1] == [b"2d"]


@pytest.mark.parametrize(
    ("keys", "values", "message"),
    [
        (np.empty((0, 3), dtype=np.float32), [], "no keys"),
        (keys_of([1, 2, 3], [4, 5, 6]), [b"one"], "2 keys but 1 values"),
        (np.ones(3, dtype=np.float32), [b"a"], "2-D"),
        (keys_of([1, 2, 3], [np.nan, 0, 0]), [b"a", b"b"], "key 1 contains NaN"),
        (keys_of([1, 2, 3], [np.inf, 0, 0]), [b"a", b"b"], "NaN or infinity"),
        (np.array([[1e300, 0, 0]]), [b"a"], "NaN or infinity"),
        (keys_of([1, 2, 3], [1, 2, 4]), [b"a", "str"], "not bytes"),
    ],
)
def test_bad_batch_is_rejected_and_changes_nothing(
    tmp_path: Path, keys: F32, values: list[bytes], message: str
) -> None:
    store = VectorStore.open(tmp_path)
    good = keys_of([9, 9, 9])
    store.set(good, [b"keep"])
    journal_size = (tmp_path / journal.JOURNAL_NAME).stat().st_size
    with pytest.raises(BadInput, match=message):
        store.set(keys, values)
    assert len(store) == 1
    assert store.get(good)[1] == [b"keep"]
    assert store.get(keys_of([1, 2, 3]))[1] == []
    assert (tmp_path / journal.JOURNAL_NAME).stat().st_size == journal_size


def test_bad_queries_are_rejected() -> None:
    store = VectorStore.open(None)
    store.set(keys_of([1, 2]), [b"a"])
    with pytest.raises(BadInput, match="at least 1"):
        store.find(np.ones(2, dtype=np.float32), 0)
    with pytest.raises(BadInput, match="NaN or infinity"):
        store.find(np.array([np.nan, 1], dtype=np.float32), 1)
    with pytest.raises(BadInput, match="empty"):
        store.find(np.empty(0, dtype=np.float32), 1)
    with pytest.raises(BadInput, match="no keys"):
        store.get(np.empty((0, 2), dtype=np.float32))


def test_failed_journal_write_applies_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = VectorStore.open(tmp_path)
    store.set(keys_of([1, 1]), [b"keep"])

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(EngineFailure, match="No space left"):
        store.set(keys_of([2, 2]), [b"lost"])
    monkeypatch.undo()
    assert len(store) == 1
    assert store.get(keys_of([2, 2]))[1] == []
    store.close()
    reopened = VectorStore.open(tmp_path)
    assert len(reopened) == 1
    reopened.close()


def test_nbytes_counts_keys_and_values() -> None:
    store = VectorStore.open(None)
    empty = store.nbytes()
    store.set(random_keys(10, 4), [b"x" * 100] * 10)
    assert store.nbytes() >= empty + 10 * 4 * 4 * 2 + 1000


def test_closed_store_refuses_calls() -> None:
    store = VectorStore.open(None)
    store.set(keys_of([1]), [b"a"])
    store.close()
    store.close()
    with pytest.raises(NotLoaded):
        store.find(np.ones(1, dtype=np.float32), 1)
    with pytest.raises(NotLoaded):
        store.set(keys_of([1]), [b"a"])


# -- concurrency -------------------------------------------------------------------------------------


def test_concurrent_writers_lose_nothing_and_readers_see_whole_batches(tmp_path: Path) -> None:
    store = VectorStore.open(tmp_path, sync="os")
    writers, batches, batch = 4, 25, 20
    errors: list[BaseException] = []
    done = threading.Event()

    def write(w: int) -> None:
        try:
            for b in range(batches):
                keys = random_keys(batch, 8, seed=w * 1000 + b)
                store.set(keys, [f"{w}-{b}".encode()] * batch)
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        # Batches are whole: the store size is always a multiple of the batch size.
        try:
            while not done.is_set():
                _, values, _ = store.find(np.ones(8, dtype=np.float32), 1000)
                assert len(values) % batch == 0
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in threads + readers:
        t.start()
    for t in threads:
        t.join()
    done.set()
    for t in readers:
        t.join()
    assert errors == []
    assert len(store) == writers * batches * batch
    for w in range(writers):
        for b in range(batches):
            keys = random_keys(batch, 8, seed=w * 1000 + b)
            assert store.get(keys)[1] == [f"{w}-{b}".encode()] * batch
    store.close()
    reopened = VectorStore.open(tmp_path)
    assert len(reopened) == writers * batches * batch
    reopened.close()


# -- persistence -------------------------------------------------------------------------------------


def test_round_trip_through_close_and_open(tmp_path: Path) -> None:
    keys = random_keys(300, 12)
    store = VectorStore.open(tmp_path / "new" / "dir")
    store.set(keys, values_for(300))
    store.set(keys[:3], [b"", b"\x00\xff", b"z" * 10000])
    store.delete(keys[290:])
    store.close()

    reopened = VectorStore.open(tmp_path / "new" / "dir")
    assert len(reopened) == 290
    assert reopened.dim == 12
    found, values = reopened.get(keys)
    assert found.tobytes() == keys[:290].tobytes()
    assert values == [b"", b"\x00\xff", b"z" * 10000, *values_for(290)[3:]]
    _, top, _ = reopened.find(keys[5], 1)
    assert top == [b"v5"]
    reopened.close()


def test_reopen_without_close_replays_the_journal(tmp_path: Path) -> None:
    keys = random_keys(50, 6)
    store = VectorStore.open(tmp_path)
    store.set(keys, values_for(50))
    store.flush()
    store.set(keys[:10], values_for(10, "new"))
    store.delete(keys[40:])
    # Simulate kill -9: drop the object without close, release only the directory lock.
    assert store._persist is not None
    store._persist.close()

    reopened = VectorStore.open(tmp_path)
    assert contents(reopened, keys) == {
        keys[i].tobytes(): (f"new{i}" if i < 10 else f"v{i}").encode() for i in range(40)
    }
    reopened.close()


def test_empty_store_round_trip_and_dimension_reset_replay(tmp_path: Path) -> None:
    store = VectorStore.open(tmp_path)
    store.set(random_keys(3, 4), values_for(3))
    store.delete(random_keys(3, 4))
    store.set(keys_of([1, 2]), [b"2d"])
    assert store._persist is not None
    store._persist.close()  # crash: replay must accept the dimension change
    reopened = VectorStore.open(tmp_path)
    assert reopened.dim == 2
    assert reopened.get(keys_of([1, 2]))[1] == [b"2d"]
    reopened.delete(keys_of([1, 2]))
    reopened.close()
    again = VectorStore.open(tmp_path)
    assert len(again) == 0
    assert again.dim is None
    again.close()


def _crash_after_three_records(directory: Path) -> tuple[F32, int]:
    """Write three journaled batches and 'crash'; returns the keys and the size after record two."""
    keys = random_keys(3, 5)
    store = VectorStore.open(directory)
    store.set(keys[:1], [b"r0"])
    store.set(keys[1:2], [b"r1"])
    two_records = (directory / journal.JOURNAL_NAME).stat().st_size
    store.set(keys[2:], [b"r2"])
    assert store._persist is not None
    store._persist.close()
    return keys, two_records


def test_torn_last_record_is_truncated_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys, two_records = _crash_after_three_records(tmp_path)
    path = tmp_path / journal.JOURNAL_NAME
    full = path.stat().st_size
    os.truncate(path, full - 7)  # the third record was cut mid-write
    with caplog.at_level(logging.WARNING):
        store = VectorStore.open(tmp_path)
    assert contents(store, keys) == {keys[0].tobytes(): b"r0", keys[1].tobytes(): b"r1"}
    assert f"cut {full - 7 - two_records} bytes of a torn last record" in caplog.text
    assert path.stat().st_size == two_records
    # Later writes land after the last complete record and survive.
    store.set(keys[2:], [b"again"])
    assert store._persist is not None
    store._persist.close()
    reopened = VectorStore.open(tmp_path)
    assert reopened.get(keys[2:])[1] == [b"again"]
    reopened.close()


@pytest.mark.parametrize("garbage", [b"\x00" * 40, b"\xff" * 5, os.urandom(64)])
def test_garbage_after_last_record_is_dropped(tmp_path: Path, garbage: bytes) -> None:
    keys, _ = _crash_after_three_records(tmp_path)
    with (tmp_path / journal.JOURNAL_NAME).open("ab") as f:
        f.write(garbage)
    store = VectorStore.open(tmp_path)
    assert len(store) == 3
    assert store.get(keys)[1] == [b"r0", b"r1", b"r2"]
    store.close()


def test_flipped_byte_in_the_last_record_is_cut_as_torn(tmp_path: Path) -> None:
    # Ends exactly at the end of the file: a power cut can leave such a body half on disk.
    keys, two_records = _crash_after_three_records(tmp_path)
    path = tmp_path / journal.JOURNAL_NAME
    data = bytearray(path.read_bytes())
    data[two_records + 20] ^= 0xFF  # inside record three's body: its CRC no longer matches
    path.write_bytes(bytes(data))
    store = VectorStore.open(tmp_path)
    assert store.get(keys)[1] == [b"r0", b"r1"]
    store.close()


@pytest.mark.parametrize("last", ["set", "delete"])
def test_every_cut_inside_the_last_record_opens_as_a_torn_tail(tmp_path: Path, last: str) -> None:
    keys = random_keys(3, 5)
    store = VectorStore.open(tmp_path)
    store.set(keys, [b"r0", b"r1", b"r2"])
    path = tmp_path / journal.JOURNAL_NAME
    before = path.stat().st_size
    if last == "set":
        store.set(keys[:1], [b"a longer new value"])
    else:
        store.delete(keys[:1])
    assert store._persist is not None
    store._persist.close()
    data = path.read_bytes()
    for cut in range(before + 1, len(data)):  # any prefix a crash mid-append can leave
        path.write_bytes(data[:cut])
        reopened = VectorStore.open(tmp_path)
        assert reopened.get(keys)[1] == [b"r0", b"r1", b"r2"], cut
        assert path.stat().st_size == before
        assert reopened._persist is not None
        reopened._persist.close()  # no snapshot: the next cut replays the same journal


def _journal_of_three_records(directory: Path) -> tuple[F32, list[int]]:
    """A snapshot holding one key, then three journaled batches and a 'crash'; returns the keys
    (the snapshot's first) and the byte offset where each record starts."""
    keys = random_keys(4, 5)
    store = VectorStore.open(directory)
    store.set(keys[:1], [b"snap"])
    store.flush()
    path = directory / journal.JOURNAL_NAME
    starts = []
    for i in range(3):
        starts.append(path.stat().st_size)
        store.set(keys[i + 1 : i + 2], [f"r{i}".encode()])
    assert store._persist is not None
    store._persist.close()
    return keys, starts


def _flip(data: bytearray, at: int, mask: int = 0xFF) -> None:
    data[at] ^= mask


def _set_length(data: bytearray, at: int, length: int) -> None:
    data[at : at + 8] = length.to_bytes(8, "little")


def _zero(data: bytearray, at: int, count: int) -> None:
    data[at : at + count] = bytes(count)


# The record damaged (0-based), and the change made to the journal given that record's offset.
_MID_FILE_DAMAGE: dict[str, tuple[int, Callable[[bytearray, int], None]]] = {
    "body of record 1": (0, lambda d, at: _flip(d, at + 12 + 20)),
    "CRC of record 1": (0, lambda d, at: _flip(d, at + 8, 0x01)),
    "body of record 2": (1, lambda d, at: _flip(d, at + 40)),
    "length of record 2 runs past the end": (1, lambda d, at: _flip(d, at + 6, 0x01)),
    "length of record 1 shortened": (0, lambda d, at: _set_length(d, at, 20)),
    "length of record 1 zeroed": (0, lambda d, at: _set_length(d, at, 0)),
    "record 2 zeroed": (1, lambda d, at: _zero(d, at, 30)),
}


@pytest.mark.parametrize("damage", list(_MID_FILE_DAMAGE))
def test_damage_before_the_last_record_fails_open_and_keeps_the_file(tmp_path: Path, damage: str) -> None:
    keys, starts = _journal_of_three_records(tmp_path)
    path = tmp_path / journal.JOURNAL_NAME
    index, change = _MID_FILE_DAMAGE[damage]
    data = bytearray(path.read_bytes())
    change(data, starts[index])
    path.write_bytes(bytes(data))
    with pytest.raises(EngineFailure) as info:
        VectorStore.open(tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert f"damaged at byte {starts[index]}, in record {index + 1}" in message
    assert "left untouched" in message
    assert path.read_bytes() == data  # never truncated or rewritten
    # The advice works: cutting the file at the damage keeps the records before it.
    assert f"truncate -s {starts[index]} {path}" in message
    os.truncate(path, starts[index])
    store = VectorStore.open(tmp_path)
    assert store.get(keys)[1] == [b"snap", b"r0", b"r1"][: index + 1]
    store.close()


def test_a_damaged_journal_moved_aside_opens_the_store_from_its_snapshot(tmp_path: Path) -> None:
    keys, starts = _journal_of_three_records(tmp_path)
    path = tmp_path / journal.JOURNAL_NAME
    data = bytearray(path.read_bytes())
    data[starts[0] + 12 + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EngineFailure, match=f"move {journal.JOURNAL_NAME} out of"):
        VectorStore.open(tmp_path)
    path.rename(tmp_path / "store.journal.damaged")
    store = VectorStore.open(tmp_path)
    assert store.get(keys)[1] == [b"snap"]
    store.close()


def test_creating_a_store_folder_syncs_each_new_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            synced.append((info.st_dev, info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store = VectorStore.open(tmp_path / "a" / "b")
    for folder in (tmp_path, tmp_path / "a", tmp_path / "a" / "b"):
        info = folder.stat()
        assert (info.st_dev, info.st_ino) in synced, folder
    store.close()


_WRITER = """
import sys
from pathlib import Path
import numpy as np
from localfleet_local_store.engine import VectorStore

store = VectorStore.open(Path(sys.argv[1]), sync="always")
for b in range(100000):
    keys = np.random.default_rng(b).standard_normal((10, 8)).astype(np.float32)
    store.set(keys, [b"%d" % b] * 10)
    print(b, flush=True)
"""


def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    acknowledged = -1
    while acknowledged < 30:
        acknowledged = int(writer.stdout.readline())
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    store = VectorStore.open(tmp_path)
    # The writer may have run ahead of what we read: the store holds a whole prefix of its batches,
    # at least every acknowledged one, and no part of a batch cut short.
    written, rest = divmod(len(store), 10)
    assert rest == 0
    assert written > acknowledged
    for b in range(written):
        keys = np.random.default_rng(b).standard_normal((10, 8)).astype(np.float32)
        assert store.get(keys)[1] == [b"%d" % b] * 10
    store.close()


def test_sync_always_fsyncs_each_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = VectorStore.open(tmp_path, sync="always")
    calls: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store.set(keys_of([1, 2]), [b"a"])
    assert len(calls) == 1
    store.delete(keys_of([1, 2]))
    assert len(calls) == 2
    store.delete(keys_of([5, 5]))  # nothing removed: nothing to journal
    assert len(calls) == 2
    store.close()


def test_sync_os_does_not_fsync_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = VectorStore.open(tmp_path, sync="os")
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    store.set(keys_of([1, 2]), [b"a"])
    assert calls == []
    monkeypatch.undo()
    store.close()


def test_unknown_sync_mode_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="'always' or 'os'"):
        VectorStore.open(tmp_path, sync="never")  # type: ignore[arg-type]


def test_flush_snapshots_and_empties_the_journal(tmp_path: Path) -> None:
    keys = random_keys(20, 3)
    store = VectorStore.open(tmp_path)
    store.set(keys, values_for(20))
    header = 16
    assert (tmp_path / journal.JOURNAL_NAME).stat().st_size > header
    store.flush()
    assert (tmp_path / journal.JOURNAL_NAME).stat().st_size == header
    assert (tmp_path / journal.SNAPSHOT_NAME).stat().st_size > 20 * 3 * 4
    store.close()
    reopened = VectorStore.open(tmp_path)
    assert contents(reopened, keys) == {k.tobytes(): v for k, v in zip(keys, values_for(20), strict=True)}
    reopened.close()


def test_journal_compacts_automatically_and_keeps_data(tmp_path: Path) -> None:
    store = VectorStore.open(tmp_path, sync="os", compact_min_bytes=4096)
    keys = random_keys(400, 16)
    for start in range(0, 400, 10):
        store.set(keys[start : start + 10], values_for(10, f"b{start}-"))
    for start in range(0, 400, 10):  # rewrites: the journal grows, the snapshot does not
        store.set(keys[start : start + 10], values_for(10, f"c{start}-"))
    snapshot = (tmp_path / journal.SNAPSHOT_NAME).stat().st_size
    journal_size = (tmp_path / journal.JOURNAL_NAME).stat().st_size
    assert journal_size <= max(snapshot, 4096)
    assert store._persist is not None
    assert store._persist.generation >= 2
    store._persist.close()  # crash: snapshot + journal must still hold everything
    reopened = VectorStore.open(tmp_path)
    assert len(reopened) == 400
    assert reopened.get(keys[395:])[1] == values_for(10, "c390-")[5:]
    reopened.close()


def test_failed_compaction_does_not_fail_the_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = VectorStore.open(tmp_path, sync="os", compact_min_bytes=1024)
    assert store._persist is not None
    persist = store._persist
    attempts: list[int] = []

    def disk_full(keys: F32, values: object) -> None:
        attempts.append(len(keys))
        raise EngineFailure("cannot write snapshot: No space left on device")

    monkeypatch.setattr(persist, "write_snapshot", disk_full)
    keys = random_keys(40, 16)
    for i in range(40):
        store.set(keys[i : i + 1], [b"x" * 100])  # no error: each write is journaled
    assert len(store) == 40
    # Retried after further growth, not on every write.
    assert 1 <= len(attempts) < 10
    monkeypatch.undo()
    persist.close()
    reopened = VectorStore.open(tmp_path)
    assert len(reopened) == 40
    reopened.close()


def test_crash_between_snapshot_and_journal_reset_does_not_replay_stale_journal(tmp_path: Path) -> None:
    keys = random_keys(4, 3)
    store = VectorStore.open(tmp_path)
    store.set(keys[:2], [b"a", b"b"])
    stale = (tmp_path / journal.JOURNAL_NAME).read_bytes()
    store.delete(keys[:2])  # empty -> next batch may change dimension
    store.set(keys_of([1, 2, 3, 4, 5]), [b"5d"])
    store.flush()
    store.close()
    # Put back an older-generation journal, as if the flush died before resetting it.
    (tmp_path / journal.JOURNAL_NAME).write_bytes(stale)
    reopened = VectorStore.open(tmp_path)
    assert reopened.dim == 5
    assert len(reopened) == 1
    reopened.close()


@pytest.mark.parametrize("damage", ["magic", "crc", "truncate", "version"])
def test_corrupt_snapshot_fails_open_loudly(tmp_path: Path, damage: str) -> None:
    store = VectorStore.open(tmp_path)
    store.set(random_keys(10, 4), values_for(10))
    store.close()
    path = tmp_path / journal.SNAPSHOT_NAME
    data = bytearray(path.read_bytes())
    if damage == "magic":
        data[0:4] = b"XXXX"
    elif damage == "crc":
        data[60] ^= 0x01
    elif damage == "truncate":
        del data[-10:]
    else:
        data[4] = 99
    path.write_bytes(bytes(data))
    journal_bytes = (tmp_path / journal.JOURNAL_NAME).read_bytes()
    with pytest.raises(EngineFailure, match="snapshot") as info:
        VectorStore.open(tmp_path)
    assert "corrupt" in str(info.value) or "version 99" in str(info.value)
    assert path.read_bytes() == data
    assert (tmp_path / journal.JOURNAL_NAME).read_bytes() == journal_bytes
    # The failed open released the directory: a fixed snapshot opens.
    path.unlink()
    (tmp_path / journal.JOURNAL_NAME).unlink()
    fresh = VectorStore.open(tmp_path)
    assert len(fresh) == 0
    fresh.close()


def test_missing_snapshot_with_later_journal_fails_open(tmp_path: Path) -> None:
    store = VectorStore.open(tmp_path)
    store.set(keys_of([1, 2]), [b"a"])
    store.close()
    (tmp_path / journal.SNAPSHOT_NAME).unlink()
    with pytest.raises(EngineFailure, match="generation"):
        VectorStore.open(tmp_path)


def test_directory_is_locked_while_open(tmp_path: Path) -> None:
    store = VectorStore.open(tmp_path)
    with pytest.raises(EngineFailure, match="in use"):
        VectorStore.open(tmp_path)
    store.close()
    VectorStore.open(tmp_path).close()


def test_format_version_is_recorded(tmp_path: Path) -> None:
    store = VectorStore.open(tmp_path)
    store.set(keys_of([1]), [b"a"])
    store.close()
    for name in (journal.SNAPSHOT_NAME, journal.JOURNAL_NAME):
        data = (tmp_path / name).read_bytes()
        assert int.from_bytes(data[4:8], "little") == journal.FORMAT_VERSION
