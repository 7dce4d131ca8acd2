"""Reported points (published numbers, not measured here): the TOML loader's validation, the example file, the
hollow trace on the Pareto axes, the method-quality join, and the report's predicted-vs-measured table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("plotly")

from varbench.cli import app  # noqa: E402
from varbench.errors import UsageError  # noqa: E402
from varbench.reporting import reported as rp  # noqa: E402
from varbench.reporting.figures import join_quality, pareto_figures  # noqa: E402
from varbench.reporting.report import build_report  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "suites" / "reported_points.toml"
GOOD = '[[point]]\nmethod = "code"\npaper = "CoDe"\nmodel = "var-d30"\nlatency_ms = 1270.0\npeak_mib = 19943.0\n' \
       'fid = 2.27\nbatch = 64\n'


def _load(tmp_path, text):
    p = tmp_path / "pts.toml"
    p.write_text(text)
    return rp.load_reported(p)


def test_example_file_loads_and_labels():
    pts = rp.load_reported(EXAMPLE)
    assert {p.method for p in pts} >= {"code", "hack", "scalekv", "variant"}
    code = next(p for p in pts if p.method == "code")
    assert (code.latency_ms, code.peak_mib, code.kv_mib, code.fid, code.batch) == (1270.0, 19943.0, 8156.0, 2.27, 64)
    assert all(rp.LABEL in q["label"] for q in rp.plot_points(pts))


def test_good_point(tmp_path):
    (p,) = _load(tmp_path, GOOD)
    assert p.latency_ms == 1270.0 and p.kv_fraction is None and p.batch == 64


@pytest.mark.parametrize("text,match", [
    ("[[point]\nmethod=", "not valid TOML"),
    ("", "no \\[\\[point\\]\\] tables"),
    ("title = 'x'\n", "expected only"),
    ('[[point]]\npaper = "p"\nmodel = "m"\n', "'method' must be a non-empty string"),
    (GOOD + 'speed = 2.9\n', "unknown key"),
    (GOOD + 'kv_fraction = 1.5\n', "out of range"),
    (GOOD.replace("1270.0", '"fast"'), "'latency_ms' must be a number"),
    (GOOD.replace("batch = 64", "batch = 6.4"), "'batch' must be an integer"),
    (GOOD.replace("fid = 2.27", "fid = -1.0"), "out of range"),
    (GOOD.replace("fid = 2.27", "fid = nan"), "out of range"),
])
def test_bad_files_are_usage_errors(tmp_path, text, match):
    with pytest.raises(UsageError, match=match):
        _load(tmp_path, text)


def _results(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"command_line": "test"}))
    sweep = [{"kind": "sweep", "model": "var-tiny", "weights": "w", "depth": dep, "switch": 2, "batch": 1,
              "dtype": "fp32", "device": "cpu", "status": "ok", "method": m, "latency_ms_p50": lat,
              "images_per_s": 1e3 / lat, "kv_bytes": 1000 * dep, "kv_bytes_analytic": 1000 * dep}
             for dep, lat, m in ((2, 3.0, "variant:depth=2,switch=2,select=isometric"), (4, 5.0, "kv-fp8"),
                                 (2, 2.5, "schedule:depths=4/4/2/2,select=isometric"))]
    (d / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sweep))
    base = {"kind": "sensitivity", "model": "var-tiny", "weights": "w", "metric": "fid", "group": None}
    sens = [{**base, "mode": "from", "scale": 2, "depth": 2, "value": 3.0},
            {**base, "mode": "from", "scale": 2, "depth": 4, "value": 9.0},      # must not be kv-fp8's quality
            {**base, "mode": "method", "method": "kv-fp8", "scale": None, "depth": 4, "value": 1.5},
            {**base, "mode": "schedule", "method": "schedule:depths=4/4/2/2,select=isometric", "scale": None,
             "depth": 2, "value": 2.0, "predicted_loss": 0.7, "plan_metric": "fid", "ci_low": 1.8, "ci_high": 2.3,
             "n": 4},
            {**base, "mode": "reference", "scale": None, "depth": 4, "value": 1.0}]
    (d / "sensitivity.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sens))
    return d


def test_method_quality_joins_by_configuration(tmp_path):
    from varbench.results import read_rows
    d = _results(tmp_path / "res")
    sweep = read_rows(d) + [{**read_rows(d)[0], "method": "early-exit:blocks=2,from_scale=2"}]
    q = join_quality(sweep, read_rows(d, "sensitivity.jsonl"), "fid")
    assert q == [3.0, 1.5, 2.0, None]          # early-exit at depth 2 is not VARiant(2, 2): no quality


def test_reported_points_drawn_hollow_on_the_pareto_axes(tmp_path):
    from varbench.results import read_rows
    d = _results(tmp_path / "res")
    pts = rp.plot_points(rp.load_reported(EXAMPLE))
    figs = dict(pareto_figures(read_rows(d), read_rows(d, "sensitivity.jsonl"), pts))
    for title in ("Quality vs latency", "Latency vs memory"):
        tr = [t for t in figs[title].data if t.name == rp.LABEL]
        assert len(tr) == 1 and tr[0].marker.symbol == "circle-open"
        assert "code" in tr[0].text
        # the axis buttons carry the reported trace's x for every option
        for b in figs[title].layout.updatemenus[0].buttons:
            assert len(b.args[0]["x"]) == len(figs[title].data)


def test_cli_report_with_reported_and_plan_table(tmp_path):
    d = _results(tmp_path / "res")
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", str(d), "-o", str(out), "--reported", str(EXAMPLE)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert "Reported points (reported, not measured here)" in page
    assert "Planned schedules: predicted vs measured" in page and "0.7" in page
    bad = tmp_path / "bad.toml"
    bad.write_text("[[point]\n")
    res = CliRunner().invoke(app, ["report", str(d), "-o", str(out), "--reported", str(bad)])
    assert res.exit_code == 2 and "not valid TOML" in res.output and "Traceback" not in res.output


def test_build_report_without_reported_has_no_section(tmp_path):
    page = build_report([_results(tmp_path / "res")], tmp_path / "r.html").read_text()
    assert "Reported points" not in page


def test_reported_points_of_another_model_are_listed_not_drawn():
    pts = rp.load_reported(EXAMPLE)
    assert {p["method"] for p in rp.plot_points(pts, ["var-d30"])} >= {"code", "variant"}
    assert rp.plot_points(pts, ["var-toy"]) == []             # paper numbers of var-d30 stay off var-toy's axes
    assert all(p["model"].split()[0] == "var-d30" for p in rp.plot_points(pts, ["var-d30"]))
    page = rp.reported_html(pts, [{"model": "var-toy"}], [])
    assert "Listed only, not drawn" in page and "var-toy" in page
