"""bench/scratch.py: where the inbound benchmarks put a run's data, and the file-create probe
they print beside each run, so the scripts cannot rot."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scratch.py"
_spec = importlib.util.spec_from_file_location("scratch", BENCH)
scratch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scratch)


def _attributes(path: Path) -> str:
    out = subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return out.split()[0]


def test_spread_out_marks_the_directory_top_of_a_hierarchy_where_the_file_system_can(tmp_path):
    if shutil.which("chattr") is None or shutil.which("lsattr") is None:
        pytest.skip("e2fsprogs' chattr/lsattr not installed")
    target = tmp_path / "runs"
    target.mkdir()
    if not scratch.spread_out(target):
        pytest.skip("this file system has no T attribute (not ext2/3/4)")
    assert "T" in _attributes(target)


def test_spread_out_says_no_instead_of_raising_where_it_cannot(tmp_path):
    assert scratch.spread_out(tmp_path / "does-not-exist") is False


def test_unique_names_differ_per_call_and_keep_the_prefix():
    names = {scratch.unique_name("colony-3-1024-2") for _ in range(50)}
    assert len(names) == 50
    assert all(name.startswith("colony-3-1024-2-") for name in names)


def test_create_probe_reports_a_cost_per_file_and_leaves_the_files(tmp_path):
    cost = scratch.create_cost_us(tmp_path, files=20)
    assert cost >= 0
    (probe,) = tmp_path.iterdir()   # one directory of its own, under the data directory
    files = sorted(probe.iterdir(), key=lambda p: int(p.name))
    assert len(files) == 20   # kept: deleting them would make the next creates there dearer
    assert all(f.stat().st_size == 1024 for f in files)


def test_quiet_directory_keeps_the_first_place_where_a_create_is_cheap(tmp_path):
    directory, cost = scratch.quiet_directory(tmp_path, "colony-1", cheap_us=1e9, tries=5)
    assert directory.parent == tmp_path and directory.name.startswith("colony-1-")
    assert cost >= 0
    assert [p.name for p in tmp_path.iterdir()] == [directory.name]   # one try was enough


def test_quiet_directory_takes_the_cheapest_of_its_tries_when_none_is_cheap(tmp_path, monkeypatch):
    costs = iter([300.0, 90.0, 400.0])
    monkeypatch.setattr(scratch, "create_cost_us", lambda directory, files=200: next(costs))
    directory, cost = scratch.quiet_directory(tmp_path, "colony-3", cheap_us=60.0, tries=3)
    assert cost == 90.0
    assert len(list(tmp_path.iterdir())) == 3   # the dear ones stay: removing them frees inodes nearby
    assert directory.is_dir() and directory.parent == tmp_path
