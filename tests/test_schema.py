"""The row schema is what writers write and readers read: real rows carry exactly its fields, the gate and the
report take units and directions from it, and suites map onto the config dataclasses with no copied key list."""
from __future__ import annotations

import dataclasses
import glob
import sys
import tomllib
from pathlib import Path

import pytest

from tests import fake_pynvml
from varbench import results, schema
from varbench.errors import UsageError
from varbench.gating import regress
from varbench.measuring import analytic, memory
from varbench.measuring.sweep import SweepConfig, run_sweep
from varbench.measuring.trace import TraceConfig, run_trace
from varbench.quality import sensitivity as sens
from varbench.reporting.report import unit_of
from varbench.schema import ROW_KINDS, SWEEP, Field
from varbench.workflows import suites

ROOT = Path(__file__).resolve().parent.parent
SUITES = sorted(p for p in (ROOT / "suites").glob("*.toml")
                if p.name != "reported_points.toml")      # published points for report --reported, not a suite


def assert_declared(row: dict, kind: str) -> None:
    """Every field of the row is declared for its kind, and every required field is there."""
    k = ROW_KINDS[kind]
    assert row["kind"] == kind
    assert not set(row) - set(k.names), f"{kind} row fields missing from varbench.schema: {set(row) - set(k.names)}"
    assert not set(k.required) - set(row), f"{kind} row lacks required fields {set(k.required) - set(row)}"


# ---- rows the writers really produce ------------------------------------------------------------------------------
def test_real_sweep_rows_have_exactly_the_schema_fields(tmp_path, monkeypatch):
    monkeypatch.setenv("VARBENCH_FAULT", "error:depth=4")            # one ok row, one failed row
    cfg = SweepConfig(model="var-tiny", depths=[2, 4], batches=[1], switches=[2], dtype="fp32", device="cpu",
                      repeats=1, min_seconds=0.0, warmup=0, threads=1)
    ok, failed = run_sweep(cfg, tmp_path, progress=False)
    assert ok["status"] == "ok" and failed["status"] == "error"
    for row in (ok, failed):
        assert_declared(row, "sweep")
        assert tuple(row[f] for f in SWEEP.key_fields) == schema.key_of(row, SWEEP)
    assert results.read_rows(tmp_path / SWEEP.rows_file) == [ok, failed]
    assert results.read_manifest(tmp_path)["rows_file"] == SWEEP.rows_file


def test_old_sweep_rows_take_the_key_defaults():
    new = {"model": "m", "weights": "random", "depth": 2, "switch": 2, "select": "isometric", "batch": 1,
           "dtype": "fp32", "device": "cpu", "keep_skipped": False, "cuda_graphs": False, "compile": False}
    old = {k: v for k, v in new.items() if k not in SWEEP.key_defaults}
    assert schema.key_of(old, SWEEP) == schema.key_of(new, SWEEP)
    assert schema.key_of({**new, "compile": True}, SWEEP) != schema.key_of(new, SWEEP)
    assert SWEEP.field("plan").optional and "plan" not in SWEEP.key_fields         # rows before it lack it


def test_trace_rows_and_timeline_are_declared(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml.make(base_used=0, step=1024))
    monkeypatch.setattr(memory, "_NO_NVML_CPU", memory.Nvml())       # timeline samples on CPU, via a fake NVML
    run_trace(TraceConfig(model="var-tiny", depth=2, switch=2, batch=1, dtype="fp32", device="cpu",
                          overhead_repeats=1), tmp_path)
    seen = set()
    for name in (schema.TRACE_FILE, schema.TIMELINE_FILE):
        for row in results.read_rows(tmp_path / name):
            assert row["kind"] in schema.kinds_in(name)
            assert_declared(row, row["kind"])
            seen.add(row["kind"])
    assert seen == {"trace_scale", "trace", "trace_sample", "trace_mark"}


def test_sensitivity_and_models_rows_are_declared(tmp_path):
    from model import spec as spec_mod

    rows = sens.run_sensitivity(sens.SensitivityConfig(model="var-tiny", depths=[2], scales=[1], mode="from",
                                                       samples=2, batch=2, allow_random=True, device="cpu"),
                                tmp_path)
    assert rows and results.read_rows(tmp_path / schema.SENSITIVITY.rows_file)
    for row in rows:
        assert_declared(row, "sensitivity")
    for row in analytic.summary_rows(spec_mod.get("var-tiny"), [2, 4], 2):
        assert_declared(row, "models")


def test_committed_rows_are_declared():
    """Rows written by earlier versions (results/) are still described: a reader can resume or report them."""
    checked = 0
    for path in glob.glob(str(ROOT / "results" / "**" / "*.jsonl"), recursive=True):
        for row in results.read_rows(path):
            kind = ROW_KINDS.get(row.get("kind"))
            if kind is not None and Path(path).name == kind.rows_file:
                assert not set(row) - set(kind.names), (path, set(row) - set(kind.names))
                checked += 1
    assert checked > 0


def test_every_quality_metric_has_a_unit_and_direction():
    for choice in sens.METRICS:
        for m in sens.metric_names(choice):
            assert schema.unit(m) and schema.direction(m) in ("higher", "lower"), m


def test_same_field_same_unit_and_direction_in_every_kind():
    seen: dict[str, tuple] = {}
    for k in ROW_KINDS.values():
        for f in k.fields:
            assert seen.setdefault(f.name, (f.unit, f.direction)) == (f.unit, f.direction), (k.name, f.name)


# ---- readers take units and directions from the schema -------------------------------------------------------------
def test_gate_metrics_carry_the_schema_unit_and_direction(tmp_path):
    from tests.test_regress import write_results

    d = write_results(tmp_path / "r")
    metrics = regress.metrics_from_rows(results.read_rows(d) + results.read_rows(d, "sensitivity.jsonl"))
    families = {m.family for m in metrics.values()}
    assert families == {"analytic", "memory", "speed", "ratio", "quality"}
    for m in metrics.values():
        assert (m.unit, m.better) == (schema.unit(m.field), schema.direction(m.field)), m
    for f in (*regress.ANALYTIC_FIELDS, *regress.MEMORY_FIELDS, *regress.SPEED_FIELDS, *regress.MODELS_FIELDS,
              *(f for f, _ in regress.TRACE_FIELDS), regress.RATIO_METRIC):
        assert schema.unit(f) and schema.direction(f), f


def test_gate_and_report_follow_a_schema_change(monkeypatch):
    """Flip one metric's declaration: every reader follows, none keeps a table of its own."""
    monkeypatch.setitem(schema.METRICS, "kl", Field("kl", "bits", "higher"))
    row = {"kind": "sensitivity", "model": "var-tiny", "mode": "from", "scale": 1, "depth": 2, "metric": "kl",
           "value": 0.5}
    (m,) = regress.metrics_from_rows([row]).values()
    assert (m.unit, m.better) == ("bits", "higher")
    assert unit_of("kl") == "bits"
    pytest.importorskip("plotly")           # the figures need plotly (absent on the GPU machine)
    from varbench.reporting import figures
    assert figures.metric_unit("kl") == "bits" and figures.higher_is_better("kl")


def test_report_headers_show_the_schema_units():
    for k in ROW_KINDS.values():
        for f in k.fields:
            assert unit_of(f.name) == (f.unit or "—"), f.name
    assert unit_of("some_new_ms") == "ms"                          # undeclared fields: the naming convention


# ---- suites map onto the config dataclasses -----------------------------------------------------------------------
@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_shipped_suite_keys_are_config_fields(path):
    """Every key of a shipped suite is a field of its table's dataclass (or a documented rename / extra key):
    renaming e.g. SweepConfig.batches without the suites following fails here."""
    raw = tomllib.loads(path.read_text())
    for table, values in raw.items():
        if not isinstance(values, dict):
            assert table in suites.EXTRA_KEYS[""]
            continue
        for key in values:
            if table == "model":
                field = suites.RENAMES.get((table, key), key)
                assert field in suites.MODEL_FIELDS
                for part in suites.PARTS:
                    assert field in {f.name for f in dataclasses.fields(suites.config_class(part))}, (part, field)
            elif key not in suites.EXTRA_KEYS.get(table, {}):
                assert key in {f.name for f in dataclasses.fields(suites.config_class(table))}, (table, key)


def test_a_renamed_config_field_breaks_the_suites(monkeypatch):
    fields = [("batch_sizes" if f.name == "batches" else f.name, f.type,
               dataclasses.field(default=f.default, default_factory=f.default_factory))   # new Field objects:
              for f in dataclasses.fields(SweepConfig)]                                    # make_dataclass renames them
    renamed = dataclasses.make_dataclass("SweepConfig", fields, namespace={"__module__": SweepConfig.__module__})
    real = suites.config_class
    monkeypatch.setattr(suites, "config_class", lambda t: renamed if t == "sweep" else real(t))
    with pytest.raises(UsageError, match=r"ci\.toml: sweep\.batches: unknown key"):
        suites.load_suite(ROOT / "suites" / "ci.toml")


def test_suite_keys_and_types_come_from_the_dataclass(tmp_path):
    keys = suites.table_keys("sweep")
    assert set(keys) == {f.name for f in dataclasses.fields(SweepConfig)} - set(suites.MODEL_FIELDS)
    assert set(suites.table_keys("check")) == {f.name for f in dataclasses.fields(regress.Tolerances)}
    p = tmp_path / "s.toml"
    base = '[model]\nname = "var-tiny"\n[sweep]\ndepths = [2]\n'
    p.write_text(base + "timeout_s = 30\nnvml_pass = false\n")       # fields no hand-written table listed
    cfg = suites.load_suite(p).sweep_config()
    assert cfg.timeout_s == 30.0 and isinstance(cfg.timeout_s, float) and cfg.nvml_pass is False
    for extra, key, problem in (("repeats = 1.5", "sweep.repeats", "must be an integer"),
                                ("batchez = [1]", "sweep.batchez", "unknown key"),
                                ("model = \"var-toy\"", "sweep.model", "unknown key"),
                                ("depths = []", "sweep.depths", "must not be empty")):
        p.write_text(base.replace("depths = [2]\n", "") + extra + "\n")
        with pytest.raises(UsageError) as e:
            suites.load_suite(p)
        assert str(p) in str(e.value) and key in str(e.value) and problem in str(e.value), str(e.value)


@pytest.mark.parametrize("table", ["model", "sweep", "sensitivity", "trace", "check"])
def test_unknown_key_in_any_table_fails(tmp_path, table):
    text = '[model]\nname = "var-tiny"\n' + (f"[{table}]\n" if table != "model" else "") + "bogus = 1\n"
    p = tmp_path / "s.toml"
    p.write_text(text)
    with pytest.raises(UsageError, match=rf"{table}\.bogus: unknown key"):
        suites.load_suite(p)
