"""Results schema: durable appends, tolerant reads, atomic manifest, resume keys, environment capture."""
from __future__ import annotations

import json
import os
import sys

from tests import fake_pynvml
from varbench import results


def test_append_and_read_roundtrip(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    rows = [{"model": "var-tiny", "depth": 2, "scale_ms_p50": [1.0, 2.5]}, {"model": "var-tiny", "depth": 4}]
    for r in rows:
        results.append_row(path, r)
    assert results.read_rows(path) == rows
    assert path.read_text().count("\n") == 2


def test_truncated_last_line_is_skipped_and_next_append_is_clean(tmp_path):
    path = tmp_path / "sweep.jsonl"
    results.append_row(path, {"a": 1})
    with open(path, "a") as f:
        f.write('{"a": 2, "b": [1, 2')          # a writer killed mid-line
    assert results.read_rows(tmp_path) == [{"a": 1}]   # directory form reads sweep.jsonl
    results.append_row(path, {"a": 3})
    assert results.read_rows(path) == [{"a": 1}, {"a": 3}]


def test_read_rows_missing_file(tmp_path):
    assert results.read_rows(tmp_path / "nope.jsonl") == []


def test_manifest_is_atomic_and_complete(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml.make())
    p = results.write_manifest(tmp_path, {"dtype": "fp32", "model": "var-tiny"})
    data = json.loads(p.read_text())
    for key in ("hostname", "python", "torch", "cuda", "cudnn", "gpu_name", "driver", "cpu_count",
                "git_commit", "git_dirty", "command_line", "start_time"):
        assert key in data, key
    assert data["dtype"] == "fp32" and data["model"] == "var-tiny"
    assert data["driver"] == "999.99"                  # read through (fake) NVML
    assert [f for f in os.listdir(tmp_path) if f != "manifest.json"] == []   # no temp file left behind
    assert results.read_manifest(tmp_path)["model"] == "var-tiny"


def test_environment_without_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml.make(mode="no_driver"))
    env = results.environment()
    assert env["driver"] is None
    assert env["python"].count(".") == 2


def test_row_key_normalises_lists_and_floats():
    a = {"model": "m", "depth": 4.0, "batch": 2, "scale": [1, 2]}
    b = {"model": "m", "depth": 4, "batch": 2, "scale": [1, 2], "extra": "ignored"}
    fields = ("model", "depth", "batch", "scale")
    assert results.row_key(a, fields) == results.row_key(b, fields)
    assert results.row_key(a, fields) != results.row_key({**b, "batch": 3}, fields)
    hash(results.row_key(a, fields))


def test_git_dirty_follows_tracked_changes(tmp_path, monkeypatch):
    import subprocess
    repo = tmp_path / "r"
    repo.mkdir()
    run = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)   # noqa: E731
    run("init", "-q")
    (repo / "f").write_text("a")
    run("add", "f")
    run("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    monkeypatch.setattr(results, "__file__", str(repo / "results.py"))
    assert results._git_dirty() is False
    (repo / "f").write_text("b")
    assert results._git_dirty() is True
    (repo / "untracked").write_text("c")
    (repo / "f").write_text("a")
    assert results._git_dirty() is False           # untracked files are not the measured code
