"""TOML suites: the shipped ones load and map onto the library configs; malformed ones name file, key, problem."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from varbench.cli import app
from varbench.errors import UsageError
from varbench.workflows.suites import build_config, load_suite, suite_configs

SUITES = Path(__file__).resolve().parent.parent / "suites"

GOOD = """
name = "t"
[model]
name = "var-tiny"
allow_random = true
[sweep]
depths = [2, 4]
batches = [1]
switches = [2]
dtype = "fp32"
device = "cpu"
[check]
ratios = [["full", "d2"]]
speed_factor = 1.5
[check.tolerance]
kv_bytes = 0.02
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "suite.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["ci", "quick", "paper", "sensitivity", "fast"])
def test_shipped_suites_load(name):
    s = load_suite(SUITES / f"{name}.toml")
    assert s.name == name


def test_paper_suite_is_the_paper_protocol():
    s = load_suite(SUITES / "paper.toml")
    assert s.model["name"] == "var-d30"
    assert s.sweep["batches"] == [64] and s.sweep["switches"] == [6]
    assert s.sweep["depths"] == [2, 8, 16, 30] and s.sweep["dtype"] == "fp16"


def test_fast_suite_is_the_readme_fast_path():
    from varbench.measuring.sweep import SweepConfig
    s = load_suite(SUITES / "fast.toml")
    sw = build_config(SweepConfig, {**s._model_fields(), **s.sweep}, s.path, "sweep")   # no GPU needed here
    assert sw.cuda_graphs and sw.compile and list(sw.depths) == [2, 30] and list(sw.batches) == [1, 16, 64]


def test_ci_suite_maps_onto_library_configs():
    cfgs = suite_configs(load_suite(SUITES / "ci.toml"))
    sw = cfgs["sweep"]
    assert (sw.model, list(sw.depths), list(sw.batches), sw.dtype, sw.device) == ("var-tiny", [2, 4], [1, 2],
                                                                                    "fp32", "cpu")
    assert sw.threads == 1                    # CPU timings of the gate are single-threaded (see ci.toml)
    assert [c.mode for c in cfgs["sensitivity"]] == ["from"]
    assert cfgs["trace"].depth == 2 and cfgs["trace"].switch == 2


def test_tolerances_from_check_table(tmp_path):
    t = load_suite(write(tmp_path, GOOD)).tolerances()
    assert t.speed_factor == 1.5 and t.ratios == [("full", "d2")] and t.tolerance == {"kv_bytes": 0.02}


@pytest.mark.parametrize("text, key, problem", [
    (GOOD.replace("switches = [2]", "switches = [2]\nbogus = 1"), "sweep.bogus", "unknown key"),
    (GOOD.replace('dtype = "fp32"', "dtype = 32"), "sweep.dtype", "must be a string"),
    (GOOD.replace("depths = [2, 4]", "depths = [2, 9]"), "sweep.depths", "outside 2..4"),
    (GOOD.replace("depths = [2, 4]", "depths = [1]"), "sweep.depths", "outside 2..4"),
    (GOOD.replace("depths = [2, 4]", 'depths = "2,4"'), "sweep.depths", "list of integers"),
    (GOOD.replace("switches = [2]", "switches = [7]"), "sweep.switches", "outside 0..4"),
    (GOOD.replace('device = "cpu"', 'device = "tpu"'), "sweep.device", "not one of"),
    (GOOD.replace("batches = [1]", "batches = [true]"), "sweep.batches", "list of integers"),
    (GOOD.replace("batches = [1]", "batches = [1]\nthreads = 0"), "sweep.threads", "must be positive"),
    (GOOD.replace('name = "var-tiny"', 'name = "var-d999"'), "model.name", "unknown model"),
    (GOOD.replace('[["full", "d2"]]', '[["full", "d9"]]'), "check.ratios", "d9"),
    (GOOD + "\n[extra]\nx = 1\n", "extra", "unknown key"),
    (GOOD.replace("[sweep]", "[sweep\n"), "", "not valid TOML"),
])
def test_malformed_suite_names_file_key_problem(tmp_path, text, key, problem):
    p = write(tmp_path, text)
    with pytest.raises(UsageError) as e:
        load_suite(p)
    msg = str(e.value)
    assert str(p) in msg and key in msg and problem in msg, msg


def test_cli_run_malformed_suite_exit_2_one_line(tmp_path):
    p = write(tmp_path, GOOD.replace("depths = [2, 4]", "depths = [2, 40]"))
    res = CliRunner().invoke(app, ["run", str(p), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "sweep.depths" in res.output and str(p) in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["check", "--suite", str(tmp_path / "absent.toml"), "--baseline", "x.json"])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_build_config_catches_renamed_fields(tmp_path):
    @dataclasses.dataclass
    class Renamed:
        model: str = "m"
        depth_list: tuple = (2,)

    with pytest.raises(UsageError, match=r"sweep\.depths.*Renamed has no matching field"):
        build_config(Renamed, {"model": "m", "depths": [2]}, tmp_path / "s.toml", "sweep")
    cfg = build_config(Renamed, {"model": "m"}, tmp_path / "s.toml", "sweep")
    assert cfg.depth_list == (2,)
