"""The DICOM node's durable spool: nothing received is lost, nothing is delivered twice.

Every instance the node receives is written here (and flushed to disk) before its sender is
told it was stored; it moves from state to state as files move from folder to folder::

    <root>/received/<key>.dcm     as received, waiting to be denoised
    <root>/denoised/<key>.dcm     the derived instance, waiting to be delivered
    <root>/delivered/<key>.json   done: what was delivered, where, when (the images are dropped)
    <root>/failed/<key>.dcm       refused for good (the reason in <key>.json): a bad instance
    <root>/<state>/<key>.json     beside each: attempts, the next attempt's time, the last error

A move is a rename within one file system, so a crash leaves each instance in exactly one
state; a restart resumes from the folders. The key is a hash of the source's SOP Instance UID:
a resent instance lands on its own key, and one that was already delivered is not done again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

State = Literal["received", "denoised", "delivered", "failed"]
STATES: tuple[State, ...] = ("received", "denoised", "delivered", "failed")
_TMP = "tmp"


def key_of(sop_instance_uid: str) -> str:
    return hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:32]


@dataclass
class Record:
    """What the spool knows about one instance besides its bytes."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    received_at: float
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str = ""
    derived_sop_instance_uid: str = ""
    delivered_to: str = ""
    history: list[tuple[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Item:
    key: str
    state: State
    record: Record


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        for folder in (*STATES, _TMP):
            (root / folder).mkdir(parents=True, exist_ok=True)
        # What a crash left half-written was never acknowledged: its sender resends it.
        for leftover in (root / _TMP).iterdir():
            leftover.unlink(missing_ok=True)

    def _path(self, state: str, key: str, suffix: str) -> Path:
        return self.root / state / f"{key}{suffix}"

    def state_of(self, key: str) -> State | None:
        for state in reversed(STATES):  # after a crash mid-move, the later state is the true one
            if self._path(state, key, ".json").exists():
                return state
        return None

    def receive(self, data: bytes, record: Record) -> tuple[str, bool]:
        """Store a received instance durably; (key, whether it is new). An instance already in
        the spool (a resend) is not stored again, whatever its state."""
        key = key_of(record.sop_instance_uid)
        if self.state_of(key) is not None:
            return key, False
        record.history.append(("received", time.time()))
        self._write(self._path("received", key, ".dcm"), data)
        self._write(self._path("received", key, ".json"), _encode(record))
        _sync_folder(self.root / "received")
        return key, True

    def read(self, item: Item) -> bytes:
        return self._path(item.state, item.key, ".dcm").read_bytes()

    def items(self, state: State) -> Iterator[Item]:
        """The instances in ``state``, oldest first."""
        paths = sorted((self.root / state).glob("*.json"), key=_modified)
        for path in paths:
            try:
                yield Item(path.stem, state, _decode(path.read_bytes()))
            except FileNotFoundError:  # moved on by another thread since listed
                continue

    def due(self, state: State, now: float) -> Iterator[Item]:
        return (item for item in self.items(state) if item.record.next_attempt_at <= now)

    def count(self, state: State) -> int:
        return sum(1 for _ in (self.root / state).glob("*.json"))

    def advance(self, item: Item, state: State, data: bytes | None, record: Record, error: str = "") -> Item:
        """Move ``item`` to ``state`` with new bytes (or none: delivered keeps only the record)."""
        record.history.append((state, time.time()))
        record.attempts, record.next_attempt_at, record.last_error = 0, 0.0, error[:500]
        if data is not None:
            self._write(self._path(state, item.key, ".dcm"), data)
        self._write(self._path(state, item.key, ".json"), _encode(record))
        _sync_folder(self.root / state)
        # Only once the new state is on disk does the old one go: a crash in between leaves the
        # item in both, and the later state wins (``state_of`` and ``resume``).
        self._path(item.state, item.key, ".json").unlink(missing_ok=True)
        self._path(item.state, item.key, ".dcm").unlink(missing_ok=True)
        return Item(item.key, state, record)

    def retry_later(self, item: Item, error: str, wait_s: float) -> None:
        record = item.record
        record.attempts += 1
        record.last_error = error[:500]
        record.next_attempt_at = time.time() + wait_s
        self._write(self._path(item.state, item.key, ".json"), _encode(record))

    def resume(self) -> None:
        """After a crash between writing a later state and removing the earlier one: keep the later."""
        for earlier_index, earlier in enumerate(STATES):
            for path in list((self.root / earlier).glob("*.json")):
                if any(self._path(later, path.stem, ".json").exists() for later in STATES[earlier_index + 1:]):
                    path.unlink(missing_ok=True)
                    self._path(earlier, path.stem, ".dcm").unlink(missing_ok=True)

    def _write(self, path: Path, data: bytes) -> None:
        """Write, flush to disk, then rename into place: a reader sees all of it or none."""
        temporary = self.root / _TMP / f"{path.parent.name}-{path.name}"
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)


def _sync_folder(folder: Path) -> None:
    # A rename is durable once the folder's entry is: fsync the directory too (POSIX).
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _encode(record: Record) -> bytes:
    return json.dumps(asdict(record), separators=(",", ":")).encode()


def _decode(data: bytes) -> Record:
    raw = json.loads(data)
    raw["history"] = [tuple(entry) for entry in raw.get("history", [])]
    return Record(**raw)
