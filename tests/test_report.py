"""The HTML report: self-contained (no network sources), every figure present, user strings escaped."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("plotly")

from varbench.cli import app  # noqa: E402
from varbench.reporting.report import build_report, json_for_script  # noqa: E402
from varbench.reporting.figures import join_quality, pareto_figures, sweep_points  # noqa: E402

EVIL = "</script><script>alert(1)</script>"


def write_results(d: Path, model: str = "var-tiny", weights: str = "random") -> Path:
    """Sweep (2 depths x 2 batches), sensitivity in two modes, one traced run with timeline samples."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"torch": "2.x", "gpu_name": None, "weights": weights,
                                                 "command_line": f"varbench sweep --model {model}"}))
    rows = []
    for depth, lat in ((2, 3.0), (4, 5.0)):
        for batch in (1, 2):
            rows.append({"kind": "sweep", "model": model, "weights": weights, "depth": depth, "switch": 2,
                         "batch": batch, "dtype": "fp32", "device": "cpu", "status": "ok",
                         "latency_ms_p50": lat * batch, "images_per_s": 1000 * batch / (lat * batch),
                         "kv_bytes": 1000 * depth * batch, "kv_bytes_analytic": 1000 * depth * batch,
                         "peak_allocated_bytes": 5000 * depth * batch, "latency_ms_samples": [lat] * 5})
    rows.append({"kind": "sweep", "model": model, "depth": 4, "switch": 2, "batch": 64, "status": "oom"})
    (d / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sens = [{"kind": "sensitivity", "model": model, "weights": weights, "mode": mode, "scale": s, "group": None,
             "depth": 2, "metric": "kl", "value": 0.1 * (4 - s)} for mode in ("from", "single") for s in (1, 2, 3)]
    (d / "sensitivity.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sens) + '{"truncated": ')
    trace = [{"kind": "trace_scale", "model": model, "run_id": "r1", "depth": 2, "switch": 2, "batch": 1,
              "scale": s, "elapsed_ms": 10.0 * (s + 1), "kv_bytes_analytic": 100 * (s + 1),
              "kv_bytes_cache": 100 * (s + 1), "allocated_bytes": 2e6} for s in range(4)]
    (d / "trace.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trace))
    samples = [{"kind": "trace_sample", "model": model, "run_id": "r1", "t_ms": float(t),
                "device_used_bytes": 3e6 + t} for t in range(40)]
    (d / "trace_timeline.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    return d


@pytest.fixture
def report_html(tmp_path: Path) -> str:
    out = build_report([write_results(tmp_path / "res")], tmp_path / "r.html")
    return out.read_text()


def test_self_contained_plotly_inlined_once(report_html):
    from plotly.offline import get_plotlyjs

    assert report_html.count(get_plotlyjs()[:300]) == 1
    # markup outside the script bodies (plotly.js itself mentions URLs in strings it never loads here)
    markup = re.sub(r"(<script\b[^>]*>).*?(</script>)", r"\1\2", report_html, flags=re.S | re.I)
    assert markup.count("<script") == 6 + 3
    assert not re.search(r"<script\b[^>]*\bsrc\s*=", markup, re.I)          # every script inline
    assert not re.search(r"<link\b", markup, re.I)                           # no external stylesheets
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", markup, re.I)
    assert "@import" not in markup and "url(" not in markup


def test_all_figures_present(report_html):
    titles = re.findall(r'<div class="figure" data-title="([^"]*)"', report_html)
    assert any(t.startswith("Quality (kl) vs latency") or t == "Quality vs latency" for t in titles)
    assert "Quality vs peak memory" in titles and "Latency vs memory" in titles
    assert sum(t.startswith("Sensitivity:") for t in titles) == 2           # one per mode
    assert sum(t.startswith("Memory timeline") for t in titles) == 1
    assert report_html.count("Plotly.newPlot(") == len(titles) == 6
    # the axis selector and units
    for label in ('"label":"latency"', '"label":"throughput"', '"label":"kv"', '"label":"peak"'):
        assert label in report_html
    assert "latency p50 (ms)" in report_html and "memory (MiB)" in report_html
    # sortable table with units in the headers; the truncated JSONL line was skipped, the oom row kept
    assert 'class="rows sortable"' in report_html and '<span class="unit">bytes</span>' in report_html
    assert ">oom<" in report_html
    assert "RANDOM WEIGHTS" in report_html


def test_escaping_model_name(tmp_path):
    html = build_report([write_results(tmp_path / "res", model=EVIL)], tmp_path / "r.html").read_text()
    assert EVIL not in html
    assert "alert(1)" in html                               # shown, as text
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in html
    # every <script> opened is one of ours: plotly, one per figure, rows JSON, sort JS
    assert len(re.findall(r"<script\b", html)) == 6 + 3
    assert len(re.findall(r"</script>", html)) == 6 + 3


def test_json_for_script_cannot_close_the_script():
    text = json_for_script({"m": EVIL, "x": float("nan"), "amp": "a&b"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"m": EVIL, "x": None, "amp": "a&b"}


def test_quality_join_and_pareto_points(tmp_path):
    sweep = [{"model": "var-tiny", "depth": 2, "switch": 2, "status": "ok", "latency_ms_p50": 1.0},
             {"model": "var-tiny", "depth": 2, "switch": 3, "status": "ok", "latency_ms_p50": 1.0},
             {"model": "var-tiny", "depth": 3, "switch": 2, "status": "ok", "latency_ms_p50": 1.0}]
    sens = [{"model": "var-tiny", "mode": "from", "scale": 2, "depth": 2, "metric": "kl", "value": 0.5},
            {"model": "var-tiny", "mode": "single", "scale": 3, "depth": 2, "metric": "kl", "value": 9.0}]
    # only mode "from" at scale == switch and the same depth joins
    assert join_quality(sweep, sens, "kl") == [0.5, None, None]
    pts, metric = sweep_points(sweep, sens)
    assert metric == "kl" and pts[0]["quality"] == 0.5


def test_pareto_figure_front_matches_hand_example():
    # latency / kl: (1, .9) (2, .5) (3, .6) (4, .1) -> front = the 1st, 2nd and 4th
    sweep = [{"model": "m", "depth": d, "switch": 2, "batch": 1, "status": "ok", "latency_ms_p50": lat}
             for d, lat in ((2, 1.0), (3, 2.0), (4, 3.0), (5, 4.0))]
    sens = [{"model": "m", "mode": "from", "scale": 2, "depth": d, "metric": "kl", "value": v}
            for d, v in ((2, 0.9), (3, 0.5), (4, 0.6), (5, 0.1))]
    fig = dict(pareto_figures(sweep, sens))["Quality vs latency"]
    front = [t for t in fig.data if (t.name or "").startswith("Pareto front")][0]
    assert list(front.x) == [1.0, 2.0, 2.0, 4.0, 4.0] and list(front.y) == [0.9, 0.9, 0.5, 0.5, 0.1]


def test_pareto_fronts_are_per_execution_path():
    """Eager and graphs+compile rows of the same model/batch are different systems: one front each."""
    sweep = [{"model": "m", "depth": d, "switch": 2, "batch": 1, "status": "ok", "latency_ms_p50": lat,
              "cuda_graphs": fast, "compile": fast}
             for d, lat, fast in ((2, 1.0, False), (4, 2.0, False), (2, 0.5, True), (4, 0.8, True))]
    sens = [{"model": "m", "mode": "from", "scale": 2, "depth": d, "metric": "kl", "value": v}
            for d, v in ((2, 0.9), (4, 0.1))]
    fig = dict(pareto_figures(sweep, sens))["Quality vs latency"]
    fronts = sorted(t.name for t in fig.data if (t.name or "").startswith("Pareto front"))
    assert len(fronts) == 2 and any("graphs+compile" in n for n in fronts) and any("eager" in n for n in fronts)


def test_cli_report_and_bad_input(tmp_path):
    res_dir = write_results(tmp_path / "res")
    res = CliRunner().invoke(app, ["report", str(res_dir), "-o", str(tmp_path / "x.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x.html").stat().st_size > 1_000_000        # plotly.js is inside
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_report_is_a_decision_document(tmp_path):
    """Summary first, then figures; the run metadata collapsed at the end; no empty 'reference' heatmap; CPU
    memory axes use the cache's own bytes (RSS is flat across points)."""
    d = write_results(tmp_path / "res")
    with (d / "sensitivity.jsonl").open("a") as f:
        f.write("\n" + json.dumps({"kind": "sensitivity", "model": "var-tiny", "mode": "reference", "scale": None,
                                   "depth": 4, "metric": "kl", "value": 0.0}) + "\n")
    page = build_report([d], tmp_path / "r.html").read_text()
    body = page[page.index("<body>"):]
    assert body.index("<h2>Summary</h2>") < body.index("Pareto frontiers") < body.index("<details class=\"runs\">")
    assert body.index("<details class=\"runs\">") > body.rindex("plotly-graph-div")
    assert "mode reference" not in body
    from varbench.results import read_rows

    pts, _ = sweep_points(read_rows(d / "sweep.jsonl"), [])
    assert [p["peak_mib"] * 2 ** 20 for p in pts] == [p["kv_bytes"] for p in pts]
