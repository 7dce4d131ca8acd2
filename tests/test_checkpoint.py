"""Checkpoint I/O: strict key/shape checks, pickle refusal, safetensors roundtrip, offline resolution."""
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from model import spec
from model.checkpoint import (CheckpointError, WeightsNotFound, check_state_dict, load_state_file, load_strict,
                              read_safetensors_metadata, resolve_official, save_safetensors)


def _touch_marker(path: str) -> None:
    Path(path).write_text("code ran")


class Evil:
    """Unpickling this runs ``_touch_marker``: the side effect a malicious checkpoint would have."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch_marker, (self.marker,))


def _tiny_module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2, bias=False))


def test_check_names_missing_unexpected_and_shapes():
    expected = {f"w{i}": (2, 3) for i in range(8)}
    got = {f"w{i}": torch.zeros(2, 3) for i in range(1, 8)}     # w0 missing
    got["w3"] = torch.zeros(3, 2)                                # wrong shape
    got["extra.weight"] = torch.zeros(1)                         # unexpected
    with pytest.raises(CheckpointError) as ei:
        check_state_dict(expected, got, "VAR weights")
    msg = str(ei.value)
    assert "VAR weights" in msg and "1 missing keys: w0" in msg
    assert "1 unexpected keys: extra.weight" in msg
    assert "w3 expected [2, 3] got [3, 2]" in msg
    assert "\n" not in msg
    check_state_dict(expected, {k: torch.zeros(2, 3) for k in expected}, "ok")   # no error when equal


def test_check_shows_at_most_five_of_each():
    with pytest.raises(CheckpointError) as ei:
        check_state_dict({f"k{i}": (1,) for i in range(12)}, {}, "x")
    msg = str(ei.value)
    assert "12 missing keys" in msg and "k4" in msg and "k5" not in msg and "..." in msg


def test_load_strict_casts_dtype_and_rejects_bad_keys():
    src, dst = _tiny_module(), _tiny_module().to(torch.bfloat16)
    sd64 = {k: v.double() + 1 for k, v in src.state_dict().items()}
    load_strict(dst, sd64, "tiny")
    for k, v in dst.state_dict().items():
        assert v.dtype == torch.bfloat16
        assert torch.allclose(v.float(), sd64[k].float(), atol=1e-2)
    bad = dict(sd64)
    bad.pop("0.weight")
    bad["0.bogus"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys: 0\.weight.*unexpected keys: 0\.bogus"):
        load_strict(dst, bad, "tiny")


def test_pth_with_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "payload": Evil(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_state_file(evil)
    assert not marker.exists(), "unpickling ran the payload"
    # the payload is real: what a full unpickle (which varbench never does) would call writes the marker
    fn, args = Evil(marker).__reduce__()
    fn(*args)
    assert marker.exists()


def test_pth_wrapped_or_not_a_dict_is_refused(tmp_path):
    sd = _tiny_module().state_dict()
    wrapped, lst, flat = tmp_path / "wrapped.pth", tmp_path / "list.pth", tmp_path / "flat.pth"
    torch.save({"model": sd, "epoch": 3}, wrapped)
    torch.save([torch.zeros(1)], lst)
    torch.save(sd, flat)
    with pytest.raises(CheckpointError, match="training checkpoint.*'model'"):
        load_state_file(wrapped)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state_file(lst)
    got = load_state_file(flat)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_file(tmp_path / "nope.pth")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_state_file(junk)
    junk_pth = tmp_path / "junk.pth"
    junk_pth.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError):
        load_state_file(junk_pth)


def test_safetensors_roundtrip_with_metadata_and_tied_weights(tmp_path):
    m = _tiny_module()
    tied = nn.Module()
    tied.a = nn.Linear(3, 3)
    tied.b = nn.Linear(3, 3)
    tied.b.weight = tied.a.weight                       # shared storage: safetensors alone would refuse
    for obj, name in ((m, "m.safetensors"), (tied, "tied.safetensors")):
        path = save_safetensors(obj, tmp_path / "sub" / name, {"seed": 0, "steps": "10"})
        got = load_state_file(path)
        want = obj.state_dict()
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
        assert read_safetensors_metadata(path) == {"seed": "0", "steps": "10"}
    assert sorted(os.listdir(tmp_path / "sub")) == ["m.safetensors", "tied.safetensors"]   # no temp files left


def test_save_is_atomic_on_failure(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors({"x": torch.ones(2)}, path)
    with pytest.raises(Exception):
        save_safetensors({"x": "not a tensor"}, path)   # type: ignore[dict-item]
    assert torch.equal(load_state_file(path)["x"], torch.ones(2))          # old file intact
    assert os.listdir(tmp_path) == ["w.safetensors"]


def test_resolve_official_offline_raises_weights_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(WeightsNotFound) as ei:
        resolve_official(spec.SPECS["var-d16"])
    msg = str(ei.value)
    assert "var_d16.pth" in msg and spec.HF_VAE_FILE in msg
    assert "https://huggingface.co/FoundationVision/var" in msg and "--ckpt PATH --vae PATH" in msg
    assert "\n" not in msg
    with pytest.raises(WeightsNotFound, match="no official weights"):
        resolve_official(spec.SPECS["var-tiny"])


def test_resolve_official_finds_cached_files(tmp_path, monkeypatch):
    """Files laid out as the HF cache keeps them are found offline (with or without huggingface_hub)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    repo = tmp_path / "hf" / "hub" / "models--FoundationVision--var"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for name in ("var_d16.pth", spec.HF_VAE_FILE):
        torch.save({"w": torch.zeros(1)}, snap / name)
    var_path, vae_path = resolve_official(spec.SPECS["var-d16"])
    assert var_path.name == "var_d16.pth" and vae_path.name == spec.HF_VAE_FILE
    assert var_path.is_file() and vae_path.is_file()
