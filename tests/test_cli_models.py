"""`varbench models` and the CLI error contract: JSON on stdout, one-line errors with exit codes on stderr."""
import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from model import spec
from model.checkpoint import CheckpointError
from varbench.measuring import analytic
from varbench import target
from varbench.cli import common as cli_common
from varbench.cli.app import VarbenchGroup, app, register_commands
from varbench.errors import EnvironmentUnavailable, RegressionFailed, UsageError

runner = CliRunner()


def test_registry_json_lists_every_spec():
    res = runner.invoke(app, ["models", "--json"])
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["name"] for r in rows] == list(spec.SPECS)
    d30 = next(r for r in rows if r["name"] == "var-d30")
    assert d30["params"] == 2_010_020_356 and d30["kv_bytes_per_image"] == 313_344_000
    assert d30["tokens"] == 680 and d30["width"] == 1920


def test_registry_table_goes_to_stderr():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0
    assert res.stdout == "" and "var-d30" in res.stderr


def test_model_rows_default_depths_and_values():
    res = runner.invoke(app, ["models", "--model", "var-d30", "--json"])
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["depth"] for r in rows] == [2, 4, 8, 16, 30]
    assert rows == json.loads(json.dumps(analytic.summary_rows(spec.SPECS["var-d30"], [2, 4, 8, 16, 30], 6)))
    by_d = {r["depth"]: r for r in rows}
    assert by_d[16]["kv_reduction_kept"] == pytest.approx(0.404, abs=1e-3)
    assert by_d[2]["kv_reduction"] == pytest.approx(0.866, abs=1e-3)


def test_default_depths_kept_below_model_depth():
    res = runner.invoke(app, ["models", "-m", "var-tiny", "--json", "--select", "nested", "--switch", "2"])
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["depth"] for r in rows] == [2, 4]
    assert all(r["select"] == "nested" and r["switch"] == 2 for r in rows)


@pytest.mark.parametrize("args,needle", [
    (["--model", "var-d30", "--depths", "0"], "2..30"),
    (["--model", "var-d30", "--depths", "99"], "2..30"),
    (["--model", "var-d30", "--depths", "4,,8"], "--depths"),
    (["--model", "var-d30", "--depths", "four"], "'four'"),
    (["--model", "var-d30", "--switch", "42"], "0..9"),
    (["--model", "var-d30", "--switch", "10"], "leaves no scale to the subnet"),
    (["--model", "var-d30", "--switch", "x"], "--switch"),
    (["--model", "var-d30", "--select", "random"], "isometric"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--depths", "4"], "--model"),
    (["--no-such-flag"], "--no-such-flag"),
])
def test_bad_input_exits_2_with_one_line(args, needle):
    res = runner.invoke(app, ["models", *args])
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("exc,code", [(UsageError("bad [1, 2]"), 2), (EnvironmentUnavailable("no gpu"), 3),
                                      (RegressionFailed("slower"), 1), (KeyboardInterrupt(), 130),
                                      (CheckpointError("w.pth: 3 missing keys"), 2)])
def test_error_classes_map_to_exit_codes(exc, code):
    probe = typer.Typer(cls=VarbenchGroup)
    probe.callback()(lambda: None)

    @probe.command("boom")
    def boom() -> None:
        raise exc

    res = runner.invoke(probe, ["boom"])
    assert res.exit_code == code
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    if isinstance(exc, UsageError):
        assert lines[0] == "error: bad [1, 2]"      # brackets survive (no rich markup)


def test_unknown_command_exits_2():
    res = runner.invoke(app, ["frobnicate"])
    assert res.exit_code == 2 and res.stderr.startswith("error: No such command")


def test_registration_finds_models_command():
    fresh = typer.Typer()
    assert "models" in register_commands(fresh)


def test_python_m_varbench_json_is_valid_and_exit_codes(tmp_path):
    out = subprocess.run([sys.executable, "-m", "varbench", "models", "-m", "var-tiny", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert rows[0]["model"] == "var-tiny" and rows[0]["switch"] == 3
    bad = subprocess.run([sys.executable, "-m", "varbench", "models", "-m", "var-d30", "--depths", "99"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1


def test_shared_option_checks(tmp_path):
    """The library's checks (varbench.target) raise the domain errors the CLI turns into exit 2 / 3."""
    assert target.parse_int_list("2, 4,8", "--batch") == [2, 4, 8]
    for text in ("", "2,", "0", "-1", "2.5"):
        with pytest.raises(UsageError, match="--batch"):
            target.parse_int_list(text, "--batch")
    s = spec.SPECS["var-tiny"]
    assert target.resolve_depths(s, "4,2,2") == [4, 2]
    assert target.resolve_depths(s, None) == [2, 4]
    assert target.resolve_depths(s, None, with_full=False) == [2]
    with pytest.raises(UsageError, match="2..4"):
        target.resolve_depths(s, "1")
    assert target.check_switch(s, 3) == 3
    with pytest.raises(UsageError, match="no scale to the subnet"):
        target.check_switch(s, 4)                 # S: a "depth 2" row would be the full network
    assert target.check_switch(s, None) == 3 and target.check_switch(spec.SPECS["var-toy"], None) == 4 and target.check_switch(spec.SPECS["var-d30"], None) == 6
    with pytest.raises(UsageError):
        target.check_switch(s, 5)
    import torch

    assert target.check_dtype("BF16") == "bf16" and target.torch_dtype("bf16") is torch.bfloat16
    assert target.resolve_dtype(None, "cpu") == "fp32" and target.resolve_dtype(None, "cuda:1") == "bf16"
    with pytest.raises(UsageError, match="bf16"):
        target.check_dtype("int8")
    assert target.resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:0"):
            with pytest.raises(EnvironmentUnavailable):
                target.resolve_device(name)
        assert target.resolve_device("auto") == "cpu" and target.resolve_device("auto", local_rank=1) == "cpu"
    for name in ("tpu", "cuda:x", "cuda:"):
        with pytest.raises(UsageError):
            target.resolve_device(name)
    out = cli_common.ensure_out_dir(tmp_path / "a" / "b")
    assert out.is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        cli_common.ensure_out_dir(tmp_path / "file")


def test_to_json_is_strict():
    import math

    import numpy as np

    text = cli_common.to_json({"a": math.nan, "b": np.float32(1.5), "c": (1, 2), "p": cli_common.Path("/x")})
    assert json.loads(text) == {"a": None, "b": 1.5, "c": [1, 2], "p": "/x"}


def test_a_bug_is_one_line_exit_1_not_a_traceback():
    """A bug (plain ValueError) is not mistaken for bad input (exit 1, not 2) and is named in one line; the
    traceback is only in the log, for --verbose."""
    probe = typer.Typer(cls=VarbenchGroup)
    probe.callback()(lambda: None)

    @probe.command("bug")
    def bug() -> None:
        raise ValueError("a real bug")

    res = runner.invoke(probe, ["bug"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    lines = res.stderr.strip().splitlines()
    assert lines == ["error: internal error: ValueError: a real bug (rerun with --verbose for the traceback)"]
