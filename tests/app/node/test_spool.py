"""The durable spool: states as folders, resends harmless, a crash mid-move resolved."""

from __future__ import annotations

import time
from pathlib import Path

from app.node.spool import Record, Spool, key_of


def record(uid: str = "1.2.3.4") -> Record:
    return Record(sop_instance_uid=uid, study_instance_uid="1.2", series_instance_uid="1.2.3", received_at=time.time())


def test_an_instance_moves_through_the_states_and_keeps_its_history(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    key, new = spool.receive(b"source", record())
    assert new and key == key_of("1.2.3.4") and spool.state_of(key) == "received"
    (item,) = spool.items("received")
    assert spool.read(item) == b"source"
    denoised = spool.advance(item, "denoised", b"result", item.record)
    assert spool.read(denoised) == b"result" and spool.count("received") == 0
    delivered = spool.advance(denoised, "delivered", None, denoised.record)
    assert spool.state_of(key) == "delivered" and not (tmp_path / "delivered" / f"{key}.dcm").exists()
    (done,) = spool.items("delivered")
    assert [state for state, _ in done.record.history] == ["received", "denoised", "delivered"]
    assert delivered.record.attempts == 0


def test_a_resend_is_not_stored_twice_in_any_state(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.receive(b"source", record())
    assert spool.receive(b"source again", record())[1] is False
    (item,) = spool.items("received")
    spool.advance(item, "delivered", None, item.record)
    assert spool.receive(b"source", record())[1] is False
    assert spool.count("received") == 0


def test_a_restart_reads_the_folders_and_a_crash_mid_move_keeps_the_later_state(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.receive(b"a", record("1.1"))
    spool.receive(b"b", record("1.2"))
    key = key_of("1.1")
    # A crash after the denoised state was written and before the received one was removed.
    (tmp_path / "denoised" / f"{key}.dcm").write_bytes(b"result")
    (tmp_path / "denoised" / f"{key}.json").write_bytes((tmp_path / "received" / f"{key}.json").read_bytes())
    (tmp_path / "tmp" / "half-written").write_bytes(b"x")
    again = Spool(tmp_path)
    again.resume()
    assert again.state_of(key) == "denoised" and again.count("received") == 1
    assert not (tmp_path / "tmp" / "half-written").exists()


def test_retries_wait_and_are_not_due_before_their_time(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.receive(b"a", record())
    (item,) = spool.items("received")
    spool.retry_later(item, "destination down", 60.0)
    assert list(spool.due("received", time.time())) == []
    (later,) = spool.due("received", time.time() + 61)
    assert later.record.attempts == 1 and later.record.last_error == "destination down"
