"""Benchmarks: georep-sync next to rsync (and gsyncd where it runs), on seeded datasets.

Run ``python -m bench`` from the repository root (see bench/README.md).  Nothing here is
imported by the package or the tests' fixtures; speed is reported, never asserted.
"""
