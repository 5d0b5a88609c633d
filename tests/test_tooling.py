"""The package is type-checked (mypy --strict) and lint-clean (ruff): part of the test command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent


def test_mypy_strict() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "georep"], cwd=TOP, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff() -> None:
    paths = [d for d in ("georep", "tests", "bench") if (TOP / d).is_dir()]
    r = subprocess.run([sys.executable, "-m", "ruff", "check", *paths], cwd=TOP, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# Leaf modules every stage may import: each imports no other georep module but these
# (`test_shared_modules_are_leaves`).  sqlrows: the SQLite writes of the id store (source), the
# ledger (batch) and the index (apply).
SHARED = ("errors", "model", "sqlrows")

# What each stage may import besides the SHARED modules (restic's depguard, by hand).
ALLOWED = {
    "protocol": set(),
    "source": set(),
    "batch": {"source"},
    "apply": {"protocol"},
    "transport": {"protocol", "source", "batch"},
    "cli": {"protocol", "source", "batch", "apply", "transport", "cli", "daemon", "tree_daemon"},
}


def test_layers_point_one_way() -> None:
    """source → batch → transport → apply: no stage reaches into a later or a sibling one."""

    bad = []
    for path in (TOP / "georep").rglob("*.py"):
        rel = path.relative_to(TOP / "georep").parts
        if len(rel) < 2 or rel[0] not in ALLOWED:
            continue
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if len(words) < 2 or words[0] not in ("from", "import") or not words[1].startswith("georep."):
                continue
            target = words[1].split(".")[1]
            if target in SHARED or target == rel[0] or target in ALLOWED[rel[0]]:
                continue
            bad.append(f"{'/'.join(rel)}: {line.strip()}")
    assert bad == []


def test_shared_modules_are_leaves() -> None:
    """What every stage may import reaches into no stage: it may import only the other shared modules."""

    bad = []
    for name in SHARED:
        for line in (TOP / "georep" / f"{name}.py").read_text().splitlines():
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("from", "import") and words[1].startswith("georep"):
                target = words[1].split(".")[1] if "." in words[1] else ""
                if target not in SHARED:
                    bad.append(f"{name}.py: {line.strip()}")
    assert bad == []


def test_records_are_read_only_to_the_type_checker(tmp_path: Path) -> None:
    """`georep.model.record` drops the runtime freeze for speed: mypy must still refuse every assignment."""

    snippet = tmp_path / "assign.py"
    snippet.write_text(
        "from georep.model import Entry, Kind, Meta, ROOT_ID\n"
        "from georep.protocol.messages import EntryMsg, Result\n"
        "from georep.source.crawl import SourceEntry\n"
        "meta = Meta(0o644, 0, 0, 0)\n"
        "meta.mode = 0o600\n"
        "entry = Entry(b'i' * 16, ROOT_ID, b'n', Kind.FILE, meta)\n"
        "entry.name = b'other'\n"
        "SourceEntry(entry, b'/p').path = b'/q'\n"
        "Result(1, 0, '').status = 2\n"
        "EntryMsg(1, b'', b'', b'', 1, 0, 0, 0, 0, [], 0, b'', 0).size = 5\n"
        "from georep.apply.index import Obj\n"
        "Obj(b'', Kind.FILE, 0, 0, 0, 0, 0, b'').gen = 1\n"
    )
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", str(snippet)], cwd=TOP, capture_output=True,
                       text=True)
    refused = sorted(int(line.split(":")[1]) for line in r.stdout.splitlines() if "is read-only" in line)
    assert refused == [5, 7, 8, 9, 10, 12], r.stdout + r.stderr


def test_records_compare_and_hash_by_value() -> None:
    from georep.model import Kind, Meta
    from georep.protocol.messages import Result

    assert Meta(0o644, 1, 2, 3) == Meta(0o644, 1, 2, 3) != Meta(0o644, 1, 2, 4)
    assert len({Meta(0o644, 1, 2, 3), Meta(0o644, 1, 2, 3), Result(1, int(Kind.FILE), "")}) == 2


def test_records_compare_hash_and_show_as_the_dataclasses_they_stand_for() -> None:
    """`record` generates only ``__init__``: its shared methods answer what a dataclass's own would."""

    import dataclasses

    from georep.model import Meta, record

    def both(body: dict[str, object]) -> tuple[type, type]:
        annotations = {"a": "int", "b": "bytes", "c": "list[int]"}
        made = record(type("Thing", (), {"__annotations__": dict(annotations), "__module__": __name__, **body}))
        twin = dataclasses.dataclass(unsafe_hash=True)(
            type("Thing", (), {"__annotations__": dict(annotations), "__module__": __name__, **body}))
        return made, twin

    made, twin = both({"c": dataclasses.field(default_factory=list)})
    for args in [(1, b"x"), (1, b"x", [2]), (0, b"")]:
        assert repr(made(*args)) == repr(twin(*args))
        assert made(*args) == made(*args)
    assert made(1, b"x") != made(2, b"x") and made(1, b"x") != made(1, b"y")
    assert made(1, b"x").__eq__(twin(1, b"x")) is NotImplemented  # another class: Python asks the other side
    assert made(1, b"x") != (1, b"x", [])
    hashable, hashable_twin = both({})
    assert hash(hashable(1, b"x", ())) == hash(hashable(1, b"x", ()))  # type: ignore[call-arg]
    assert hash(hashable(1, b"x", ())) == hash(hashable_twin(1, b"x", ()))  # type: ignore[call-arg]
    with_compare_off, twin_off = both({"b": dataclasses.field(compare=False, repr=False, default=b""),
                                       "c": dataclasses.field(default_factory=list)})
    assert with_compare_off(1, b"x", []) == with_compare_off(1, b"y", [])
    assert with_compare_off(1, b"x", []) != with_compare_off(2, b"x", [])
    assert repr(with_compare_off(1, b"x", [])) == repr(twin_off(1, b"x", []))
    assert Meta(0o644, 1, 2, 3).__slots__  # still a slots class
