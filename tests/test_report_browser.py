"""Open the report in headless Chromium from a file:// URL: no console message at all, every figure rendered."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("plotly")

from test_report import EVIL, write_results  # noqa: E402  (tests/ is on sys.path under pytest)

from varbench.reporting.report import build_report  # noqa: E402

pytestmark = pytest.mark.browser

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _chromium() -> str | None:
    for c in CANDIDATES:
        path = c if Path(c).is_file() else shutil.which(c)
        if path:
            return path
    return None


def _render(html: Path, tmp_path: Path) -> tuple[str, str]:
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium on this machine")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", "--dump-dom", html.resolve().as_uri()]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish rendering the report within 120 s")
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout, res.stderr


def _console_lines(stderr: str) -> list[str]:
    # chromium logs every console message (log, warn, error, uncaught exception) as ...:CONSOLE(...)] "..."
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


def test_report_renders_without_console_messages(tmp_path):
    html = build_report([write_results(tmp_path / "res", model=EVIL)], tmp_path / "report.html")
    n_figs = html.read_text().count("Plotly.newPlot(")
    dom, stderr = _render(html, tmp_path)
    assert _console_lines(stderr) == [], "\n".join(_console_lines(stderr))
    # every plotly div got its SVG: split the DOM at each graph div and look for plotly's main-svg inside
    chunks = re.split(r'<div[^>]*class="[^"]*plotly-graph-div', dom)[1:]
    assert len(chunks) == n_figs == 6
    assert all('class="main-svg"' in c for c in chunks)
    # the hostile model name is text in the rendered page, not a script that ran
    assert "alert(1)" in dom and "<script>alert(1)</script>" not in dom


def test_console_error_detection_really_fires(tmp_path):
    """Guard for the guard: a page with an error must produce a console line, or the test above proves nothing."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    _, stderr = _render(page, tmp_path)
    assert any("undefinedFunction" in ln for ln in _console_lines(stderr))


@pytest.mark.parametrize("width,height", [(1400, 1000), (390, 844)])
def test_report_screenshots_at_desktop_and_phone_width(tmp_path, width, height):
    """The summary is what a reader sees first at both widths (screenshots kept under tmp_path for a look)."""
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium on this machine")
    html = build_report([write_results(tmp_path / "res")], tmp_path / "report.html")
    shot = tmp_path / f"report-{width}.png"
    res = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},{height}",
                          "--virtual-time-budget=5000", f"--screenshot={shot}", html.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == width
