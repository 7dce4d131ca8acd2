"""Training strategies compared on one Pareto plane (the toy study, ``scripts/toy_study.py``): one point per
run (full-network accuracy vs the subnets' pooled accuracy, Wilson intervals), means over seeds with t-intervals,
and how far a strategy lies from the frontier of the fixed ratios. Pure functions over ``toy_study`` rows, plus
the optional plotly figure (imported only there: the GPU machine has no plotly)."""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Sequence

DRIFT = "kl_pretrained"       # every schedule against the pretrained full network (one fixed teacher for all runs)


def _wilson(k: int, n: int) -> tuple[float | None, float | None]:
    from varbench.quality.intervals import wilson_interval

    iv = wilson_interval(k, n)
    return iv.low, iv.high


def run_points(rows: Sequence[dict], depths: Sequence[int]) -> list[dict]:
    """One Pareto point per run: full-network accuracy and the subnets' pooled accuracy (d2+d4+d6 samples, one
    Wilson interval), with FD and guided KL beside them."""
    by_run: dict[str, dict[tuple[str, str], dict]] = {}
    for r in rows:
        by_run.setdefault(r["run"], {})[(r["schedule"], r["metric"])] = r
    pts = []
    for run, m in by_run.items():
        subs = [f"d{d}" for d in depths]
        if ("full", "toy_acc") not in m or any((s, "toy_acc") not in m for s in subs):
            continue
        full = m[("full", "toy_acc")]
        k = sum(round(m[(s, "toy_acc")]["value"] * m[(s, "toy_acc")]["n"]) for s in subs)
        n = sum(m[(s, "toy_acc")]["n"] for s in subs)
        lo, hi = _wilson(k, n)
        first = next(iter(m.values()))
        pt = {"run": run, "strategy": first["strategy"], "seed": first["train_seed"],
              "full_acc": full["value"], "full_acc_low": full["ci_low"], "full_acc_high": full["ci_high"],
              "subnet_acc": k / n, "subnet_acc_low": lo, "subnet_acc_high": hi, "subnet_n": n,
              "full_fd": m.get(("full", "toy_fd"), {}).get("value"),
              "subnet_fd": _mean([m.get((s, "toy_fd"), {}).get("value") for s in subs]),
              "subnet_kl": _mean([m.get((s, "kl"), {}).get("value") for s in subs]),
              "full_kl_pretrained": m.get(("full", DRIFT), {}).get("value"),
              "subnet_kl_pretrained": _mean([m.get((s, DRIFT), {}).get("value") for s in subs])}
        for s in subs:
            for met in ("toy_acc", "toy_fd", "kl", DRIFT):
                r = m.get((s, met))
                if r:
                    pt[f"{s}_{met}"] = r["value"]
                    pt[f"{s}_{met}_low"], pt[f"{s}_{met}_high"] = r.get("ci_low"), r.get("ci_high")
        pts.append(pt)
    return pts


def _mean(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def strategy_means(points: Sequence[dict]) -> dict[str, dict]:
    """Per strategy: mean of each axis over seeds, its standard error over seeds and the t-interval (df = seeds-1)."""
    from scipy import stats

    out: dict[str, dict] = {}
    for strat in dict.fromkeys(p["strategy"] for p in points):
        ps = [p for p in points if p["strategy"] == strat]
        d: dict[str, Any] = {"strategy": strat, "seeds": len(ps)}
        for axis in ("full_acc", "subnet_acc", "full_fd", "subnet_fd", "subnet_kl", "full_kl_pretrained",
                     "subnet_kl_pretrained"):
            xs = [p[axis] for p in ps if p.get(axis) is not None]
            if not xs:
                continue
            mean = sum(xs) / len(xs)
            se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None
            t = float(stats.t.ppf(0.975, len(xs) - 1)) if len(xs) > 1 else None
            d[axis] = mean
            d[f"{axis}_se"] = se
            d[f"{axis}_low"] = mean - t * se if se is not None else None
            d[f"{axis}_high"] = mean + t * se if se is not None else None
        out[strat] = d
    return out


def pareto_front(points: list[dict], x: str, y: str) -> list[dict]:
    """The points no other point beats or ties on both ``x`` and ``y`` (higher is better), sorted by ``x``: along
    them ``y`` falls as ``x`` grows. Through all points instead, a dominated ratio puts a dip in the line that
    every strategy near it clears (the H200 study's fixed p = 0.1: below p = 0.5 on both axes)."""
    front: list[dict] = []
    for m in sorted(points, key=lambda m: (-m[x], -m[y])):
        if not front or m[y] > front[-1][y]:
            front.append(m)
    return front[::-1]


def frontier_gap(means: dict[str, dict], who: str, x: str = "full_acc", y: str = "subnet_acc") -> dict | None:
    """How far ``who`` lies above (+) or below (-) the fixed ratios' frontier in ``y`` at its own ``x``: the
    frontier is the piecewise-linear line through the non-dominated fixed-p means sorted by x (flat beyond its
    ends; a fixed ratio that another one beats on both axes is not on it); the gap's 95% interval combines the
    seed standard errors (t with the smaller df)."""
    from scipy import stats

    ratios = [m for s, m in means.items() if s.startswith("fixed-") and x in m and y in m]
    fixed = pareto_front(ratios, x, y)
    me = means.get(who)
    if me is None or len(ratios) < 2 or x not in me:
        return None
    xp = me[x]
    if xp <= fixed[0][x]:
        a, b, w = fixed[0], fixed[0], 0.0
    elif xp >= fixed[-1][x]:
        a, b, w = fixed[-1], fixed[-1], 0.0
    else:
        i = next(i for i in range(len(fixed) - 1) if fixed[i][x] <= xp <= fixed[i + 1][x])
        a, b = fixed[i], fixed[i + 1]
        w = (xp - a[x]) / (b[x] - a[x]) if b[x] > a[x] else 0.0
    y_front = (1 - w) * a[y] + w * b[y]
    gap = me[y] - y_front
    ses = [me.get(f"{y}_se"), a.get(f"{y}_se"), b.get(f"{y}_se")]
    if None in ses:
        lo = hi = None
    else:
        se = math.sqrt(ses[0] ** 2 + ((1 - w) * ses[1]) ** 2 + (w * ses[2]) ** 2)
        t = float(stats.t.ppf(0.975, max(1, min(me["seeds"], a["seeds"], b["seeds"]) - 1)))
        lo, hi = gap - t * se, gap + t * se
    verdict = ("beyond the frontier" if lo is not None and lo > 0 else
               "short of the frontier" if hi is not None and hi < 0 else
               "on the frontier (not separable)" if lo is not None else "no interval (one seed)")
    return {"strategy": who, "x": x, "y": y, "at_x": xp, "frontier_y": y_front, "y_value": me[y], "gap": gap,
            "gap_low": lo, "gap_high": hi, "between": [a["strategy"], b["strategy"]], "verdict": verdict}


def _fmt(v: float | None, lo: float | None = None, hi: float | None = None, nd: int = 3) -> str:
    if v is None:
        return "–"
    s = f"{v:.{nd}f}"
    return s + (f" [{lo:.{nd}f}, {hi:.{nd}f}]" if lo is not None and hi is not None else "")


def write_figure(data: dict, path: Path) -> Path:
    """pareto.html: full-network vs subnet accuracy, one point per run with its Wilson intervals, strategy means
    as larger markers. plotly is imported here only (``--figure``; the GPU machine has no plotly)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for strat in dict.fromkeys(p["strategy"] for p in data["points"]):
        ps = [p for p in data["points"] if p["strategy"] == strat]
        fig.add_trace(go.Scatter(
            x=[p["full_acc"] for p in ps], y=[p["subnet_acc"] for p in ps], mode="markers", name=strat,
            text=[p["run"] for p in ps],
            error_x={"type": "data", "symmetric": False, "array": [p["full_acc_high"] - p["full_acc"] for p in ps],
                     "arrayminus": [p["full_acc"] - p["full_acc_low"] for p in ps]},
            error_y={"type": "data", "symmetric": False,
                     "array": [p["subnet_acc_high"] - p["subnet_acc"] for p in ps],
                     "arrayminus": [p["subnet_acc"] - p["subnet_acc_low"] for p in ps]}))
    means = [m for m in data["strategies"].values() if "full_acc" in m]
    fig.add_trace(go.Scatter(x=[m["full_acc"] for m in means], y=[m["subnet_acc"] for m in means],
                             mode="markers+text", text=[m["strategy"] for m in means], textposition="top center",
                             marker={"size": 14, "symbol": "diamond-open"}, name="mean over seeds"))
    fig.update_layout(title="Toy study: full network vs subnets (toy accuracy, 95% intervals)",
                      xaxis_title="full-network toy accuracy", yaxis_title="subnet toy accuracy (d2+d4+d6 pooled)")
    path.write_text(fig.to_html(include_plotlyjs=True, full_html=True))
    return path


def markdown(data: dict, cfg: Any) -> str:
    """table.md of ``stage_report``'s data; ``cfg``: the study's config (model, budgets, samples, switch, depths)."""
    pts, means = data["points"], data["strategies"]
    sub = "/".join(f"d{d}" for d in cfg.depths)
    kl_note = ("Guided KL per token (mean over scales): a subnet's against its own full network, and each "
               "network's against the pretrained full network (teacher-forced on its samples).")
    lines = [f"Toy study: {cfg.model}, fine-tuned from the pretrained full network, {cfg.finetune_steps} steps at "
             f"batch {cfg.finetune_batch} per run; {cfg.samples} samples per schedule, cfg {cfg.cfg}, switch "
             f"{cfg.switch}. Subnet accuracy pools {sub} ({len(cfg.depths)} x {cfg.samples} samples, Wilson "
             f"interval); strategy rows are means over seeds with a 95% t-interval over seeds. " + kl_note, ""]
    pre = next((p for p in pts if p["run"] == "pretrain"), None)
    if pre:
        acc = _fmt(pre["full_acc"], pre["full_acc_low"], pre["full_acc_high"])
        lines += [f"Pretrained full network: toy accuracy {acc}"
                  f" (goal >= 0.85: {'met' if pre['full_acc'] >= 0.85 else 'missed'}); its subnets before "
                  f"fine-tuning: {_fmt(pre['subnet_acc'], pre['subnet_acc_low'], pre['subnet_acc_high'])}.", ""]
    lines += ["| strategy | seeds | full acc | subnet acc | full FD | subnet FD | subnet guided KL | "
              "full KL to pretrained | subnet KL to pretrained |", "|---|---|---|---|---|---|---|---|---|"]
    for s, m in means.items():
        lines.append(f"| {s} | {m['seeds']} | {_fmt(m.get('full_acc'), m.get('full_acc_low'), m.get('full_acc_high'))}"
                     f" | {_fmt(m.get('subnet_acc'), m.get('subnet_acc_low'), m.get('subnet_acc_high'))}"
                     f" | {_fmt(m.get('full_fd'), nd=2)} | {_fmt(m.get('subnet_fd'), nd=2)}"
                     f" | {_fmt(m.get('subnet_kl'))} | {_fmt(m.get('full_kl_pretrained'))}"
                     f" | {_fmt(m.get('subnet_kl_pretrained'))} |")
    lines += ["", "Per run (Wilson intervals over the samples):", "",
              "| run | full acc | subnet acc | " + " | ".join(f"d{d} acc" for d in cfg.depths) + " |",
              "|---|---|---|" + "---|" * len(cfg.depths)]
    for p in pts:
        lines.append(f"| {p['run']} | {_fmt(p['full_acc'], p['full_acc_low'], p['full_acc_high'])} | "
                     f"{_fmt(p['subnet_acc'], p['subnet_acc_low'], p['subnet_acc_high'])} | "
                     + " | ".join(_fmt(p.get(f'd{d}_toy_acc'), p.get(f'd{d}_toy_acc_low'), p.get(f'd{d}_toy_acc_high'))
                                  for d in cfg.depths) + " |")
    lines += ["", "Against the frontier of the fixed ratios (piecewise-linear through the fixed-p means; "
              "+ = beyond it):", ""]
    for g in data["frontier_gaps"]:
        lines.append(f"- {g['strategy']}: {g['y']} {g['gap']:+.3f}"
                     + (f" [{g['gap_low']:+.3f}, {g['gap_high']:+.3f}]" if g["gap_low"] is not None else "")
                     + f" at its {g['x']} {g['at_x']:.3f} (frontier {g['frontier_y']:.3f}, "
                     + (f"between {' and '.join(g['between'])}" if g["between"][0] != g["between"][1]
                        else f"flat beyond {g['between'][0]}") + f"): **{g['verdict']}**.")
    if not data["frontier_gaps"]:
        lines.append("- not enough runs yet (needs progressive and two fixed ratios).")
    if data["missing_runs"]:
        lines += ["", f"Missing runs: {', '.join(data['missing_runs'])}."]
    return "\n".join(lines) + "\n"
