"""The quick loop: tests listed in slow_tests.txt (measured, scripts/slow_tests.py) get the `slow` marker, so
`pytest -m "not slow and not native"` runs the rest in a few minutes; the full suite still runs them all."""

from __future__ import annotations

from pathlib import Path

import pytest

SLOW_LIST = Path(__file__).with_name("slow_tests.txt")


def _key(nodeid: str) -> str:
    """file.py::test[params], whatever folder pytest was started from."""
    path, _, rest = nodeid.partition("::")
    return f"{Path(path).name}::{rest}"


def _listed() -> set[str]:
    lines = SLOW_LIST.read_text().splitlines() if SLOW_LIST.is_file() else []
    return {_key(line.strip()) for line in lines if line.strip() and not line.startswith("#")}


def pytest_collection_modifyitems(config, items):
    listed = _listed()
    for item in items:
        if _key(item.nodeid) in listed:
            item.add_marker(pytest.mark.slow)
