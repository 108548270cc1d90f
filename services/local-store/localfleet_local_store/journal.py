"""On-disk persistence for the vector store: a snapshot plus an append-only journal.

Layout of a store directory:

- ``store.snap``: the whole store at one point, written to a temp file, fsync'ed and renamed into
  place, so a reader sees either the old snapshot or the new one, never a half-written one.
- ``store.journal``: every set/delete since that snapshot, one CRC-checked record each. Opening a
  store loads the snapshot and replays the journal. Records are appended one after another, so a
  crash can only damage the LAST one: a partial prefix, a partial body (its declared length runs
  past the end of the file), or, after a power cut, a full-length body whose bytes never reached
  the disk. Only such a torn tail is cut (with a warning). Damage anywhere before the end is not a
  crash; opening then fails, naming the offset, and leaves the file untouched.
- ``LOCK``: held (flock) while a process has the store open, so two processes never share it.

Both files carry a format version and a *generation*. A flush writes snapshot N+1 and then resets
the journal to generation N+1. If the process dies between the two, the journal on disk still
says N: its records are already in the snapshot, so it is discarded on open rather than replayed.

All integers are little-endian; keys are stored as little-endian float32.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np
import numpy.typing as npt

from localfleet.errors import EngineFailure

if sys.platform != "win32":
    import fcntl

logger = logging.getLogger(__name__)

SyncMode = Literal["always", "os"]

SNAPSHOT_NAME = "store.snap"
JOURNAL_NAME = "store.journal"
LOCK_NAME = "LOCK"
_TMP_SUFFIX = ".tmp"

FORMAT_VERSION = 1

# Snapshot: header, keys (count*dim f32), value lengths (count u64), values, then CRC32 of all before it.
_SNAP_MAGIC = b"LFSS"
_SNAP_HEADER = struct.Struct("<4sIQQI4xQ")  # magic, version, generation, count, dim, values_len
_CRC = struct.Struct("<I")

# Journal: header, then records of (body_len u64, crc32 u32) + body. Body: op, dim, count, payload.
_JOURNAL_MAGIC = b"LFSJ"
_JOURNAL_HEADER = struct.Struct("<4sIQ")  # magic, version, generation
_RECORD_PREFIX = struct.Struct("<QI")  # body length, CRC32 of body
_BODY_HEADER = struct.Struct("<B3xIQ")  # op, dim, count

OP_SET = 1
OP_DELETE = 2

_F32 = np.dtype("<f4")
_U64 = np.dtype("<u8")
# Values are joined in groups when written so a huge store never needs one giant bytes copy.
_WRITE_GROUP = 4096
# Bytes per step when a damaged journal is searched for zeros or later records.
_SCAN_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The stored state: keys (count, dim) float32 and their values; dim None when empty."""

    generation: int
    keys: npt.NDArray[np.float32]
    values: list[bytes]
    dim: int | None
    #: the file's CRC32: with the generation, what a saved ANN index names to prove it matches
    crc: int = 0


@dataclass(frozen=True, slots=True)
class Record:
    """One journaled operation; ``values`` is empty for a delete."""

    op: int
    keys: npt.NDArray[np.float32]
    values: list[bytes]


def _fsync_dir(directory: Path) -> None:
    # A rename is only durable once the directory entry itself is on disk.
    if sys.platform == "win32":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(directory: Path) -> None:
    """``mkdir -p``, fsyncing the parent of each folder it creates so a crash cannot lose the entry."""
    missing: list[Path] = []
    folder = directory
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile; a file there fails at the lock
            folder.mkdir()
        _fsync_dir(folder.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _value_lengths(values: Sequence[bytes]) -> npt.NDArray[np.uint64]:
    return np.fromiter((len(v) for v in values), dtype=_U64, count=len(values))


def _split_values(blob: bytes | memoryview, lengths: npt.NDArray[np.uint64], start: int) -> list[bytes]:
    ends = np.cumsum(lengths, dtype=np.uint64).tolist()
    out: list[bytes] = []
    prev = start
    for end in ends:
        stop = start + int(end)
        out.append(bytes(blob[prev:stop]))
        prev = stop
    return out


def _snapshot_corrupt(path: Path, reason: str) -> EngineFailure:
    return EngineFailure(
        f"snapshot {path} is corrupt ({reason}); refusing to start empty, the file was left untouched. "
        f"Restore the directory from a backup, or move {SNAPSHOT_NAME} and {JOURNAL_NAME} out of "
        f"{path.parent} to start a new, empty store"
    )


def read_snapshot(path: Path) -> Snapshot | None:
    """The snapshot at ``path``, or None when there is none. Any damage raises EngineFailure."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EngineFailure(f"cannot read snapshot {path}: {exc}") from exc
    if len(data) < _SNAP_HEADER.size + _CRC.size:
        raise _snapshot_corrupt(path, f"only {len(data)} bytes")
    magic, version, generation, count, dim, values_len = _SNAP_HEADER.unpack_from(data)
    if magic != _SNAP_MAGIC:
        raise _snapshot_corrupt(path, f"bad magic {magic!r}")
    if version != FORMAT_VERSION:
        raise EngineFailure(
            f"snapshot {path} has format version {version}, this build reads version {FORMAT_VERSION}; "
            "open it with the localfleet version that wrote it"
        )
    keys_len = count * dim * _F32.itemsize
    expected = _SNAP_HEADER.size + keys_len + count * _U64.itemsize + values_len + _CRC.size
    if len(data) != expected:
        raise _snapshot_corrupt(path, f"{len(data)} bytes, the header implies {expected}")
    (stored_crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(memoryview(data)[: -_CRC.size]) != stored_crc:
        raise _snapshot_corrupt(path, "CRC mismatch")
    pos = _SNAP_HEADER.size
    keys = np.frombuffer(data, dtype=_F32, count=count * dim, offset=pos).reshape(count, dim)
    pos += keys_len
    lengths = np.frombuffer(data, dtype=_U64, count=count, offset=pos)
    pos += count * _U64.itemsize
    if int(lengths.sum(dtype=np.uint64)) != values_len:
        raise _snapshot_corrupt(path, "value lengths do not add up")
    values = _split_values(memoryview(data), lengths, pos)
    return Snapshot(
        generation, keys.astype(np.float32, copy=False), values, dim if count else None, stored_crc
    )


def _journal_damaged(path: Path, pos: int, index: int, reason: str) -> EngineFailure:
    return EngineFailure(
        f"journal {path} is damaged at byte {pos}, in record {index + 1} ({reason}). A crash can only "
        "cut short the last record, so this is not a torn write: the file was left untouched. To "
        "recover, restore the directory from a backup; or keep the "
        f"{index} intact records before the damage, losing the writes from there on: "
        f"`truncate -s {pos} {path}`; or move {JOURNAL_NAME} out of {path.parent} to open the store as "
        "of its last snapshot (empty if it has none), losing every write journaled since"
    )


def _parse_body(body: bytes, path: Path, pos: int, index: int) -> Record:
    op, dim, count = _BODY_HEADER.unpack_from(body)
    keys_len = count * dim * _F32.itemsize
    pos_in_body = _BODY_HEADER.size
    bad = _journal_damaged(path, pos, index, "it passed its CRC but is malformed")
    if op not in (OP_SET, OP_DELETE) or count == 0 or dim == 0 or len(body) < pos_in_body + keys_len:
        raise bad
    keys = np.frombuffer(body, dtype=_F32, count=count * dim, offset=pos_in_body).reshape(count, dim)
    pos_in_body += keys_len
    if op == OP_DELETE:
        if len(body) != pos_in_body:
            raise bad
        return Record(op, keys.astype(np.float32, copy=False), [])
    if len(body) < pos_in_body + count * _U64.itemsize:
        raise bad
    lengths = np.frombuffer(body, dtype=_U64, count=count, offset=pos_in_body)
    pos_in_body += count * _U64.itemsize
    if len(body) != pos_in_body + int(lengths.sum(dtype=np.uint64)):
        raise bad
    return Record(op, keys.astype(np.float32, copy=False), _split_values(body, lengths, pos_in_body))


def _read_records(f: IO[bytes], size: int, path: Path) -> tuple[list[Record], int]:
    """Complete records from the current position, and the offset just past the last one.

    A bad record that a crash could have left (see :func:`_torn_tail`) ends the journal there;
    any other raises EngineFailure.
    """
    records: list[Record] = []
    pos = f.tell()
    while pos < size:
        prefix = f.read(_RECORD_PREFIX.size)
        if len(prefix) < _RECORD_PREFIX.size:
            break  # a prefix cut short: nothing after it
        length, crc = _RECORD_PREFIX.unpack(prefix)
        end = pos + _RECORD_PREFIX.size + length
        if _BODY_HEADER.size <= length and end <= size:
            body = f.read(length)
            if zlib.crc32(body) == crc:
                records.append(_parse_body(body, path, pos, len(records)))
                pos = end
                continue
        reason = _torn_tail(f, pos, size, length)
        if reason is not None:
            raise _journal_damaged(path, pos, len(records), reason)
        break
    return records, pos


def _torn_tail(f: IO[bytes], pos: int, size: int, length: int) -> str | None:
    """None when the bad record at ``pos`` is what a crash mid-append leaves, else what is wrong."""
    end = pos + _RECORD_PREFIX.size + length
    if end == size and length >= _BODY_HEADER.size:
        return None  # the last record, its body not all on disk
    if end > size:
        # A body cut short; unless an intact record follows: then its length field is damaged.
        later = _intact_record_after(f, pos, size)
        if later is None:
            return None
        return f"its length {length} runs past the end of the file, yet a record starts at byte {later}"
    if _zeros_to_end(f, pos, size) or _zeros_to_end(f, end, size):
        return None  # the file grew but the appended data never reached the disk (power cut)
    if length < _BODY_HEADER.size:
        return f"its declared length {length} is shorter than any record"
    return "its CRC does not match and more data follows it"


def _zeros_to_end(f: IO[bytes], pos: int, size: int) -> bool:
    f.seek(pos)
    while chunk := f.read(min(_SCAN_CHUNK, size - f.tell())):
        if chunk.count(0) != len(chunk):
            return False
    return True


def _intact_record_after(f: IO[bytes], pos: int, size: int) -> int | None:
    """The offset of the first record with a matching CRC that starts after ``pos``, if any."""
    f.seek(pos)
    data = f.read(size - pos)
    buf = np.frombuffer(data, dtype=np.uint8)
    last = len(data) - _RECORD_PREFIX.size - _BODY_HEADER.size  # the last offset a record fits at
    for lo in range(1, last + 1, _SCAN_CHUNK):
        hi = min(lo + _SCAN_CHUNK, last + 1)
        # The length field at every offset at once; few offsets hold one that fits the file.
        lengths = np.zeros(hi - lo, dtype=np.uint64)
        for i in range(8):
            lengths |= buf[lo + i : hi + i].astype(np.uint64) << np.uint64(8 * i)
        room = (len(data) - _RECORD_PREFIX.size - np.arange(lo, hi)).astype(np.uint64)
        for offset in (lo + np.flatnonzero((lengths >= _BODY_HEADER.size) & (lengths <= room))).tolist():
            length, crc = _RECORD_PREFIX.unpack_from(data, offset)
            body = offset + _RECORD_PREFIX.size
            if zlib.crc32(memoryview(data)[body : body + length]) == crc:
                return pos + offset
    return None


class Persistence:
    """Owns one store directory: its lock, snapshot and journal. Not thread-safe; the engine
    serialises all calls under its writer lock."""

    def __init__(self, directory: Path, sync: SyncMode, compact_min_bytes: int, lock_fd: int) -> None:
        self.directory = directory
        self.sync: SyncMode = sync
        self.compact_min_bytes = compact_min_bytes
        self._lock_fd: int | None = lock_fd
        self._journal_fd: int | None = None
        self.generation = 0
        self.snapshot_bytes = 0
        self.journal_bytes = 0
        self.records_since_snapshot = 0
        self.has_snapshot = False
        self.snapshot_crc = 0
        self._compact_after = 0
        # Set when the files may disagree with memory; every later write then refuses.
        self._broken: str | None = None

    @property
    def snapshot_path(self) -> Path:
        return self.directory / SNAPSHOT_NAME

    @property
    def journal_path(self) -> Path:
        return self.directory / JOURNAL_NAME

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, directory: Path, sync: SyncMode, compact_min_bytes: int
    ) -> tuple[Persistence, Snapshot | None, list[Record]]:
        """Lock the directory, read its snapshot and the journal records to replay on top of it."""
        try:
            _make_dirs(directory)
            lock_fd = _lock(directory / LOCK_NAME)
        except OSError as exc:
            raise EngineFailure(f"cannot open store directory {directory}: {exc}") from exc
        self = cls(directory, sync, compact_min_bytes, lock_fd)
        try:
            snapshot, records = self._load()
        except BaseException:
            self.close()
            raise
        return self, snapshot, records

    def _load(self) -> tuple[Snapshot | None, list[Record]]:
        for name in (SNAPSHOT_NAME, JOURNAL_NAME):
            (self.directory / (name + _TMP_SUFFIX)).unlink(missing_ok=True)
        snapshot = read_snapshot(self.snapshot_path)
        if snapshot is not None:
            self.generation = snapshot.generation
            self.snapshot_crc = snapshot.crc
            self.snapshot_bytes = self.snapshot_path.stat().st_size
            self.has_snapshot = True
        try:
            records = self._read_journal()
            if self._journal_fd is None:
                self._journal_fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise EngineFailure(f"cannot open journal {self.journal_path}: {exc}") from exc
        self.records_since_snapshot = len(records)
        return snapshot, records

    def _read_journal(self) -> list[Record]:
        path = self.journal_path
        try:
            f = path.open("rb")
        except FileNotFoundError:
            self._reset_journal(self.generation)
            return []
        with f:
            size = os.fstat(f.fileno()).st_size
            header = f.read(_JOURNAL_HEADER.size)
            if size == 0:
                # Never written past creation: it holds no records.
                logger.warning("journal %s is empty (no header); starting a new one", path)
                self._reset_journal(self.generation)
                return []
            if len(header) < _JOURNAL_HEADER.size:
                raise EngineFailure(f"journal {path} is corrupt (truncated header); restore it from a backup")
            magic, version, generation = _JOURNAL_HEADER.unpack(header)
            if magic != _JOURNAL_MAGIC:
                raise EngineFailure(
                    f"journal {path} is corrupt (bad magic {magic!r}); restore it from a backup"
                )
            if version != FORMAT_VERSION:
                raise EngineFailure(
                    f"journal {path} has format version {version}, this build reads version "
                    f"{FORMAT_VERSION}; open it with the localfleet version that wrote it"
                )
            if generation < self.generation:
                # A flush wrote its snapshot but died before resetting the journal: all in the snapshot.
                logger.info(
                    "journal %s predates snapshot generation %d; discarding it", path, self.generation
                )
                self._reset_journal(self.generation)
                return []
            if generation > self.generation:
                raise EngineFailure(
                    f"journal {path} is at generation {generation} but the snapshot is at "
                    f"{self.generation}: {SNAPSHOT_NAME} was removed or replaced by an older copy. "
                    "Restore the matching snapshot from a backup"
                )
            records, end = _read_records(f, size, path)
        if end < size:
            logger.warning(
                "journal %s: cut %d bytes of a torn last record after %d complete records (a write cut "
                "short by a crash or power cut; with sync=always it was never acknowledged)",
                path,
                size - end,
                len(records),
            )
            with path.open("r+b") as w:
                w.truncate(end)
                w.flush()
                os.fsync(w.fileno())
        self.journal_bytes = end
        return records

    # -- writing -------------------------------------------------------------------------------

    def append_set(self, keys: npt.NDArray[np.float32], values: Sequence[bytes]) -> None:
        lengths = _value_lengths(values)
        self._append(OP_SET, keys, [lengths.tobytes(), *values])

    def append_delete(self, keys: npt.NDArray[np.float32]) -> None:
        self._append(OP_DELETE, keys, [])

    def _append(self, op: int, keys: npt.NDArray[np.float32], tail: list[bytes]) -> None:
        fd = self._writable_fd()
        count, dim = keys.shape
        body = b"".join([_BODY_HEADER.pack(op, dim, count), keys.astype(_F32, copy=False).tobytes(), *tail])
        record = _RECORD_PREFIX.pack(len(body), zlib.crc32(body)) + body
        start = self.journal_bytes
        try:
            _write_all(fd, record)
            if self.sync == "always":
                os.fsync(fd)
        except OSError as exc:
            # Take the partial record back so the journal stays a clean sequence of whole records.
            try:
                os.ftruncate(fd, start)
            except OSError as undo_exc:
                self._broken = f"a failed journal write could not be undone ({undo_exc})"
            raise EngineFailure(
                f"cannot write journal {self.journal_path}: {exc}; the write was not applied. "
                "Free disk space or fix the volume, then retry"
            ) from exc
        self.journal_bytes = start + len(record)
        self.records_since_snapshot += 1

    def _writable_fd(self) -> int:
        if self._broken is not None:
            raise EngineFailure(
                f"the store in {self.directory} stopped accepting writes: {self._broken}. "
                "Restart the backend to recover from the files on disk"
            )
        if self._journal_fd is None:
            raise EngineFailure("the store is closed")
        return self._journal_fd

    @property
    def dirty(self) -> bool:
        """True when the journal holds records a snapshot does not, or there is no snapshot yet."""
        return self.records_since_snapshot > 0 or not self.has_snapshot

    def should_compact(self) -> bool:
        return self.journal_bytes > max(self.snapshot_bytes, self.compact_min_bytes, self._compact_after)

    def postpone_compaction(self) -> None:
        """After a failed compaction: wait for more growth rather than retry on every write."""
        self._compact_after = self.journal_bytes + self.compact_min_bytes

    def write_snapshot(self, keys: npt.NDArray[np.float32], values: Sequence[bytes]) -> None:
        """Store ``keys``/``values`` as the next snapshot, then start an empty journal after it."""
        self._writable_fd()
        count, dim = keys.shape
        generation = self.generation + 1
        tmp = self.directory / (SNAPSHOT_NAME + _TMP_SUFFIX)
        lengths = _value_lengths(values)
        header = _SNAP_HEADER.pack(
            _SNAP_MAGIC, FORMAT_VERSION, generation, count, dim if count else 0, int(lengths.sum())
        )
        key_bytes = np.ascontiguousarray(keys, dtype=_F32).view(np.uint8).reshape(-1)
        try:
            with tmp.open("wb") as f:
                crc = 0
                for chunk in self._snapshot_chunks(header, key_bytes, lengths, values):
                    f.write(chunk)
                    crc = zlib.crc32(chunk, crc)
                f.write(_CRC.pack(crc))
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
            os.replace(tmp, self.snapshot_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise EngineFailure(
                f"cannot write snapshot in {self.directory}: {exc}; the store and its journal are "
                "unchanged. Free disk space or fix the volume"
            ) from exc
        try:
            _fsync_dir(self.directory)
            self._reset_journal(generation)
        except OSError as exc:
            # The new snapshot is in place but the old journal is not reset: appending to it now
            # would write records that the next open discards as stale.
            self._broken = f"the journal could not be reset after a snapshot ({exc})"
            raise EngineFailure(
                f"cannot reset journal {self.journal_path}: {exc}. Restart the backend to recover"
            ) from exc
        self.generation = generation
        self.snapshot_crc = crc
        self.snapshot_bytes = size
        self.has_snapshot = True
        self._compact_after = 0

    @staticmethod
    def _snapshot_chunks(
        header: bytes,
        key_bytes: npt.NDArray[np.uint8],
        lengths: npt.NDArray[np.uint64],
        values: Sequence[bytes],
    ) -> list[bytes | memoryview]:
        chunks: list[bytes | memoryview] = [header, key_bytes.data, lengths.tobytes()]
        for start in range(0, len(values), _WRITE_GROUP):
            chunks.append(b"".join(values[start : start + _WRITE_GROUP]))
        return chunks

    def _reset_journal(self, generation: int) -> None:
        tmp = self.directory / (JOURNAL_NAME + _TMP_SUFFIX)
        with tmp.open("wb") as f:
            f.write(_JOURNAL_HEADER.pack(_JOURNAL_MAGIC, FORMAT_VERSION, generation))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.journal_path)
        _fsync_dir(self.directory)
        new_fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND)
        if self._journal_fd is not None:
            os.close(self._journal_fd)
        self._journal_fd = new_fd
        self.journal_bytes = _JOURNAL_HEADER.size
        self.records_since_snapshot = 0

    def close(self) -> None:
        """Close the journal and release the directory lock; safe to call twice."""
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops its flock
            self._lock_fd = None


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if sys.platform != "win32":
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise EngineFailure(
                f"store directory {path.parent} is in use by another process; stop it, or give each "
                "backend its own directory"
            ) from exc
    return fd
