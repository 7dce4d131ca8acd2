"""Top-k then top-p as the official sampler (VAR_REFERENCE §3.5), drawn by Gumbel-max."""
import torch

from model.sampling import sample_tokens


def official_allowed(logits_V: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Naive re-statement of the official rule: drop logits below the k-th largest; then sort ascending, drop
    entries whose cumulative softmax mass is <= 1 - top_p, always keep the largest."""
    x = logits_V.clone()
    if top_k > 0:
        x[x < x.topk(top_k).values[-1]] = -torch.inf
    if top_p > 0:
        vals, idx = x.sort()
        cum = vals.softmax(-1).cumsum(-1)
        drop = cum <= 1 - top_p
        drop[-1] = False
        x[idx[drop]] = -torch.inf
    return x


def test_samples_stay_in_the_official_nucleus_and_follow_its_distribution():
    torch.manual_seed(0)
    logits = torch.randn(64) * 2
    allowed = official_allowed(logits, top_k=20, top_p=0.8)
    support = torch.isfinite(allowed)
    want = allowed.softmax(-1)
    n = 20000
    draws = sample_tokens(logits.expand(1, n, 64), top_k=20, top_p=0.8,
                          generator=torch.Generator().manual_seed(1))[0]
    assert support[draws].all()
    freq = torch.bincount(draws, minlength=64).float() / n
    assert (freq - want).abs().max() < 0.015
    assert (freq[support] > 0).all()


def test_greedy_and_no_filter():
    logits = torch.randn(2, 5, 50)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_tokens(logits, 1, 0.0, g), logits.argmax(-1))
    draws = sample_tokens(logits.expand(2, 5, 50).repeat(1, 400, 1), 0, 0.0, g)
    assert len(draws.unique()) > 10                  # no filter: the whole vocabulary is reachable
