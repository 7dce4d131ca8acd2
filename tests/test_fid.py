"""`varbench fid` end to end on CPU: var-tiny samples in shards, a constructed feature extractor (no Inception,
no download), an ADM-style .npz and an ImageFolder reference, resume from finished shards, the protocol in rows,
the interval and the Inception score against scipy / a direct formula, and the CLI's one-line errors."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from model import spec as spec_mod
from varbench import results, schema
from varbench.cli import app
from varbench.errors import UsageError
from varbench.quality import fid, metrics

TINY = spec_mod.SPECS["var-tiny"]                       # 4 blocks, 4 scales, 16 px, 10 classes
LIVE = dataclasses.replace(TINY, init_adaln_gamma=1.0, init_head=1.0)   # blocks that matter (test_sensitivity)


def tiny_extractor(calls: list | None = None) -> fid.Extractor:
    """A fixed random conv net standing in for Inception: uint8 images -> 6-d features and 10 class logits."""
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten()).eval()
    head = torch.nn.Linear(6, 10).eval()

    def fn(x_u8):
        if calls is not None:
            calls.append(int(x_u8.shape[0]))
        f = body(x_u8.float() / 255)
        return f, head(f) * 5
    return fid.Extractor("test-conv", "test@0", fn)


def _ref_npz(tmp_path, ext, n=40):
    g = torch.Generator().manual_seed(3)
    real = (torch.rand(n, 3, 16, 16, generator=g) ** 2 * 255).round().to(torch.uint8)
    f, _ = ext.fn(real)
    mu, sigma = metrics.gaussian_stats(f.detach().double().numpy())
    path = tmp_path / "ref.npz"
    np.savez(path, mu=mu, sigma=sigma)
    return path, real


def _cfg(ref, **kw) -> fid.FidConfig:
    base = dict(model=LIVE, samples=12, batch=3, shard_images=5, allow_random=True, device="cpu", ref=str(ref),
                resamples=20, is_splits=2)
    base.update(kw)
    return fid.FidConfig(**base)


def _shards(out):
    return sorted(p.name for p in (out / fid.SAMPLES_DIR).rglob("shard-*.npz"))


# ---- end to end ---------------------------------------------------------------------------------------------------
def test_fid_end_to_end_rows_record_the_protocol_and_agree_with_scipy(tmp_path):
    linalg = pytest.importorskip("scipy.linalg")
    ext = tiny_extractor()
    ref, _ = _ref_npz(tmp_path, ext)
    res = fid.run_fid(_cfg(ref), tmp_path / "out", extractor=ext)
    assert res["incomplete"] == []
    (row,) = res["rows"]
    out = tmp_path / "out"
    assert _shards(out) == [f"shard-{k:05d}-of-00003.npz" for k in range(3)]      # 5 + 5 + 2 images
    # the shards hold uint8 HWC images and the label list i mod classes
    imgs, labels = [], []
    for name in _shards(out):
        with np.load(next((out / fid.SAMPLES_DIR).rglob(name))) as z:
            assert z["images"].dtype == np.uint8 and z["images"].shape[1:] == (16, 16, 3)
            imgs.append(z["images"])
            labels.append(z["labels"])
    assert np.concatenate(labels).tolist() == [i % 10 for i in range(12)]
    # FID = the Fréchet distance of the features, checked with scipy's matrix square root
    f, lg = ext.fn(torch.from_numpy(np.concatenate(imgs)).permute(0, 3, 1, 2).contiguous())
    f = f.detach().double().numpy()
    with np.load(ref) as z:
        m2, s2 = z["mu"], z["sigma"]
    m1, s1 = f.mean(0), np.cov(f, rowvar=False)
    want = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert row["fid"] == pytest.approx(want, rel=1e-6) and row["fid"] > 0
    assert row["ci_low"] <= row["fid"] <= row["ci_high"] and row["ci_high"] > row["ci_low"]
    assert row["ci_method"] == "feature-bootstrap-centred" and row["n"] == 12
    assert row["is_mean"] == pytest.approx(fid.inception_score(lg.detach().double().numpy(), 2)[0])
    assert row["is_mean"] >= 1.0 and row["is_std"] >= 0
    # the whole protocol, and every field declared in the schema
    assert row["protocol"] == "proxy" and row["classes"] == 10 and row["per_class"] == 1.2
    assert (row["cfg"], row["top_k"], row["top_p"], row["seed"]) == (1.5, 900, 0.96, 0)
    assert row["ref"].startswith("npz:ref.npz@") and row["extractor"] == "test-conv"
    assert row["extractor_weights"] == "test@0" and row["weights"] == "random" and row["weights_notice"]
    assert row["method"] == "variant:depth=4,switch=3,select=isometric" and row["feature_dim"] == 6
    assert not set(row) - set(schema.FID.names) and not set(schema.FID.required) - set(row)
    assert results.read_rows(out / fid.ROWS_FILE, fid.ROWS_FILE) == [row]


def test_killed_run_resumes_from_finished_shards(tmp_path):
    ext = tiny_extractor()
    ref, _ = _ref_npz(tmp_path, ext)
    out = tmp_path / "out"
    first = fid.run_fid(_cfg(ref, max_shards=1), out, extractor=ext)       # "killed" after one shard
    assert first["rows"] == [] and first["incomplete"][0]["missing"] == 2
    (done,) = _shards(out)
    path = next((out / fid.SAMPLES_DIR).rglob(done))
    stamp = path.stat().st_mtime_ns
    generated: list[int] = []
    import model.pipeline as pipeline_mod
    real_generate = pipeline_mod.VARPipeline.generate

    def counting(self, labels_B, *a, **kw):
        generated.append(len(labels_B))
        return real_generate(self, labels_B, *a, **kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline_mod.VARPipeline, "generate", counting)
        second = fid.run_fid(_cfg(ref), out, extractor=ext)
    assert sum(generated) == 7                                   # shards 1 and 2 only (5 + 2), not shard 0 again
    assert path.stat().st_mtime_ns == stamp and len(_shards(out)) == 3
    (row,) = second["rows"]
    # the same numbers as one uninterrupted run: the samples do not depend on where the run stopped
    whole = fid.run_fid(_cfg(ref), tmp_path / "whole", extractor=ext)["rows"][0]
    assert row["fid"] == pytest.approx(whole["fid"], rel=1e-12)
    # a finished configuration is not scored again
    calls: list[int] = []
    again = fid.run_fid(_cfg(ref), out, extractor=tiny_extractor(calls))
    assert again["rows"] == [row] and calls == []


KILLED_MID_WRITE = """
import os, sys
import numpy as np
sys.path.insert(0, {root!r})
from tests import test_fid as t
from varbench.quality import fid
real, calls = np.savez, []
def dying(f, **arrays):
    calls.append(1)
    if len(calls) == 2:                 # the second shard: half a file, then the process dies (no cleanup runs)
        f.write(b"PK half a zip")
        f.flush()
        os._exit(9)
    real(f, **arrays)
fid.np.savez = dying
fid.run_fid(t._cfg({ref!r}), {out!r}, extractor=t.tiny_extractor())
"""


def test_a_process_killed_while_writing_a_shard_leaves_no_shard_behind(tmp_path):
    """Killed mid-write (os._exit: no except or finally runs): the half-written file never carries a shard's
    name, so the rerun regenerates that shard and the numbers equal an uninterrupted run's."""
    import subprocess
    import sys
    from pathlib import Path

    ext = tiny_extractor()
    ref, _ = _ref_npz(tmp_path, ext)
    out = tmp_path / "out"
    code = KILLED_MID_WRITE.format(root=str(Path(__file__).resolve().parent.parent), ref=str(ref), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert _shards(out) == ["shard-00000-of-00003.npz"]
    (row,) = fid.run_fid(_cfg(ref), out, extractor=ext)["rows"]
    assert row["fid"] == pytest.approx(fid.run_fid(_cfg(ref), tmp_path / "b", extractor=ext)["rows"][0]["fid"])


def test_sharding_over_ranks_covers_every_shard_once(tmp_path):
    """Two ranks (run one after the other, as torchrun would in parallel) split the shards; rank 0 scores once
    the other's shards exist, and the samples equal a single process's."""
    ext = tiny_extractor()
    ref, _ = _ref_npz(tmp_path, ext)
    out = tmp_path / "out"
    r1 = fid.run_fid(_cfg(ref), out, extractor=ext, dist=fid.Dist(rank=1, world=2))
    assert r1 == {"rows": [], "incomplete": []} and _shards(out) == ["shard-00001-of-00003.npz"]
    r0 = fid.run_fid(_cfg(ref), out, extractor=ext, dist=fid.Dist(rank=0, world=2))
    assert len(_shards(out)) == 3 and r0["rows"][0]["world_size"] == 2
    alone = fid.run_fid(_cfg(ref), tmp_path / "alone", extractor=ext)["rows"][0]
    assert r0["rows"][0]["fid"] == pytest.approx(alone["fid"], rel=1e-12)


def test_schedule_and_method_configurations_are_scored_apart(tmp_path):
    ext = tiny_extractor()
    ref, _ = _ref_npz(tmp_path, ext)
    res = fid.run_fid(_cfg(ref, depths=[2, 4], switches=[1]), tmp_path / "a", extractor=ext)
    by = {r["depth"]: r for r in res["rows"]}
    assert set(by) == {2, 4} and by[2]["fid"] != by[4]["fid"] and by[2]["flops"] < by[4]["flops"]
    assert by[2]["samples_dir"] != by[4]["samples_dir"]
    res = fid.run_fid(_cfg(ref, methods=["guidance-skip:from_scale=2"]), tmp_path / "b", extractor=ext)
    (row,) = res["rows"]
    assert row["method"] == "guidance-skip:from_scale=2" and row["plan"]["cfg_until"] == 2
    with pytest.raises(UsageError, match="--method"):
        fid.run_fid(_cfg(ref, methods=["nope"]), tmp_path / "c", extractor=ext)


def test_image_folder_reference_is_computed_once_and_cached(tmp_path):
    from PIL import Image

    ext = tiny_extractor()
    npz, real = _ref_npz(tmp_path, ext)
    folder = tmp_path / "imagenet-like"
    for i, img in enumerate(real):
        d = folder / f"class{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i}.png")
    calls: list[int] = []
    e2 = tiny_extractor(calls)
    out = tmp_path / "out"
    mu, sigma, label, count = fid.reference(str(folder), e2, out)
    assert count == 40 and sum(calls) == 40 and label.startswith("folder:imagenet-like@")
    with np.load(npz) as z:
        assert np.allclose(mu, z["mu"]) and np.allclose(sigma, z["sigma"])
    assert len(list((out / fid.REF_CACHE_DIR).glob("*.npz"))) == 1
    fid.reference(str(folder), e2, out)
    assert sum(calls) == 40                                       # cached: no feature extracted again
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "class0" / "new.png")
    _, _, label2, count2 = fid.reference(str(folder), e2, out)   # other content -> another key, recomputed
    assert label2 != label and count2 == 41 and sum(calls) == 81
    rows = fid.run_fid(_cfg(folder), out, extractor=ext)["rows"]
    assert rows[0]["ref"] == label2 and rows[0]["ref_n"] == 41


# ---- the statistics -------------------------------------------------------------------------------------------------
def test_inception_score_matches_the_definition():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((60, 7)) * 3
    perm = np.random.RandomState(fid.IS_SHUFFLE_SEED).permutation(60)
    p = np.exp(logits[perm]) / np.exp(logits[perm]).sum(1, keepdims=True)
    scores = []
    for c in np.split(p, 3):
        q = c.mean(0)
        scores.append(np.exp(np.mean([np.sum(pi * np.log(pi / q)) for pi in c])))
    mean, std = fid.inception_score(logits, 3)
    assert mean == pytest.approx(np.mean(scores), rel=1e-10) and std == pytest.approx(np.std(scores), rel=1e-9)
    assert fid.inception_score(np.zeros((10, 5)), 2) == pytest.approx((1.0, 0.0))   # one class everywhere: 1


def test_inception_score_equals_torch_fidelity():
    isc = pytest.importorskip("torch_fidelity.metric_isc")
    logits = np.random.default_rng(1).standard_normal((100, 9)) * 2
    want = isc.isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=2020)
    mean, std = fid.inception_score(logits, 10)
    assert mean == pytest.approx(want["inception_score_mean"], rel=1e-9)
    assert std == pytest.approx(want["inception_score_std"], rel=1e-7)


def test_fid_interval_centred_on_the_estimate_and_shrinking_with_n(one_thread):
    rng = np.random.default_rng(2)
    A = rng.standard_normal((5, 5))
    mu_r, s_r = np.zeros(5), A @ A.T / 5 + np.eye(5)
    draw = lambda n: rng.multivariate_normal(np.full(5, 0.3), s_r, size=n)   # noqa: E731
    small, large = draw(50), draw(2000)
    ci_s, ci_l = fid.fid_interval(small, mu_r, s_r, 200), fid.fid_interval(large, mu_r, s_r, 200)
    for f, ci in ((small, ci_s), (large, ci_l)):
        est = metrics.frechet_distance(*metrics.gaussian_stats(f), mu_r, s_r)
        assert ci.low <= est <= ci.high
    assert (ci_l.high - ci_l.low) < (ci_s.high - ci_s.low) / 3       # ~1/sqrt(n): 40x the samples
    assert fid.fid_interval(small, mu_r, s_r, 200) == ci_s           # seeded


@pytest.fixture
def one_thread():
    """Tiny eigvalsh calls: one torch thread (two threads on a busy 2-core machine cost 100x per call)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_resampled_fd_equals_the_fd_of_the_repeated_rows():
    rng = np.random.default_rng(7)
    feats = rng.standard_normal((30, 4)) @ rng.standard_normal((4, 4))
    mu_r, s_r = metrics.gaussian_stats(rng.standard_normal((100, 4)))
    fd = fid.resampled_fd(feats, mu_r, s_r)
    assert fd(np.ones(30)) == pytest.approx(metrics.frechet_distance(*metrics.gaussian_stats(feats), mu_r, s_r),
                                            rel=1e-9)
    w = rng.multinomial(30, np.full(30, 1 / 30))
    want = metrics.frechet_distance(*metrics.gaussian_stats(np.repeat(feats, w, axis=0)), mu_r, s_r)
    assert fd(w) == pytest.approx(want, rel=1e-9)


def test_fid_interval_covers_another_draw_of_n_images(one_thread):
    """Calibration: over independent draws of n rows, the interval of one draw covers the mean FD of n-row draws
    about 95% of the time (a raw percentile interval, shifted up by the resamples' duplicates, covers ~55%)."""
    rng = np.random.default_rng(5)
    D, n = 8, 60
    A = rng.standard_normal((D, D))
    s_r, mu_r = A @ A.T / D + np.eye(D), np.zeros(D)
    draw = lambda: rng.multivariate_normal(np.full(D, 0.2), s_r * 1.3, size=n)   # noqa: E731
    target = np.mean([metrics.frechet_distance(*metrics.gaussian_stats(draw()), mu_r, s_r) for _ in range(300)])
    hits = [ci.low <= target <= ci.high for ci in (fid.fid_interval(draw(), mu_r, s_r, 50, seed=i)
                                                     for i in range(25))]
    assert np.mean(hits) >= 0.85


def test_protocol_labels():
    assert fid.protocol(50_000, 1000, 1.5, 900, 0.96) == "standard"
    assert fid.protocol(10_000, 1000, 1.5, 900, 0.96) == "proxy"
    assert fid.protocol(50_000, 1000, 2.0, 900, 0.96) == "proxy"
    assert fid.protocol(500, 10, 1.5, 900, 0.96) == "proxy"


# ---- bad input ------------------------------------------------------------------------------------------------------
def test_bad_input_is_a_usage_error_before_any_work(tmp_path):
    ext = tiny_extractor()
    ref, _ = _ref_npz(tmp_path, ext)
    with pytest.raises(UsageError, match="--ref"):
        fid.run_fid(_cfg(tmp_path / "missing.npz"), tmp_path / "o", extractor=ext)
    with pytest.raises(UsageError, match="--ref"):
        fid.run_fid(_cfg(None), tmp_path / "o", extractor=ext)
    with pytest.raises(UsageError, match="--samples"):
        fid.run_fid(_cfg(ref, samples=1), tmp_path / "o", extractor=ext)
    with pytest.raises(UsageError, match="--inception-weights"):
        fid.run_fid(_cfg(ref, inception_weights=str(tmp_path / "missing.pth")), tmp_path / "o")
    with pytest.raises(UsageError, match="--inception-weights"):
        fid.run_fid(_cfg(ref), tmp_path / "o")                      # the Inception needs its weights file
    np.savez(tmp_path / "wrong.npz", mu=np.zeros(4), sigma=np.eye(4))
    with pytest.raises(UsageError, match="4-d"):
        fid.run_fid(_cfg(tmp_path / "wrong.npz"), tmp_path / "o", extractor=ext)
    assert not (tmp_path / "o" / fid.ROWS_FILE).exists()


def test_random_weights_are_refused_unless_asked(tmp_path, monkeypatch):
    import model.pipeline as pipeline_mod
    ext = tiny_extractor()
    ref, _ = _ref_npz(tmp_path, ext)
    monkeypatch.setattr(pipeline_mod, "WEIGHTS_DIR", str(tmp_path / "no-weights"))
    monkeypatch.setattr(pipeline_mod, "locate_weights",
                        lambda spec: (_ for _ in ()).throw(FileNotFoundError("no weights here")))
    with pytest.raises(UsageError, match="--allow-random"):
        fid.run_fid(_cfg(ref, model="var-tiny", allow_random=False), tmp_path / "o", extractor=ext)


# ---- the CLI ----------------------------------------------------------------------------------------------------------
def _cli(*args):
    return CliRunner().invoke(app, ["fid", "--model", "var-tiny", "--device", "cpu", *args])


def test_cli_missing_inception_weights_is_one_line_exit_2(tmp_path):
    ext = tiny_extractor()
    ref, _ = _ref_npz(tmp_path, ext)
    res = _cli("--allow-random", "--ref", str(ref), "--inception-weights", str(tmp_path / "nope.pth"),
               "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "--inception-weights" in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1
    res = _cli("--allow-random", "--ref", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "--ref" in res.stderr
    res = _cli("--allow-random", "--ref", str(ref), "--out", str(tmp_path / "o"))      # no weights file at all
    assert res.exit_code == 2 and "--inception-weights" in res.stderr


def test_cli_end_to_end_with_a_constructed_extractor(tmp_path, monkeypatch):
    ext = tiny_extractor()
    ref, _ = _ref_npz(tmp_path, ext)
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"stand-in")
    monkeypatch.setattr(fid, "inception_extractor", lambda device, path: ext)
    monkeypatch.setattr(fid, "have_torch_fidelity", lambda: True)
    args = ("--allow-random", "--ref", str(ref), "--inception-weights", str(weights), "--samples", "6",
            "--batch", "3", "--shard-images", "3", "--resamples", "10", "--is-splits", "2",
            "--out", str(tmp_path / "o"), "--json")
    res = _cli(*args, "--max-shards", "1")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["rows"] == [] and "rerun" in res.stderr
    res = _cli(*args)
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)["rows"]
    assert row["n"] == 6 and row["protocol"] == "proxy" and "FID" in res.stderr and "proxy" in res.stderr


TORCHRUN_SCRIPT = """
import json, sys, time
sys.path.insert(0, {root!r})
from tests import test_fid as t
from varbench.quality import fid
d = fid.distributed()
if d.rank == 1:
    time.sleep(3)           # the other rank's shard comes late: rank 0 must wait at the barrier to score
res = fid.run_fid(t._cfg({ref!r}), {out!r}, extractor=t.tiny_extractor(), dist=d)
print("RESULT", d.rank, d.world, json.dumps(res["rows"]))
fid.shutdown(d)
"""


def test_under_torchrun_each_rank_writes_its_shards_and_rank_0_scores(tmp_path):
    """Two real processes under torchrun (gloo on CPU): rank and world come from torch.distributed, the shards
    are split, rank 0 scores after the barrier, and the number equals one process's."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun not installed")
    ext = tiny_extractor()
    ref, _ = _ref_npz(tmp_path, ext)
    script = tmp_path / "run.py"
    script.write_text(TORCHRUN_SCRIPT.format(root=str(Path(__file__).resolve().parent.parent), ref=str(ref),
                                             out=str(tmp_path / "out")))
    proc = subprocess.run([torchrun, "--nproc-per-node", "2", "--standalone", str(script)], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = sorted(line.split(" ", 3)[1:] for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    assert [(r, w) for r, w, _ in lines] == [("0", "2"), ("1", "2")]
    (row,) = json.loads(lines[0][2])
    assert json.loads(lines[1][2]) == [] and row["world_size"] == 2 and len(_shards(tmp_path / "out")) == 3
    alone = fid.run_fid(_cfg(ref), tmp_path / "alone", extractor=ext)["rows"][0]
    assert row["fid"] == pytest.approx(alone["fid"], rel=1e-12)
