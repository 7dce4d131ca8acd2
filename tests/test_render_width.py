"""Terminal tables fit the terminal: at 80 columns the sweep table drops whole columns, never cuts numbers."""
from __future__ import annotations

import pytest
from rich.console import Console

from varbench.cli.render import sweep_table

ROWS = [{"model": "var-d30", "weights": "random", "depth": d, "switch": 6, "batch": 64, "status": "ok", "n": 5,
         "latency_ms_p50": 483.01, "latency_ms_p90": 490.2, "decode_ms_p50": 94.6, "images_per_s": 132.5,
         "kv_bytes": 2.1e10, "kv_bytes_analytic": 2.1e10, "peak_allocated_bytes": 2.6e10,
         "nvml_peak_used_bytes": 2.7e10} for d in (2, 30)]


@pytest.mark.parametrize("width", [80, 100, 200])
def test_sweep_table_fits_and_keeps_numbers_whole(width):
    con = Console(width=width, record=True, force_terminal=False)
    con.print(sweep_table(ROWS, width=width))
    text = con.export_text()
    assert all(len(line.rstrip()) <= width for line in text.splitlines())
    assert "…" not in text
    assert "483.0" in text and "20,027" in text and "132.5" in text     # the deciding numbers, whole
    assert ("not shown at this width" in text) == (width < 200)


@pytest.mark.parametrize("width", [80, 120])
def test_check_table_keeps_metric_names_and_numbers_whole(width):
    from types import SimpleNamespace as V

    from varbench.cli.commands.check import verdict_table

    verdicts = [V(metric=f"var-d30/d{d}/s6/b64/bf16/isometric/{f}", baseline=b, now=b * 1.01, change=0.01, unit=u,
                  verdict="ok", detail="x1.01, p=0.4 (alpha 0.05, factor 1.2)", failed=False)
                for d in (2, 16) for f, b, u in (("latency_ms_p50", 483.0, "ms"), ("kv_bytes_analytic", 5.3e9, "bytes"),
                                                 ("flops", 2.41e14, "FLOP"))]
    con = Console(width=width, record=True, force_terminal=False)
    con.print(verdict_table(V(verdicts=verdicts), width=width))
    text = con.export_text()
    assert all(len(line.rstrip()) <= width for line in text.splitlines())
    assert "…" not in text and "kv_bytes_analytic" in text and "latency_ms_p50" in text
    assert ("d16/" in text or "d16" in text) and "var-d30" in text.splitlines()[0]
