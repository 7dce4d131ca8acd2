"""Sensitivity matrix on var-tiny: cell semantics, coupled sampling, CSV shape/content, resume, CLI exit codes.

Random init makes VAR blocks near-identity (AdaLN gamma 1e-5, head 0.02), so subnets would change nothing; the
model tests use var-tiny with gamma and head gains of 1 so that skipping blocks really moves the distributions.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import sys
import types

import pytest
import torch
from typer.testing import CliRunner

from model import spec as spec_mod
from model.schedule import DepthSchedule, isometric_layers
from varbench import results
from varbench.quality import sensitivity as sens
from varbench.cli import app
from varbench.errors import UsageError

TINY = spec_mod.SPECS["var-tiny"]                       # 4 blocks, 4 scales (1, 4, 9, 16 tokens)
LIVE = dataclasses.replace(TINY, init_adaln_gamma=1.0, init_head=1.0)


def _cfg(**kw) -> sens.SensitivityConfig:
    base = dict(model=LIVE, samples=2, batch=2, allow_random=True, device="cpu", top_k=900, top_p=0.96)
    base.update(kw)
    return sens.SensitivityConfig(**base)


def _by(rows, metric):
    return {(r["group"] or r["scale"], r["depth"]): r for r in rows if r["metric"] == metric and r["mode"] != "reference"}


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ---- parsing and planning (no model) ------------------------------------------------------------------------
def test_default_groups_match_the_paper_thirds():
    assert sens.default_groups(10) == [(0, 2), (3, 5), (6, 9)]
    assert sens.default_groups(4) == [(0, 0), (1, 1), (2, 3)]
    assert sens.default_groups(7) == [(0, 1), (2, 3), (4, 6)]


@pytest.mark.parametrize("text", ["3-1", "0-4", "x", "1-", "-1", ""])
def test_bad_groups(text):
    with pytest.raises(UsageError, match="--groups"):
        sens.parse_groups(text, 4)


@pytest.mark.parametrize("text", ["4", "-1", "a,b", "0,,1"])
def test_bad_scales(text):
    with pytest.raises(UsageError, match="--scales"):
        sens.parse_scales(text, 4)


def test_plan_cells_schedules():
    full, sub2 = tuple(range(4)), isometric_layers(4, 2)
    single = sens.plan_cells(_cfg(mode="single", depths=[2], scales="1,3"), TINY)
    assert [c.scale for c in single] == [1, 3]
    assert single[0].schedule.layers == (full, sub2, full, full)
    frm = sens.plan_cells(_cfg(mode="from", depths=[2, 3], scales="2"), TINY)
    assert frm[0].schedule == DepthSchedule.variant(TINY, 2, switch=2)
    assert frm[1].schedule.layers[:2] == (full, full) and frm[1].schedule.depth_at(3) == 3
    grp = sens.plan_cells(_cfg(mode="groups"), TINY)          # default: thirds, 50% depth
    assert [(c.group, c.depth) for c in grp] == [((0, 0), 2), ((1, 1), 2), ((2, 3), 2)]
    assert grp[2].schedule.layers == (full, full, sub2, sub2)
    with pytest.raises(UsageError, match="--depths"):
        sens.plan_cells(_cfg(depths=[5]), TINY)
    with pytest.raises(UsageError, match="--groups"):
        sens.plan_cells(_cfg(mode="groups", groups=[(2, 9)]), TINY)


# ---- the matrix on a real (tiny) model -----------------------------------------------------------------------
def test_single_mode_matrix_and_identical_schedule(tmp_path):
    rows = sens.run_sensitivity(_cfg(mode="single", depths=[2, 4]), tmp_path)
    assert len(rows) == 4 * 2 * len(sens.FIDELITY)
    kl, agree, psnr, ssim = (_by(rows, m) for m in ("kl", "token_agreement", "psnr", "ssim"))
    for s in range(4):
        # depth 4 = the full network: same distributions, coupled sampling -> the very same images
        assert kl[(s, 4)]["value"] == 0.0
        assert agree[(s, 4)]["value"] == 1.0 and agree[(s, 4)]["per_scale"] == [1.0] * 4
        assert psnr[(s, 4)]["value"] == math.inf and ssim[(s, 4)]["value"] == pytest.approx(1.0)
        # only scale s runs shallow: scales before it are untouched, scale s itself moves
        per = kl[(s, 2)]["per_scale"]
        assert all(v < 1e-9 for v in per[:s]) and per[s] > 1e-6
        assert agree[(s, 2)]["per_scale"][:s] == [1.0] * s
        assert kl[(s, 2)]["kv_bytes"] < kl[(s, 4)]["kv_bytes"] and kl[(s, 2)]["flops"] < kl[(s, 4)]["flops"]
        assert kl[(s, 2)]["layers"] == [0, 3] and kl[(s, 2)]["cell_seconds"] > 0
    table = _read_csv(tmp_path / "sensitivity_matrix_single_kl.csv")
    assert table[0] == ["scale", "d2", "d4"] and [r[0] for r in table[1:]] == ["0", "1", "2", "3"]
    assert float(table[2][1]) == pytest.approx(kl[(1, 2)]["value"], rel=1e-12)
    assert (tmp_path / "manifest.json").exists()


def test_from_mode_zero_before_switch(tmp_path):
    rows = sens.run_sensitivity(_cfg(mode="from", depths=[2], scales="1,3"), tmp_path)
    kl, agree = _by(rows, "kl"), _by(rows, "token_agreement")
    for s in (1, 3):
        per = kl[(s, 2)]["per_scale"]
        assert all(v < 1e-9 for v in per[:s]) and all(v > 1e-6 for v in per[s:])
        assert agree[(s, 2)]["per_scale"][:s] == [1.0] * s
    # the switch family: moving the switch earlier runs more scales shallow -> more damage, fewer FLOPs
    assert kl[(1, 2)]["value"] > kl[(3, 2)]["value"]
    assert kl[(1, 2)]["flops"] < kl[(3, 2)]["flops"] and kl[(1, 2)]["kv_bytes"] <= kl[(3, 2)]["kv_bytes"]
    table = _read_csv(tmp_path / "sensitivity_matrix_from_token_agreement.csv")
    assert table == [["scale", "d2"], ["1", repr(agree[(1, 2)]["value"])], ["3", repr(agree[(3, 2)]["value"])]]


def test_groups_mode_and_resume(tmp_path, monkeypatch):
    cfg = _cfg(mode="groups")
    rows = sens.run_sensitivity(cfg, tmp_path)
    kl = _by(rows, "kl")
    assert set(kl) == {("0-0", 2), ("1-1", 2), ("2-3", 2)}
    assert kl[("2-3", 2)]["per_scale"][:2] == pytest.approx([0, 0], abs=1e-9)
    assert all(v > 1e-6 for v in kl[("2-3", 2)]["per_scale"][2:])
    table = _read_csv(tmp_path / "sensitivity_matrix_groups_ssim.csv")
    assert table[0] == ["group", "d2"] and [r[0] for r in table[1:]] == ["0-0", "1-1", "2-3"]
    ref = torch.load(tmp_path / sens.REFERENCE_FILE, weights_only=True)
    assert ref["images"].shape == (2, 3, 16, 16) and len(ref["indices"]) == 4
    # resume: nothing is sampled again and no row is appended
    n_lines = len(results.read_rows(tmp_path / sens.ROWS_FILE))
    monkeypatch.setattr(sens, "evaluate_schedule", lambda *a, **k: pytest.fail("finished cell recomputed"))
    monkeypatch.setattr(sens, "compute_reference", lambda *a, **k: pytest.fail("reference recomputed"))
    again = sens.run_sensitivity(cfg, tmp_path)
    assert len(results.read_rows(tmp_path / sens.ROWS_FILE)) == n_lines
    assert [r["value"] for r in again] == [r["value"] for r in rows]


def test_toy_metric_rows_and_reference(tmp_path, monkeypatch):
    import varbench.quality

    fake = types.ModuleType("varbench.quality.toy_metric")
    fake.toy_scores = lambda images, labels: ((images.mean(dim=(1, 2, 3)) > 0.5).numpy(),
                                              images.flatten(1)[:, :3].double().numpy())
    fake.fd_of_features = lambda feats: float(feats.mean()) * 100
    fake.real_fd = lambda n: 1.0 / n
    monkeypatch.setattr(sens, "_toy_image_size", lambda: TINY.image_size)
    monkeypatch.setitem(sys.modules, "varbench.quality.toy_metric", fake)
    monkeypatch.setattr(varbench.quality, "toy_metric", fake, raising=False)
    rows = sens.run_sensitivity(_cfg(mode="single", depths=[2], scales="3", metric="toy"), tmp_path)
    ref = {r["metric"]: r for r in rows if r["mode"] == "reference"}
    assert set(ref) == {"toy_acc", "toy_fd"} and ref["toy_fd"]["depth"] == 4 and ref["toy_fd"]["scale"] is None
    assert ref["toy_fd"]["real_fd"] == 0.5 and ref["toy_acc"]["layers"] == [0, 1, 2, 3]
    for r in rows:                       # every row, reference included, carries its interval and sample count
        assert r["n"] == 2 and r["ci_method"] in ("wilson", "exact", "bca-bootstrap", "percentile-bootstrap")
        assert r["ci_low"] <= r["value"] <= r["ci_high"] or r["ci_method"] == "percentile-bootstrap"
    assert ref["toy_acc"]["ci_method"] == "wilson" and 0 <= ref["toy_acc"]["ci_low"] < ref["toy_acc"]["ci_high"] <= 1
    cell = {r["metric"] for r in rows if r["mode"] == "single"}
    assert cell == set(sens.FIDELITY) | {"toy_acc", "toy_fd"}
    assert (tmp_path / "sensitivity_matrix_single_toy_fd.csv").exists()


# ---- CLI ------------------------------------------------------------------------------------------------------
def _cli(*args):
    return CliRunner().invoke(app, ["sensitivity", "--model", "var-tiny", "--device", "cpu", *args])


def test_cli_without_weights_exits_2(tmp_path):
    res = _cli("--out", str(tmp_path))
    assert res.exit_code == 2
    assert "meaningless" in res.stderr and "--allow-random" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("args", [["--scales", "4"], ["--scales", "x"], ["--mode", "groups", "--groups", "3-1"],
                                  ["--mode", "groups", "--groups", "0-9"], ["--groups", "0-1"],
                                  ["--mode", "sideways"], ["--depths", "9"], ["--metric", "bleu"],
                                  ["--samples", "0"]])
def test_cli_bad_input_exits_2(tmp_path, args):
    res = _cli("--allow-random", "--out", str(tmp_path), *args)
    assert res.exit_code == 2, res.stderr
    assert res.stderr.count("\n") <= 2 and "Traceback" not in res.stderr
    assert not (tmp_path / sens.ROWS_FILE).exists()


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity installed")
def test_cli_fid_without_extra_exits_2(tmp_path):
    res = _cli("--allow-random", "--out", str(tmp_path), "--metric", "fid", "--scales", "3", "--depths", "2")
    assert res.exit_code == 2 and "torch-fidelity" in res.stderr


def test_cli_toy_metric_on_a_non_toy_model_exits_2(tmp_path):
    res = _cli("--allow-random", "--out", str(tmp_path), "--metric", "toy")
    assert res.exit_code == 2 and "var-toy" in res.stderr


def test_cli_json_rows(tmp_path):
    res = _cli("--allow-random", "--out", str(tmp_path), "--scales", "3", "--depths", "2", "--samples", "1",
               "--batch", "1", "--json")
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert {r["metric"] for r in rows} == set(sens.FIDELITY) and len(rows) == len(sens.FIDELITY)
    assert all(r["weights"] == "random" and r["kind"] == "sensitivity" for r in rows)
    assert "RANDOM WEIGHTS" in res.stderr and "1 cells" in res.stderr


def test_cli_with_checkpoint_files(tmp_path):
    """Weights from files (here: var-tiny's random init saved as safetensors) need no --allow-random."""
    from model import VARPipeline
    from model.checkpoint import save_safetensors

    pipe = VARPipeline.from_spec(TINY, seed=3)
    save_safetensors(pipe.var, tmp_path / "var.safetensors", {})
    save_safetensors(pipe.vae, tmp_path / "vae.safetensors", {})
    out = tmp_path / "out"
    res = _cli("--ckpt", str(tmp_path / "var.safetensors"), "--vae", str(tmp_path / "vae.safetensors"),
               "--out", str(out), "--scales", "2", "--depths", "2", "--samples", "1", "--json")
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert rows and all(r["weights"].startswith("file:var.safetensors@") for r in rows)
    assert str(tmp_path) not in (out / "manifest.json").read_text()
    assert "RANDOM WEIGHTS" not in res.stderr


def test_cli_bad_checkpoint_exits_2(tmp_path):
    bad = tmp_path / "var.pth"
    bad.write_bytes(b"not a checkpoint")
    res = _cli("--ckpt", str(bad), "--vae", str(bad), "--out", str(tmp_path / "out"))
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    assert "cannot load var-tiny weights" in res.stderr or "--ckpt" in res.stderr     # refused before or at loading


# ---- the KL of the sampled distribution and the intervals ------------------------------------------------------
def test_guided_logits_are_what_the_sampler_saw(monkeypatch):
    """Teacher forcing over [labels | null] on the full network's own tokens gives, scale by scale, exactly the
    guided logits generation handed to the sampler (so the guided KL compares the distributions really drawn)."""
    import model.pipeline as pipeline_mod
    from model import VARPipeline

    pipe = VARPipeline.from_spec(LIVE, seed=1)
    seen = []
    real = pipeline_mod.sample_tokens

    def spy(logits, *a, **k):
        seen.append(logits.clone())
        return real(logits, *a, **k)

    monkeypatch.setattr(pipeline_mod, "sample_tokens", spy)
    labels = torch.tensor([1, 7])
    out = pipe.generate(labels, cfg=2.5, top_k=900, top_p=0.96, seed=3, decode=False)
    cfg = _cfg(cfg=2.5)
    sched = sens.DepthSchedule.variant(LIVE, 2, switch=2)
    guided = sens.next_scale_logits(pipe, labels, out.indices, DepthSchedule.full(LIVE), cfg)
    for (b, e), g in zip(LIVE.begin_ends, seen):
        assert torch.allclose(guided[:, b:e], g, atol=1e-4, rtol=1e-4)
    cond = sens.next_scale_logits(pipe, labels, out.indices, sched, dataclasses.replace(cfg, kl="conditional"))
    assert torch.equal(cond, pipe.teacher_forcing(labels, out.indices, sched))


def test_kl_kind_labels_rows_and_keys(tmp_path):
    guided = sens.run_sensitivity(_cfg(mode="from", depths=[2], scales="2"), tmp_path)
    cond = sens.run_sensitivity(_cfg(mode="from", depths=[2], scales="2", kl="conditional"), tmp_path)
    g, c = _by(guided, "kl")[(2, 2)], _by(cond, "kl")[(2, 2)]
    assert g["kl_kind"] == "guided" and c["kl_kind"] == "conditional"
    assert g["value"] != c["value"] and g["value"] > 0 and c["value"] > 0
    assert all(r["kl_kind"] is None for r in guided if r["metric"] != "kl")
    # both kinds live side by side in one rows file; a rerun of either resumes
    kl_rows = [r for r in results.read_rows(tmp_path / sens.ROWS_FILE) if r["metric"] == "kl"]
    assert sorted(r["kl_kind"] for r in kl_rows) == ["conditional", "guided"]
    with pytest.raises(UsageError, match="--kl"):
        sens.run_sensitivity(_cfg(kl="sideways"), tmp_path)


def test_rows_carry_intervals_that_cover_the_value(tmp_path):
    rows = sens.run_sensitivity(_cfg(mode="single", depths=[2, 4], scales="1,3", samples=6, batch=3), tmp_path)
    for r in rows:
        assert r["n"] == 6 and r["ci_method"] in ("bca-bootstrap", "percentile-bootstrap", "exact")
        assert r["ci_low"] <= r["value"] <= r["ci_high"], r
    kl = _by(rows, "kl")
    assert kl[(1, 4)]["ci_method"] == "exact" and kl[(1, 4)]["ci_low"] == kl[(1, 4)]["ci_high"] == 0.0
    assert kl[(1, 2)]["ci_low"] < kl[(1, 2)]["ci_high"]           # a shallow cell has sampling spread


def test_cli_shows_intervals_and_rejects_a_bad_kl(tmp_path):
    res = _cli("--allow-random", "--out", str(tmp_path), "--scales", "3", "--depths", "2", "--samples", "4",
               "--batch", "2", "--kl", "conditional")
    assert res.exit_code == 0, res.stderr
    assert "(conditional)" in res.stderr and "95% interval" in res.stderr and "n = 4" in res.stderr
    bad = _cli("--allow-random", "--out", str(tmp_path / "x"), "--kl", "sideways")
    assert bad.exit_code == 2 and "--kl" in bad.stderr and "Traceback" not in bad.stderr


def test_rows_without_intervals_are_measured_again(tmp_path):
    """Rows written before intervals existed do not count as finished: a rerun measures them, with intervals."""
    cfg = _cfg(mode="from", depths=[2], scales="3")
    sens.run_sensitivity(cfg, tmp_path)
    path = tmp_path / sens.ROWS_FILE
    old = [{k: v for k, v in r.items() if k not in ("ci_low", "ci_high", "n", "ci_method", "kl_kind")}
           for r in results.read_rows(path)]
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    again = sens.run_sensitivity(cfg, tmp_path)
    assert again and all("ci_low" in r and r["n"] == 2 for r in again)


def test_kl_metric_alone_runs_no_generation_and_matches_the_full_rows(tmp_path, monkeypatch):
    """--metric kl: the KL rows equal those of the fidelity run (same reference, same teacher forcing), and no
    cell generates (only the reference does): the fast matrix."""
    full = sens.run_sensitivity(_cfg(metric="fidelity"), tmp_path / "fidelity")
    from model.pipeline import VARPipeline
    calls = []
    real = VARPipeline.generate

    def counting(self, *a, **k):
        calls.append(k.get("schedule"))
        return real(self, *a, **k)

    monkeypatch.setattr(VARPipeline, "generate", counting)
    fast = sens.run_sensitivity(_cfg(metric="kl"), tmp_path / "kl")
    assert {r["metric"] for r in fast} == {"kl"}
    want = {k: r["value"] for k, r in _by(full, "kl").items()}
    assert {k: r["value"] for k, r in _by(fast, "kl").items()} == pytest.approx(want)
    cfg = _cfg()
    assert len(calls) == math.ceil(cfg.samples / cfg.batch)     # the reference's batches only


def test_fid_cells_carry_the_feature_bootstrap_interval(tmp_path, monkeypatch):
    """--metric fid: every cell's FID has the interval `varbench fid` gives (feature bootstrap, centred), n = the
    samples, and the explicit Inception weights path reaches the extractor (no environment variable read)."""
    import importlib.util as iu

    from varbench.quality import metrics

    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten()).eval()
    seen = []

    def extractor(device, weights_path):
        seen.append(weights_path)
        return lambda x_u8: body(x_u8.float() / 255)

    real_find = iu.find_spec
    monkeypatch.setattr(sens.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "torch_fidelity" else real_find(name, *a))
    monkeypatch.setattr(metrics, "inception_extractor", extractor)
    rows = sens.run_sensitivity(_cfg(metric="fid", samples=8, batch=4, scales=[1, 2], depths=[2],
                                     inception_weights="w.pth"), tmp_path)
    fid_rows = [r for r in rows if r["metric"] == "fid"]
    assert len(fid_rows) == 2 and seen == ["w.pth"]     # one extractor (and reference statistics) for all cells
    for r in fid_rows:
        assert r["ci_method"] == "feature-bootstrap-centred" and r["n"] == 8
        assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["ci_high"] > r["ci_low"]
