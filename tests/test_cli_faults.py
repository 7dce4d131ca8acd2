"""Bad input and faults through the CLI: one stderr line, the right exit code, no traceback, and no file written
outside the output the user named (the cwd and tmp_path are listed before and after)."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from varbench.cli.app import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def listing(*dirs: Path) -> set[str]:
    return {str(p) for d in dirs for p in d.rglob("*")}


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cwd inside tmp_path: any stray relative write shows up in the listing."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


def invoke_bad(args: list[str], code: int, needle: str, root: Path, allowed: tuple[Path, ...] = (),
               progress: bool = False) -> str:
    """Run ``varbench ARGS``; assert the exit code, one 'error:' line holding ``needle``, no traceback, and
    no new file under ``root`` except inside ``allowed``. ``progress``: a progress line may precede the error."""
    before = listing(root)
    res = runner.invoke(app, args)
    lines = res.stderr.strip().splitlines()[-1:] if progress else res.stderr.strip().splitlines()
    assert res.exit_code == code, (res.exit_code, res.stderr, res.exception)
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    new = {p for p in listing(root) - before if not any(p.startswith(str(a)) for a in allowed)}
    assert not new, new
    return lines[0]


def write_rows(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rows = [{"kind": "sweep", "model": "var-tiny", "weights": "random", "depth": dep, "switch": 2, "batch": 1,
             "select": "isometric", "dtype": "fp32", "device": "cpu", "status": "ok", "latency_ms_p50": 1.0 * dep,
             "images_per_s": 100.0 / dep, "kv_bytes": 10 * dep, "kv_bytes_analytic": 10 * dep,
             "latency_ms_samples": [1.0 * dep] * 5} for dep in (2, 4)]
    (d / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


# ---- report ----------------------------------------------------------------------------------------------------
def test_report_output_is_a_directory(place):
    pytest.importorskip("plotly")
    res = write_rows(place / "res")
    invoke_bad(["report", str(res), "-o", str(place / "res")], 2, "is a directory", place)


def test_report_output_not_writable(place, monkeypatch):
    pytest.importorskip("plotly")
    res = write_rows(place / "res")
    ro = place / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **kw: False if Path(p) == ro else real(p, m, **kw))
    invoke_bad(["report", str(res), "-o", str(ro / "r.html")], 2, "permission denied", place)


def test_report_write_refused_midway_leaves_no_temp_file(place, monkeypatch):
    """The folder looks writable but the write fails (read-only mount, as root): exit 2, no temp file left."""
    pytest.importorskip("plotly")
    from varbench import results

    res = write_rows(place / "res")

    def refuse(fd: int) -> None:
        raise PermissionError(errno.EROFS, "Read-only file system", str(place / "out" / "r.html"))

    monkeypatch.setattr(results.os, "fsync", refuse)
    invoke_bad(["report", str(res), "-o", str(place / "out" / "r.html")], 2, "Read-only file system", place,
               allowed=(place / "out",))
    assert list((place / "out").iterdir()) == []             # the temp file next to the target is gone


def test_report_full_disk_is_exit_3_and_cleans_up(place, monkeypatch):
    pytest.importorskip("plotly")
    from varbench import results

    res = write_rows(place / "res")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.os, "fsync", full)
    invoke_bad(["report", str(res)], 3, "No space left on device", place)
    assert sorted(p.name for p in res.iterdir()) == ["sweep.jsonl"]


@pytest.mark.parametrize("content", [None, "notes.txt"])
def test_report_over_empty_or_unrelated_folder(place, content):
    pytest.importorskip("plotly")
    d = place / "folder"
    d.mkdir()
    if content:
        (d / content).write_text("hello")
    invoke_bad(["report", str(d)], 2, "no result rows", place)


def test_report_missing_folder(place):
    invoke_bad(["report", str(place / "nope")], 2, "is not a results directory", place)


# ---- check -----------------------------------------------------------------------------------------------------
def test_check_update_baseline_into_a_directory(place):
    res = write_rows(place / "res")
    invoke_bad(["check", "--results", str(res), "--update-baseline", "--baseline", str(place)], 2,
               "is a directory", place)


def test_check_baseline_is_a_directory(place):
    res = write_rows(place / "res")
    invoke_bad(["check", "--results", str(res), "--baseline", str(place)], 2, "baseline", place)


# ---- weights files ----------------------------------------------------------------------------------------------
def _bad_files(d: Path) -> dict[str, Path]:
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'PWNED'}",))

    text = d / "five.pth"
    text.write_text("hello")
    torch.save({"x": Evil()}, d / "evil.pth")
    torch.save({"x": torch.zeros(2)}, d / "other.pth")
    (d / "garbage.safetensors").write_bytes(b"\x00" * 64)
    return {"five": text, "evil": d / "evil.pth", "other": d / "other.pth", "st": d / "garbage.safetensors"}


@pytest.mark.parametrize("command", ["sweep", "trace", "sensitivity"])
def test_bad_checkpoints_are_exit_2_in_every_command(place, command):
    files = _bad_files(place)
    needles = {"five": "not a readable torch checkpoint", "evil": "refused", "other": "does not match",
               "st": "not a readable safetensors"}
    for key, f in files.items():
        out = place / f"out-{command}-{key}"
        invoke_bad([command, "--model", "var-tiny", "--device", "cpu", "--ckpt", str(f), "--out", str(out)], 2,
                   needles[key], place, allowed=(place / "PWNED",))
        assert not out.exists()                   # refused before the output folder was made
    assert not (place / "PWNED").exists()         # the pickle never ran


def test_ckpt_is_a_directory(place):
    invoke_bad(["trace", "--model", "var-tiny", "--device", "cpu", "--ckpt", str(place)], 2, "is not a file",
               place)


# ---- defaults that fit the model ---------------------------------------------------------------------------------
def test_default_switch_fits_var_tiny(place):
    res = runner.invoke(app, ["sweep", "--model", "var-tiny", "--depths", "2", "--device", "cpu", "--repeats", "1",
                              "--min-seconds", "0", "--warmup", "0", "--threads", "1", "--out", "s", "--json"])
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [(r["depth"], r["switch"], r["status"]) for r in rows] == [(2, 3, "ok")]


@pytest.mark.parametrize("command", [["sweep", "--depths", "2"], ["trace", "--depth", "2"], ["models"]])
def test_switch_equal_to_scales_is_refused(place, command):
    invoke_bad([*command, "--model", "var-tiny", "--switch", "4", "--device", "cpu"][: None if command[0] != "models"
               else -2], 2, "leaves no scale to the subnet", place)


# ---- one writer per results folder ---------------------------------------------------------------------------
def test_second_writer_exits_2_naming_the_holder(place):
    out = place / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from varbench.results import lock_dir\n"
         f"with lock_dir({str(out)!r}, 'varbench sweep (test holder)'):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = invoke_bad(["sweep", "--model", "var-tiny", "--depths", "2", "--device", "cpu", "--out", str(out)],
                          2, f"pid {holder.pid} (varbench sweep (test holder))", place)
        assert "is being written by" in line
        assert sorted(p.name for p in out.iterdir()) == [".varbench.lock"]      # nothing else was written
    finally:
        holder.kill()
        holder.wait()
    from varbench.results import lock_dir

    with lock_dir(out):                            # released when the holder dies (even by SIGKILL)
        pass


def test_run_suite_twice_traces_once(place):
    suite = place / "t.toml"
    suite.write_text('name = "t"\n[model]\nname = "var-tiny"\nallow_random = true\n'
                     '[trace]\ndepth = 2\nswitch = 2\nbatch = 1\ndtype = "fp32"\ndevice = "cpu"\n'
                     'overhead_repeats = 0\n')
    out = place / "r"
    for _ in range(2):
        res = runner.invoke(app, ["run", str(suite), "--out", str(out)])
        assert res.exit_code == 0, res.stderr
    from varbench.measuring.trace import read_trace

    _, summaries = read_trace(out / "trace")
    assert len(summaries) == 1


# ---- train ---------------------------------------------------------------------------------------------------
TRAIN = ["train", "--model", "var-tiny", "--vae", "random", "--synthetic-size", "64", "--batch", "8",
         "--max-steps", "2", "--val-size", "0", "--device", "cpu"]


def test_train_refuses_to_overwrite_a_checkpoint(place):
    out = place / "run"
    res = runner.invoke(app, [*TRAIN, "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    before = (out / "checkpoint" / "model.safetensors").stat().st_mtime_ns
    invoke_bad([*TRAIN, "--out", str(out)], 2, f"pass --resume {out}", place)
    assert (out / "checkpoint" / "model.safetensors").stat().st_mtime_ns == before


def test_train_unwritable_out(place, monkeypatch):
    import tempfile

    from varbench.cli import common

    def refuse(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(common.tempfile, "mkstemp", refuse)
    invoke_bad([*TRAIN, "--out", str(place / "ro")], 2, "cannot write", place, allowed=(place / "ro",))
    assert tempfile.mkstemp is refuse


def test_train_d30_vqvae_on_small_cpu_refuses_with_estimate(place, monkeypatch):
    from varbench.workflows import budget

    monkeypatch.setattr(budget, "available_bytes", lambda device: 24 * budget.GiB)
    line = invoke_bad(["train", "--model", "var-d30", "--stage", "vqvae", "--device", "cpu", "--out",
                       str(place / "v")], 2, "VQ-VAE training at batch 32 needs about", place)
    assert "24.0 GiB available" in line


@pytest.mark.parametrize("command", [["sweep", "--depths", "30", "--batch", "64"], ["trace", "--batch", "64"]])
def test_d30_inference_on_small_cpu_refuses(place, monkeypatch, command):
    from varbench.workflows import budget

    monkeypatch.setattr(budget, "available_bytes", lambda device: 8 * budget.GiB)
    invoke_bad([*command, "--model", "var-d30", "--device", "cpu", "--out", str(place / "o")], 2,
               "var-d30 at batch 64 needs about", place)


def test_no_memory_check_runs_past_the_refusal(place, monkeypatch):
    """The refusal names the option that overrides it, and the option does override it (the sweep is then
    reached: here it is interrupted, exit 130, instead of the refusal's exit 2)."""
    from varbench.measuring import sweep
    from varbench.workflows import budget

    monkeypatch.setattr(budget, "available_bytes", lambda device: 8 * budget.GiB)
    args = ["sweep", "--model", "var-d30", "--depths", "30", "--batch", "64", "--device", "cpu", "--out",
            str(place / "o")]
    line = invoke_bad(args, 2, "var-d30 at batch 64 needs about", place)
    assert "--no-memory-check" in line

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    invoke_bad([*args, "--no-memory-check"], 130, "interrupted", place, allowed=(place / "o",), progress=True)


def test_ctrl_c_is_one_line_exit_130(place, monkeypatch):
    from varbench.measuring import sweep

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    invoke_bad(["sweep", "--model", "var-tiny", "--depths", "2", "--device", "cpu", "--out", str(place / "o")], 130,
               "interrupted", place, allowed=(place / "o",), progress=True)
