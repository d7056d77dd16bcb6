"""The test tree itself: pytest imports test files by their base name (prepend import mode,
no packages), so two files of one name in different folders stop the whole run's collection
("import file mismatch"), and helper modules that tests import by name must not share one
either.  Caught here, in a second, instead of by a full run."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_importable_module_under_tests_has_a_name_of_its_own():
    by_name: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if path.name in ("conftest.py", "__init__.py") or "__pycache__" in path.parts:
            continue
        by_name[path.stem].append(str(path.relative_to(TESTS)))
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert not clashes, f"rename one of each: {clashes}"
