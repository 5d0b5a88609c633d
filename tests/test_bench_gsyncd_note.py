"""What the bench says when gsyncd delivers fewer live writes than were made."""

from __future__ import annotations

from bench.gsyncd import undelivered_note


def test_names_without_data_and_a_faulty_worker_are_told() -> None:
    held = {b"w00000.dat": 0, b"w00001.dat": 0, b"w00002.dat": 4096, b"sub": -1}
    note = undelivered_note(held, 200, "Faulty", "OSError: [Errno 22] Invalid argument")
    assert note == ("once the last write's time was up: 3 of 200 names on the secondary (2 empty), "
                    "session status Faulty, worker error: OSError: [Errno 22] Invalid argument")


def test_nothing_arrived_from_an_active_session() -> None:
    assert undelivered_note({}, 200, "Active", None) == (
        "once the last write's time was up: 0 of 200 names on the secondary (0 empty), session status Active")
