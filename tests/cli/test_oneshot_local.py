"""`georep-sync --oneshot` to a local secondary: the real agent over a pipe, real files."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import oneshot, run_cli
from treecmp import HOSTILE_NAMES, build_fidelity_tree, diff, snapshot

from georep.cli import oneshot as oneshot_cli
from georep.transport.channel import PipeChannel, local_agent_argv


def test_fidelity_and_idempotence(dirs: tuple[Path, Path, Path]) -> None:
    src, dst, state = dirs
    build_fidelity_tree(src, files=300)
    first = oneshot(src, dst, state)
    assert diff(snapshot(src), snapshot(dst)) == []
    assert first["errors"] == 0
    assert first["bytes_data"] > 3 * 1024 * 1024
    # the sparse file kept its holes: far fewer blocks than its length
    st = os.stat(dst / "sparse")
    assert st.st_blocks * 512 < 4 * 1024 * 1024
    # a hard-link group is one inode on the secondary
    assert os.stat(dst / "hard-1").st_ino == os.stat(dst / "dir" / "random.bin").st_ino
    again = oneshot(src, dst, state)
    assert again["bytes_data"] == 0
    assert again["files"] == 0
    assert diff(snapshot(src), snapshot(dst)) == []


def test_directory_rename_moves_without_data(dirs: tuple[Path, Path, Path]) -> None:
    src, dst, state = dirs
    (src / "a" / "big").mkdir(parents=True)
    for i in range(1000):
        (src / "a" / "big" / f"f{i}").write_bytes(os.urandom(100))
    oneshot(src, dst, state)
    ino = os.stat(dst / "a" / "big").st_ino
    os.rename(src / "a" / "big", src / "moved")
    s = oneshot(src, dst, state)
    assert s["bytes_data"] == 0
    assert s["deleted"] == 0
    assert os.stat(dst / "moved").st_ino == ino  # renamed, not copied
    assert diff(snapshot(src), snapshot(dst)) == []


def test_swap_and_cycle_of_names(dirs: tuple[Path, Path, Path]) -> None:
    src, dst, state = dirs
    src.mkdir()
    for n in "abc":
        (src / n).write_bytes(n.encode() * 1000)
    (src / "da").mkdir()
    (src / "db").mkdir()
    (src / "da" / "in-a").write_text("A")
    oneshot(src, dst, state)
    # swap a <-> b; cycle of directories da -> db -> da; c moved into a directory
    os.rename(src / "a", src / "tmp")
    os.rename(src / "b", src / "a")
    os.rename(src / "tmp", src / "b")
    os.rename(src / "da", src / "tmpd")
    os.rename(src / "db", src / "da")
    os.rename(src / "tmpd", src / "db")
    os.rename(src / "c", src / "db" / "c")
    s = oneshot(src, dst, state)
    assert s["bytes_data"] == 0
    assert (dst / "a").read_bytes() == b"b" * 1000
    assert (dst / "db" / "in-a").read_text() == "A"
    assert diff(snapshot(src), snapshot(dst)) == []
    assert os.listdir(dst / ".georep" / "staging") == []


def test_rsync_temp_name_story(dirs: tuple[Path, Path, Path]) -> None:
    """A temp name that reached the secondary is gone once the source shows the final name."""

    src, dst, state = dirs
    src.mkdir()
    (src / "player.json").write_text('{"v": 1}')
    (src / ".player.json.AbvgGY").write_text('{"v": 2}')
    oneshot(src, dst, state)
    assert (dst / ".player.json.AbvgGY").exists()
    os.rename(src / ".player.json.AbvgGY", src / "player.json")  # rsync's final rename
    s = oneshot(src, dst, state)
    assert s["bytes_data"] == 0  # the temp file's inode is renamed over, not re-sent
    assert sorted(os.listdir(dst)) == [".georep", "player.json"]
    assert (dst / "player.json").read_text() == '{"v": 2}'


def test_changes_deletes_and_type_changes(dirs: tuple[Path, Path, Path]) -> None:
    src, dst, state = dirs
    build_fidelity_tree(src)
    oneshot(src, dst, state)
    shutil.rmtree(src / "dir" / "sub")
    os.unlink(src / "hard-1")
    (src / "empty").write_bytes(b"now with data")
    os.unlink(src / "link-rel")
    os.mkdir(src / "link-rel")  # a symlink became a directory
    os.rmdir(src / "empty-dir")
    (src / "empty-dir").write_text("a directory became a file")
    os.chmod(src / "mode-0640", 0o604)
    os.setxattr(src / "dir" / "random.bin", b"user.checksum", b"changed")
    s = oneshot(src, dst, state)
    assert diff(snapshot(src), snapshot(dst)) == []
    assert s["bytes_data"] == len(b"now with data") + len(b"a directory became a file")
    assert s["deleted"] >= 2


def test_names_of_any_bytes(dirs: tuple[Path, Path, Path]) -> None:
    src, dst, state = dirs
    src.mkdir()
    for n in HOSTILE_NAMES:
        (Path(os.fsdecode(os.path.join(os.fsencode(src), n)))).write_bytes(n)
    oneshot(src, dst, state)
    assert sorted(os.listdir(os.fsencode(dst))) == sorted([b".georep", *HOSTILE_NAMES])
    for n in HOSTILE_NAMES:
        with open(os.path.join(os.fsencode(dst), n), "rb") as f:
            assert f.read() == n


def test_seeded_secondary_is_adopted_without_data(dirs: tuple[Path, Path, Path]) -> None:
    """A secondary pre-filled by rsync -a (same size and mtime) costs no data."""

    src, dst, state = dirs
    build_fidelity_tree(src, files=50)
    subprocess.run(["cp", "-a", f"{src}/.", str(dst)], check=True)
    s = oneshot(src, dst, state)
    assert diff(snapshot(src), snapshot(dst)) == []
    assert s["bytes_data"] == 0


def test_mass_delete_refused_when_source_empty(dirs: tuple[Path, Path, Path]) -> None:
    src, dst, state = dirs
    build_fidelity_tree(src)
    oneshot(src, dst, state)
    for p in os.listdir(src):
        full = src / p
        if full.is_dir() and not full.is_symlink():
            shutil.rmtree(full)
        else:
            full.unlink()
    r = run_cli("--oneshot", src, dst, "--state-dir", state)
    assert r.code == 4, r.stderr
    assert "refusing" in r.stderr and "hint:" in r.stderr
    assert (dst / "dir" / "random.bin").exists()
    r = run_cli("--oneshot", src, dst, "--state-dir", state, "--allow-mass-delete")
    assert r.code == 0, r.stderr
    assert os.listdir(dst) == [".georep"]


def test_errors_have_cause_hint_and_exit_code(tmp_path: Path) -> None:
    r = run_cli("--oneshot", tmp_path / "missing", tmp_path / "dst", "--state-dir", tmp_path / "st")
    assert r.code == 3
    assert "does not exist" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "src").mkdir()
    (tmp_path / "blocker").write_text("a file where the secondary root should be")
    r = run_cli("--oneshot", tmp_path / "src", tmp_path / "blocker" / "dst", "--state-dir", tmp_path / "st")
    assert r.code == 10, r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("--oneshot", tmp_path / "src")
    assert r.code == 2
    r = run_cli("--oneshot", tmp_path / "src", "ftp://host/x", "--state-dir", tmp_path / "st")
    assert r.code == 2
    r = run_cli("--version")
    assert r.code == 0 and r.stdout.startswith("georep-sync ")


def test_debug_shows_traceback(tmp_path: Path) -> None:
    r = run_cli("--oneshot", tmp_path / "missing", tmp_path / "dst", "--state-dir", tmp_path / "st", "--debug")
    assert r.code == 3
    assert "Traceback" in r.stderr


def test_a_local_copy_never_loads_the_ssh_client(dirs: tuple[Path, Path, Path]) -> None:
    """asyncssh (a tenth of a second to import) is loaded for ssh:// secondaries only."""

    src, dst, state = dirs
    src.mkdir()
    (src / "f").write_bytes(b"x")
    probe = ("import sys; from georep.cli.main import main; "
             f"rc = main(['--oneshot', {str(src)!r}, {str(dst)!r}, '--state-dir', {str(state)!r}, '--no-progress']); "
             "print(rc, 'asyncssh' in sys.modules, 'georep.transport.sender' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["0", "False", "True"], r.stdout + r.stderr
    assert (dst / "f").read_bytes() == b"x"


def test_a_bad_state_directory_is_one_clear_error_though_the_agent_was_starting(dirs: tuple[Path, Path, Path]
                                                                                 ) -> None:
    """The agent is started before the state is opened (`oneshot.replicate`); the state's error is
    still the one reported, alone (``-X dev``: nothing left for Python to warn about)."""

    src, dst, state = dirs
    src.mkdir()
    state.write_bytes(b"a file, not a directory")
    r = subprocess.run([sys.executable, "-X", "dev", "-m", "georep", "--oneshot", str(src), str(dst),
                        "--state-dir", str(state)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 5, r.stderr
    assert r.stderr.splitlines() == [
        f"georep-sync: error: state directory {state} cannot be used: [Errno 17] File exists: '{state}'",
        "georep-sync: hint: check --state-dir is writable and on a local filesystem",
    ]


def test_abandoning_an_agent_being_started_leaves_no_process(tmp_path: Path) -> None:
    """`oneshot._abandon` (a run that fails before it used its channel): the agent is gone when it
    returns, whether it had started or was still starting; not only when the process exits."""

    dst = tmp_path / "dst"

    def agents() -> list[int]:
        found = []
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"agent" in cmdline and os.fsencode(dst) in cmdline:
                found.append(pid)
        return found

    async def run() -> tuple[list[int], list[int], list[int]]:
        started = asyncio.ensure_future(PipeChannel.start(local_agent_argv(str(dst))))
        await asyncio.wait({started})
        running = agents()
        await oneshot_cli._abandon(started)
        gone = agents()
        starting = asyncio.ensure_future(PipeChannel.start(local_agent_argv(str(dst))))
        await asyncio.sleep(0)
        await oneshot_cli._abandon(starting)
        await asyncio.sleep(0.5)
        return running, gone, agents()

    running, gone, after_cancel = asyncio.run(run())
    assert len(running) == 1 and gone == [] and after_cancel == []
