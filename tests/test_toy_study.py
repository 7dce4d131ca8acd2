"""scripts/toy_study.py: the whole toy study at smoke size on CPU (rows, resume, pack, report) and its arithmetic."""
from __future__ import annotations

import importlib.util
import json
import sys
import tarfile
from pathlib import Path

import pytest

from varbench import results
from varbench.schema import TOY_STUDY
from varbench.workflows import toy_study_plan as plan_lib

ROOT = Path(__file__).resolve().parents[1]
SMALL = "var-toy-test"


@pytest.fixture(scope="module")
def ts():
    spec = importlib.util.spec_from_file_location("toy_study", ROOT / "scripts" / "toy_study.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["toy_study"] = mod                  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("toy_study", None)


@pytest.fixture(scope="module", autouse=True)
def small_toy():
    """A 7-block, width-32 spec with var-toy's scales and VQ-VAE (the shipped VAE loads): d2/d4/d6 exist, a
    training step costs a tenth of var-toy's."""
    from model import spec as spec_mod

    small = spec_mod.var_spec(7, name=SMALL, width=32, heads=2, patch_nums=spec_mod.SPECS["var-toy"].patch_nums,
                              vae=spec_mod.TOY_VAE, num_classes=10, default_switch=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(spec_mod.SPECS, SMALL, small)
        yield


def tiny(ts, out: Path, **kw):
    cfg = ts.StudyConfig(out=out, model=SMALL, strategies=("progressive", "fixed-p1.0"), seeds=(0,), device="cpu",
                         pack=out.parent / "pack", keep=("progressive-s0",))
    cfg = ts.smoke_config(cfg)
    import dataclasses
    return dataclasses.replace(cfg, pretrain_steps=2, finetune_steps=2, pretrain_size=16, finetune_size=16,
                               val_size=8, samples=4, eval_batch=4, **kw)


@pytest.fixture(scope="module")
def study(ts, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "toy-study"
    cfg = tiny(ts, out)
    return cfg, ts.run_study(cfg, "all")


def test_smoke_writes_declared_rows_for_every_run_and_schedule(ts, study):
    cfg, summary = study
    assert summary["done"] == {"pretrain": True, "finetune": True, "eval": True, "asymmetry": True, "report": True}
    rows = results.read_rows(cfg.out / TOY_STUDY.rows_file)
    for row in rows:
        assert set(row) <= set(TOY_STUDY.names), set(row) - set(TOY_STUDY.names)
        assert set(TOY_STUDY.required) <= set(row)
    keys = {(r["run"], r["schedule"], r["metric"]) for r in rows}
    for run in ("pretrain", "progressive-s0", "fixed-p1.0-s0"):
        assert {(run, "full", "toy_acc"), (run, "full", "toy_fd"), (run, "full", "kl_pretrained")} <= keys
        for d in (2, 4, 6):
            assert {(run, f"d{d}", m) for m in ("toy_acc", "toy_fd", "kl", "token_agreement", "kl_pretrained")} <= keys
    acc = [r for r in rows if r["metric"] == "toy_acc"]
    assert all(r["ci_method"] == "wilson" and r["n"] == 4 for r in acc)
    assert all(r["kl_kind"] == "guided" for r in rows if r["metric"] == "kl")
    assert len(rows) == len({(r["run"], r["schedule"], r["metric"]) for r in rows})       # no duplicates
    drift = {(r["run"], r["schedule"]): r for r in rows if r["metric"] == "kl_pretrained"}
    assert drift[("pretrain", "full")]["value"] == pytest.approx(0.0, abs=1e-9)      # itself: no drift
    assert drift[("pretrain", "d2")]["value"] > 0 and drift[("fixed-p1.0-s0", "full")]["value"] > 0
    prov = json.loads((cfg.out / "pretrain" / "provenance.json").read_text())
    assert prov["steps"] == 2 and prov["seed"] == 0 and prov["losses"] and "git_commit" in prov["environment"]
    toml = (cfg.out / "finetune" / "progressive-s0" / "train.toml").read_text()
    assert 'strategy = "progressive"' in toml and "schedule_steps = 2" in toml


def test_asymmetry_matrices_cover_every_scale_and_depth_of_the_kept_run(ts, study):
    """The asymmetry stage: single and from matrices of the kept supernet at every scale x d2/d4/d6, intervals."""
    cfg, _ = study
    for mode in ("single", "from"):
        rows = results.read_rows(cfg.out / "asymmetry" / mode / "sensitivity.jsonl")
        cells = {(r["scale"], r["depth"]) for r in rows if r["mode"] == mode and r["metric"] == "kl"}
        assert cells == {(s, d) for s in range(7) for d in (2, 4, 6)}, (mode, sorted(cells))
        assert all(r["n"] == cfg.asymmetry_samples and r["ci_low"] <= r["value"] <= r["ci_high"]
                   for r in rows if r["mode"] == mode and r["metric"] in ("kl", "toy_acc"))
        assert len({r["weights"] for r in rows}) == 1


def test_rerun_does_no_work(ts, study, monkeypatch):
    cfg, _ = study
    before = (cfg.out / TOY_STUDY.rows_file).read_text()

    def boom(*a, **k):
        raise AssertionError("a finished unit ran again")

    monkeypatch.setattr(ts, "train_run", boom)
    monkeypatch.setattr(ts, "evaluate_run", boom)
    summary = ts.run_study(cfg, "all")
    assert all(summary["done"].values())
    assert (cfg.out / TOY_STUDY.rows_file).read_text() == before


def test_report_table_and_pareto_points(study):
    cfg, _ = study
    data = json.loads((cfg.out / "pareto.json").read_text())
    assert {p["run"] for p in data["points"]} == {"pretrain", "progressive-s0", "fixed-p1.0-s0"}
    assert all(p["subnet_n"] == 12 for p in data["points"])          # d2+d4+d6 pooled
    table = (cfg.out / "table.md").read_text()
    assert "| progressive | 1 |" in table and "| fixed-p1.0 | 1 |" in table and "Pretrained full network" in table
    assert "not enough runs" in table                                 # one fixed ratio: no frontier


def test_figure_only_when_asked(ts, study):
    import dataclasses
    cfg, _ = study
    assert not (cfg.out / "pareto.html").exists()
    pytest.importorskip("plotly")
    ts.stage_report(dataclasses.replace(cfg, figure=True))
    assert "progressive-s0" in (cfg.out / "pareto.html").read_text()
    (cfg.out / "pareto.html").unlink()


def test_pack_holds_rows_and_pretrained_weights_only(study):
    cfg, _ = study
    names = tarfile.open(cfg.pack / "toy_study.tar.gz").getnames()
    assert "toy-study/toy_study.jsonl" in names and "toy-study/pretrain/var.safetensors" in names
    assert not [n for n in names if "/checkpoint/" in n or n.endswith(("optim.pt", "reference.pt"))]
    assert not [n for n in names if n.startswith("toy-study/finetune/") and n.endswith(".safetensors")]
    assert (cfg.pack / "var-progressive-s0.safetensors").exists()


def test_ship_writes_weights_and_provenance(ts, study, tmp_path):
    cfg, _ = study
    dest = tmp_path / "ship"
    ts.run_study(cfg, "ship", ("progressive-s0", dest, cfg.pack / "var-progressive-s0.safetensors"))
    prov = json.loads((dest / "provenance.json").read_text())
    assert (dest / "var.safetensors").stat().st_size == prov["files"]["var.safetensors"] > 0
    assert prov["pretrain"]["steps"] == 2 and prov["seed"] == 0
    assert 'strategy = "progressive"' in prov["var"]["train_toml"]
    assert {q["run"] for q in prov["quality"]} == {"pretrain", "progressive-s0"}


def test_pretrain_minutes_sizes_the_run_from_a_probe(ts, tmp_path):
    cfg = tiny(ts, tmp_path / "s", pretrain_minutes=0.01)
    assert ts.stage_pretrain(cfg, None)
    probe = json.loads((tmp_path / "s" / "probe.json").read_text())
    prov = json.loads((tmp_path / "s" / "pretrain" / "provenance.json").read_text())
    assert prov["steps"] == ts.steps_for_minutes(0.01, probe["images_per_s"], cfg.pretrain_batch)
    assert not (tmp_path / "s" / "probe").exists()
    assert ts.steps_for_minutes(5, 4000, 512) == 2300 and ts.steps_for_minutes(0.01, 100, 8) == 7


def test_the_unpacked_pack_resumes_on_a_fresh_machine(ts, study, tmp_path, monkeypatch):
    """The device workflow: what comes back (the tarball) carried into the next call is enough to skip every
    finished unit, though the fine-tuned weights and optimizer states stayed behind."""
    import dataclasses

    cfg, _ = study
    with tarfile.open(cfg.pack / "toy_study.tar.gz") as tar:
        tar.extractall(tmp_path)
    fresh = dataclasses.replace(cfg, out=tmp_path / "toy-study", pack=None)

    def boom(*a, **k):
        raise AssertionError("a finished unit ran again")

    monkeypatch.setattr(ts, "train_run", boom)
    monkeypatch.setattr(ts, "evaluate_run", boom)
    assert all(ts.run_study(fresh, "all")["done"].values())
    assert (fresh.out / "table.md").read_text() == (cfg.out / "table.md").read_text()


def test_another_finetune_budget_is_not_taken_for_done(ts, study):
    import dataclasses

    cfg, _ = study
    other = dataclasses.replace(cfg, finetune_steps=3)
    assert ts.evaluated(other, "pretrain") and not ts.evaluated(other, "progressive-s0")
    assert ts.evaluated(cfg, "progressive-s0")


def test_max_minutes_starts_nothing_that_cannot_finish(ts, tmp_path):
    cfg = tiny(ts, tmp_path / "s", max_minutes=1e-4)
    summary = ts.run_study(cfg, "all")
    assert summary["done"]["pretrain"] is False and summary["done"]["finetune"] is False
    assert not (tmp_path / "s" / "pretrain" / "config.json").exists()        # no training was started


def test_a_training_past_the_deadline_stops_and_a_rerun_finishes(ts, tmp_path):
    import time

    cfg = tiny(ts, tmp_path / "s")
    fields = ts.pretrain_config(cfg, 2)
    with pytest.raises(ts.OutOfTime):
        ts.train_run(fields, deadline=time.time() - 1)
    assert ts.train_run(fields)["step"] == 2


def test_frontier_gap_interpolates_between_fixed_ratios(ts):
    means = {
        "fixed-p0.1": {"strategy": "fixed-p0.1", "seeds": 3, "full_acc": 0.9, "subnet_acc": 0.5,
                       "full_acc_se": 0.01, "subnet_acc_se": 0.01},
        "fixed-p1.0": {"strategy": "fixed-p1.0", "seeds": 3, "full_acc": 0.7, "subnet_acc": 0.7,
                       "full_acc_se": 0.01, "subnet_acc_se": 0.01},
        "progressive": {"strategy": "progressive", "seeds": 3, "full_acc": 0.85, "subnet_acc": 0.65,
                        "full_acc_se": 0.005, "subnet_acc_se": 0.005},
    }
    g = ts.frontier_gap(means, "progressive")
    assert g["frontier_y"] == pytest.approx(0.55)            # a quarter of the way from 0.9 to 0.7
    assert g["gap"] == pytest.approx(0.10) and g["verdict"] == "beyond the frontier"
    assert g["gap_low"] < 0.10 < g["gap_high"]
    means["progressive"]["subnet_acc"] = 0.552
    assert ts.frontier_gap(means, "progressive")["verdict"] == "on the frontier (not separable)"
    means["progressive"]["subnet_acc"] = 0.40
    assert ts.frontier_gap(means, "progressive")["verdict"] == "short of the frontier"


def test_a_dominated_fixed_ratio_is_not_on_the_frontier(ts):
    """The H200 study's means: fixed p = 0.1 (0.863, 0.494) is below p = 0.5 (0.871, 0.560) on both axes, so the
    frontier runs p = 1.0 -> p = 0.5; through p = 0.1 it dipped and put sandwich +0.092 beyond it."""
    def m(name, full, sub):
        return {"strategy": name, "seeds": 3, "full_acc": full, "subnet_acc": sub, "full_acc_se": 0.01,
                "subnet_acc_se": 0.005}
    means = {"fixed-p0.1": m("fixed-p0.1", 0.863, 0.494), "fixed-p0.5": m("fixed-p0.5", 0.871, 0.560),
             "fixed-p1.0": m("fixed-p1.0", 0.819, 0.586), "sandwich": m("sandwich", 0.863, 0.585)}
    from varbench.reporting.strategies import pareto_front
    fixed = [v for k, v in means.items() if k.startswith("fixed-")]
    assert [p["strategy"] for p in pareto_front(fixed, "full_acc", "subnet_acc")] == [
        "fixed-p1.0", "fixed-p0.5"]
    g = ts.frontier_gap(means, "sandwich")
    assert g["between"] == ["fixed-p1.0", "fixed-p0.5"]
    assert g["frontier_y"] == pytest.approx(0.586 - 0.026 * 44 / 52) and g["gap"] == pytest.approx(0.585 - g["frontier_y"])
    swapped = ts.frontier_gap(means, "sandwich", "subnet_acc", "full_acc")      # the same front, other axis
    assert swapped["between"] == ["fixed-p0.5", "fixed-p1.0"]


def test_phases_scale_to_the_budget_and_budgets_are_equal(ts, tmp_path):
    cfg = ts.StudyConfig(out=tmp_path, finetune_steps=500, finetune_batch=256, finetune_size=50_000)
    prog = ts.finetune_config(cfg, "progressive-s1")
    fixed = ts.finetune_config(cfg, "fixed-p0.5-s1")
    assert prog["e1"] + prog["e2"] + prog["e3"] == pytest.approx(prog["epochs"])
    assert prog["e2"] == pytest.approx(3 * prog["e1"]) and prog["p0"] == 0.2
    for k in ("max_steps", "schedule_steps", "batch", "lr", "epochs", "synthetic_size", "init", "seed"):
        assert prog[k] == fixed[k], k
    assert fixed["strategy"] == "fixed" and fixed["p"] == 0.5
    assert prog["epochs"] * 50_000 >= 500 * 256                    # the epochs cover the steps


def test_bad_options_are_one_line_usage_errors(ts, capsys):
    assert ts.main(["--strategies", "fixed-p2", "--plan"]) == 2
    assert ts.main(["--samples", "1", "--plan"]) == 2
    err = capsys.readouterr().err
    assert err.count("toy_study:") == 2 and "Traceback" not in err


def test_plan_estimates_every_stage(ts, capsys, tmp_path):
    assert ts.main(["--plan", "--out", str(tmp_path / "p"), "--device", "cpu", "--max-minutes", "9"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["finetune"]["runs"] == 15 and p["pretrain"]["estimate_min"] > 0
    assert "assumed" in p["throughput_source"] and p["calls_of_max_minutes"] >= 1
    assert ts.main(["--plan", "--out", str(tmp_path / "p"), "--device", "cpu", "--pretrain-minutes", "5"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["pretrain"]["steps"] == ts.steps_for_minutes(5, plan_lib.ASSUMED_IMG_S["cpu"], 512)


def test_provenance_commands_name_no_machine_paths(ts, monkeypatch, tmp_path):
    """A path outside the working directory (the device's output folder) is recorded as $OUT, one inside it
    relative: shipped provenance must not carry /root/out or a home directory."""
    monkeypatch.chdir(tmp_path)
    inside = tmp_path / "runs" / "study"
    cmd = ts.command_line(["--out", str(inside), "--pack", "/root/out", "--jobs", "5"])
    assert cmd == "python3 scripts/toy_study.py --out runs/study --pack $OUT --jobs 5"
    assert plan_lib.portable_command("python3 scripts/toy_study.py --pack /root/out".split()).endswith("--pack $OUT")


def test_pretrain_rounds_follow_the_init_chain(ts, tmp_path):
    """A pretraining continued from an earlier one (rounds: one device call each) names every round, first
    first, with portable commands; a random init ends the chain."""
    r1, r2 = tmp_path / "a" / "pretrain", tmp_path / "b" / "pretrain"
    for d in (r1, r2):
        d.mkdir(parents=True)
    (r1 / "provenance.json").write_text(json.dumps(
        {"init": "random", "commands": ["python3 x.py --pack /root/out"], "steps": 10, "seed": 0,
         "environment": {"git_commit": "c1"}}))
    w1 = str(r1 / "var.safetensors")
    prov2 = {"init": w1, "commands": ["python3 x.py --pretrain-init " + w1], "steps": 20,
             "init_provenance": ts.init_provenance(w1)}
    assert prov2["init_provenance"]["commit"] == "c1" and prov2["init_provenance"]["init_provenance"] is None
    rounds = ts.provenance_rounds(prov2)
    assert [r["steps"] for r in rounds] == [10, 20] and rounds[0]["init"] == "random"
    assert rounds[0]["commands"] == ["python3 x.py --pack $OUT"]
    (r2 / "provenance.json").write_text(json.dumps(prov2))        # a third round finds both behind it
    assert [r["steps"] for r in ts.provenance_rounds({"init": str(r2 / "var.safetensors"), "steps": 30})] == [10, 20, 30]
    assert ts.init_provenance("random") is None


def test_pretraining_in_rounds_continues_each_from_the_last(ts, tmp_path, monkeypatch):
    """--pretrain-continue: round 1 in OUT/pretrain-round1, the last round in OUT/pretrain (what the fine-tunes
    start from), initialised from round 1's export; its provenance nests round 1's, and the pack carries round
    1's weights (a later round may run in the next call)."""
    import tarfile as tf

    cfg = tiny(ts, tmp_path / "toy-study", pretrain_rounds=((3, 5e-4, 16),))
    rounds = ts.pretrain_rounds(cfg)
    assert [r.out.name for r in rounds] == ["pretrain-round1", "pretrain"]
    assert rounds[1].init == str(rounds[0].out / "var.safetensors") and rounds[1].steps == 3
    assert ts.stage_pretrain(cfg, None)
    prov = json.loads((cfg.out / "pretrain" / "provenance.json").read_text())
    assert prov["init"] == "OUT/pretrain-round1/var.safetensors" and prov["steps"] == 3 and prov["lr"] == 5e-4
    assert prov["init_provenance"]["init"] == "random" and prov["init_provenance"]["steps"] == 2
    assert [r["steps"] for r in ts.provenance_rounds(prov)] == [2, 3]
    with tf.open(cfg.pack / ts.PACK_FILE) as tar:
        names = tar.getnames()
    assert "toy-study/pretrain-round1/var.safetensors" in names and "toy-study/pretrain/var.safetensors" in names
    monkeypatch.setattr(ts, "train_run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran again")))
    assert ts.stage_pretrain(cfg, None)                      # both rounds finished: nothing runs
    assert ts.plan(cfg)["pretrain"]["rounds"] == 2 and ts.plan(cfg)["pretrain"]["steps"] == 5
    with pytest.raises(ts.UsageError):
        ts.parse_round("3100:7e-4")
    assert ts.parse_round("3100:7e-4:400000") == (3100, 7e-4, 400000)
