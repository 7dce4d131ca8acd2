"""The report's history view: each sweep metric of each point over the commits of several runs of one suite."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from varbench.reporting.history import commit_order, history_series
from varbench.reporting.report import load_results


def run_at(d: Path, commit: str | None, start: str, slow: float) -> Path:
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"git_commit": commit, "start_time": start}))
    rows = [{"kind": "sweep", "model": "var-tiny", "weights": "random", "depth": depth, "switch": 2,
             "select": "isometric", "batch": 1, "dtype": "fp32", "device": "cpu", "keep_skipped": False,
             "status": "ok", "latency_ms_p50": 10.0 * depth * slow,
             "latency_ms_samples": [10.0 * depth * slow * (1 + k / 100) for k in (-2, -1, 0, 1, 2)],
             "kv_bytes_analytic": 1000 * depth, "kv_bytes": 1000 * depth}
            for depth in (2, 4)]
    (d / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture
def three_commits(tmp_path):
    # commit ids sort as z < a by start time, not by name
    dirs = [run_at(tmp_path / "r1", "zzz111", "2026-11-01T10:00:00+00:00", 1.0),
            run_at(tmp_path / "r3", "aaa333", "2026-11-03T10:00:00+00:00", 1.2),
            run_at(tmp_path / "r2", "mmm222", "2026-11-02T10:00:00+00:00", 0.9)]
    return load_results(dirs)


def test_series_in_commit_order_only_changing_metrics(three_commits):
    manifests, rows = three_commits
    assert commit_order(manifests) == ["zzz111", "mmm222", "aaa333"]
    data = history_series(manifests, rows)
    assert list(data) == ["latency_ms_p50"]                      # kv bytes never changed: no history to draw
    lat = {s.point: s for s in data["latency_ms_p50"]}
    assert set(lat) == {"var-tiny depth=2", "var-tiny depth=4"}
    s = lat["var-tiny depth=2"]
    assert s.commits == ["zzz111", "mmm222", "aaa333"] and s.values == pytest.approx([20.0, 18.0, 24.0])
    assert s.low[0] == pytest.approx(20.0 * 0.99) and s.high[0] == pytest.approx(20.0 * 1.01)   # IQR of samples


def test_one_commit_has_no_history(tmp_path):
    m, r = load_results([run_at(tmp_path / "a", "c1", "2026-11-01", 1.0),
                         run_at(tmp_path / "b", "c1", "2026-11-02", 2.0)])
    assert history_series(m, r) == {}


def test_report_draws_the_history_only_over_several_commits(tmp_path, three_commits):
    pytest.importorskip("plotly")
    from varbench.reporting.report import build_report

    dirs = [tmp_path / n for n in ("r1", "r2", "r3")]
    page = build_report(dirs, tmp_path / "h.html").read_text()
    assert "History over commits" in page and "latency_ms_p50 over commits" in page
    single = build_report([tmp_path / "r1"], tmp_path / "one.html").read_text()
    assert "History over commits" not in single
