"""The agent's index and its disk never disagree in a way that leaves files behind."""

from __future__ import annotations

import os
from pathlib import Path

from rawagent import RawAgent, entry, oid
from rawagent import data_msgs as _data_msgs

from georep.model import ROOT_ID, Kind
from georep.protocol import messages as m


def test_a_renamed_object_whose_old_name_holds_an_outdated_copy_leaves_nothing_behind(tmp_path: Path) -> None:
    """New data published under one name leaves a hard link on the old inode; renaming from there drops it."""

    root = tmp_path / "root"
    agent = RawAgent(root)
    x = oid(70)
    assert agent.one(entry(1, x, ROOT_ID, b"a", Kind.FILE, 5)).status == m.NEED
    agent.send(*_data_msgs(1, b"hello"))
    assert agent.results(1)[0].status == m.DONE
    assert agent.one(m.LinkMsg(2, x, ROOT_ID, b"b")).status == m.DONE
    assert os.stat(root / "a").st_ino == os.stat(root / "b").st_ino
    # new data for the object: published at "a" as a new inode; "b" still holds the old one
    assert agent.one(entry(3, x, ROOT_ID, b"a", Kind.FILE, 6)).status == m.NEED
    agent.send(*_data_msgs(3, b"hello!"))
    assert agent.results(1)[0].status == m.DONE
    assert os.stat(root / "a").st_ino != os.stat(root / "b").st_ino
    assert agent.one(m.RemoveMsg(4, x, ROOT_ID, b"a")).status == m.DONE
    # the object moves to "c": its only name left is "b", an outdated copy
    r = agent.one(entry(5, x, ROOT_ID, b"c", Kind.FILE, 6))
    if r.status == m.NEED:
        agent.send(*_data_msgs(5, b"hello!"))
        r = agent.results(1)[0]
    assert r.status == m.DONE
    assert agent.one(m.RemoveMsg(6, x, ROOT_ID, b"b")).status == m.DONE
    assert agent.finish() == 0
    assert sorted(p.name for p in root.iterdir() if p.name != ".georep") == ["c"]
    assert (root / "c").read_bytes() == b"hello!"
    assert os.listdir(root / ".georep" / "staging") == []


def test_an_id_reused_by_a_directory_keeps_its_contents_when_the_old_file_is_swept(tmp_path: Path) -> None:
    """A plain tree's inode number reused: the new directory gets the id of the file it replaced.

    The file is set aside in staging and swept at Finish; the sweep once took the directory's
    children out of the index and left its mtime unsettled (seen as a flaky rerun test).
    """

    root = tmp_path / "root"
    agent = RawAgent(root)
    x, inside = oid(80), oid(81)
    assert agent.one(entry(1, x, ROOT_ID, b"f", Kind.FILE, 5)).status == m.NEED
    agent.send(*_data_msgs(1, b"hello"))
    assert agent.results(1)[0].status == m.DONE
    assert agent.one(entry(2, x, ROOT_ID, b"f", Kind.DIR)).status == m.DONE  # same id, now a directory
    assert agent.one(entry(3, inside, x, b"inside", Kind.FILE, 2)).status == m.NEED
    agent.send(*_data_msgs(3, b"in"))
    assert agent.results(1)[0].status == m.DONE
    _finish(agent)
    assert os.stat(root / "f").st_mtime_ns == 1_000_000_000  # settled like any directory
    assert agent.one(entry(4, inside, x, b"inside", Kind.FILE, 2)).status == m.DONE  # still known: no data
    assert agent.finish() == 0
    assert (root / "f" / "inside").read_bytes() == b"in"
    assert os.listdir(root / ".georep" / "staging") == []


def test_a_directory_id_reused_by_a_symlink_still_lets_its_children_move_out(tmp_path: Path) -> None:
    """rmtree of a directory, then a symlink and a file on the freed inode numbers (plain tree ids).

    The symlink comes with the directory's id, the file with the id of a file that was inside
    it.  The old directory is retired under an id of its own: the file is renamed out of it
    (no data), and the rest of it is swept.  Found by the ledger's property test.
    """

    root = tmp_path / "root"
    agent = RawAgent(root)
    d, x = oid(90), oid(91)
    _dir_with_file(agent, d, b"dir", x, b"inner", b"hello")
    sym = m.EntryMsg(3, d, ROOT_ID, b"sym", int(Kind.SYMLINK), 0o777, 0, 0, 1_000_000_000, [], 0, b"target", 0)
    assert agent.one(sym).status == m.DONE
    assert agent.one(entry(4, x, ROOT_ID, b"moved", Kind.FILE, 5)).status == m.DONE  # renamed out, no data
    _finish(agent)
    assert agent.finish() == 0
    assert sorted(p.name for p in root.iterdir() if p.name != ".georep") == ["moved", "sym"]
    assert os.readlink(root / "sym") == "target" and (root / "moved").read_bytes() == b"hello"
    assert os.listdir(root / ".georep" / "staging") == []


def test_a_file_id_reused_by_a_directory_in_a_subdirectory(tmp_path: Path) -> None:
    """Retiring the old file must not close the directory fd the new entry is made in (EBADF)."""

    root = tmp_path / "root"
    agent = RawAgent(root)
    d, x = oid(95), oid(96)
    _dir_with_file(agent, d, b"d", x, b"f", b"hi")
    r = agent.one(entry(3, x, d, b"n0", Kind.DIR))  # the file is gone, a directory has its inode
    assert (r.status, r.cause) == (m.DONE, "")
    assert agent.one(m.RemoveMsg(4, x, d, b"f")).status == m.DONE  # its old name: not x's any more
    assert agent.finish() == 0
    assert sorted(p.name for p in (root / "d").iterdir()) == ["n0"] and (root / "d" / "n0").is_dir()


def _finish(agent: RawAgent) -> None:
    """End the batch (the agent sweeps staging and settles directories) and wait for Finished."""

    agent.send(m.Finish(False, 2, False))
    while not any(isinstance(msg, m.Finished) for msg in agent.inbox):
        agent._pump()
    agent.inbox.clear()


def _dir_with_file(agent: RawAgent, d: bytes, dname: bytes, x: bytes, fname: bytes, data: bytes) -> None:
    """Directory ``d`` at the top, holding file ``x`` with ``data`` (items 1 and 2)."""

    assert agent.one(entry(1, d, ROOT_ID, dname, Kind.DIR)).status == m.DONE
    assert agent.one(entry(2, x, d, fname, Kind.FILE, len(data))).status == m.NEED
    agent.send(*_data_msgs(2, data))
    assert agent.results(1)[0].status == m.DONE


def test_a_file_replaces_an_untracked_directory_at_its_name(tmp_path: Path) -> None:
    """Making room for a file where an untracked directory stood empties the agent's directory cache.

    The publishing rename then used the parent's fd the cache had just closed: "Bad file
    descriptor", the file never published.  Dropped fds are now closed after the item.
    """

    root = tmp_path / "root"
    agent = RawAgent(root)
    d, g = oid(90), oid(92)
    assert agent.one(entry(1, d, ROOT_ID, b"d", Kind.DIR)).status == m.DONE
    (root / "d" / "g").mkdir()  # behind the agent's back: no id, no row in its index
    (root / "d" / "g" / "inside").write_bytes(b"x")
    assert agent.one(entry(2, g, d, b"g", Kind.FILE, 2)).status == m.NEED
    agent.send(*_data_msgs(2, b"ok"))
    assert agent.results(1)[0] == m.Result(2, m.DONE, "")
    assert agent.finish() == 0
    assert (root / "d" / "g").read_bytes() == b"ok"
    assert os.listdir(root / ".georep" / "staging") == []


def test_a_directory_made_this_session_has_nothing_to_adopt_but_a_stray_file_still_gives_way(
        tmp_path: Path) -> None:
    """In a directory it made this session the agent does not look for an untracked object to adopt.

    Something may appear there all the same (another process on the secondary): the file is
    then asked for in full, and the publishing rename, which refuses to replace a name,
    takes the general path: the stray file gives way to the sender's.
    """

    root = tmp_path / "root"
    agent = RawAgent(root)
    d, f = oid(90), oid(91)
    assert agent.one(entry(1, d, ROOT_ID, b"d", Kind.DIR)).status == m.DONE
    (root / "d" / "f").write_bytes(b"hello")  # same size and mtime: adopted in a directory not made here
    os.utime(root / "d" / "f", ns=(1_000_000_000, 1_000_000_000))  # entry()'s mtime
    assert agent.one(entry(2, f, d, b"f", Kind.FILE, 5)).status == m.NEED  # not adopted: the data is sent
    agent.send(*_data_msgs(2, b"world"))
    assert agent.results(1)[0].status == m.DONE
    assert agent.finish() == 0
    assert (root / "d" / "f").read_bytes() == b"world"
    assert sorted(p.name for p in (root / "d").iterdir()) == ["f"]
    assert os.listdir(root / ".georep" / "staging") == []
