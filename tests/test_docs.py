"""The documented tables are generated from the code, so they cannot drift from it."""

from __future__ import annotations

from pathlib import Path

from georep.errors import GeorepError, all_error_classes, error_table_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_error_table_is_current() -> None:
    assert (DOCS / "ERRORS.md").read_text() == error_table_markdown(), "run: python -m georep.errors > docs/ERRORS.md"


def test_exit_codes_are_unique_and_stable() -> None:
    codes = [c.exit_code for c in all_error_classes() if c is not GeorepError]
    assert len(codes) == len(set(codes))
    assert all(2 <= c < 64 for c in codes)


def test_every_error_has_a_one_line_cause_and_hint() -> None:
    for cls in all_error_classes():
        assert cls.__doc__ and cls.__doc__.strip().splitlines()[0].endswith(".")
        assert cls.hint and "\n" not in cls.hint


def test_protocol_doc_names_every_message() -> None:
    from georep.protocol import messages as m

    text = (DOCS / "PROTOCOL.md").read_text()
    for cls in m.ALL_MESSAGES:
        assert f"`{cls.__name__}` ({cls.KIND})" in text, cls.__name__
