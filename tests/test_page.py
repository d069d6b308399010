"""The plan page: one self-contained HTML file, rendered by headless Chromium (Debian's
``chromium``; .ci/run installs it) into a screenshot that is not blank, with no console
messages. A deliberately broken page shows that the console check does catch errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from planner.cli import cli
from planner.page import render_report_page
from tests.conftest import ROOT
from tests.test_executor import replay, valid_actions

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str | None:
    given = os.environ.get("CHROMIUM")
    if given and shutil.which(given):
        return shutil.which(given)
    for name in CANDIDATES:
        if shutil.which(name):
            return shutil.which(name)
    return None


def render(page: Path, png: Path) -> tuple[str, str]:
    """Screenshot ``page``; returns Chromium's console lines and the DOM after scripts."""
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={png.parent / 'chromium-profile'}", "--enable-logging=stderr",
            "--v=0", "--window-size=1250,1400"]
    shot = subprocess.run([*base, f"--screenshot={png}", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert png.is_file(), shot.stderr[-2000:]
    console = "\n".join(line for line in shot.stderr.splitlines() if ":CONSOLE" in line)
    dom = subprocess.run([*base, "--dump-dom", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=180).stdout
    return console, dom


def assert_not_blank(png: Path) -> None:
    import matplotlib.image

    img = np.asarray(matplotlib.image.imread(png))[..., :3]
    ink = (img.min(axis=2) < 0.9).mean()  # share of pixels that are not near-white
    colors = len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert 0.005 < ink < 0.9 and colors > 20, (ink, colors)


def test_plan_page_renders_without_errors(tmp_path: Path) -> None:
    inst = ROOT / "instances" / "swap.json"
    res = CliRunner().invoke(cli, ["solve", str(inst), "--solver", "fcfs-lru", "-o", "plan.json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["show", "plan.json", "--instance", str(inst), "--html",
                                   "page.html"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    html = Path("page.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # self-contained
    for text in ("box-gpu0", "GPU memory", "fcfs-lru", "grouped", "weighted mean response"):
        assert text in html
    console, dom = render(Path("page.html"), tmp_path / "plan.png")
    assert console == ""
    assert 'data-ready="1"' in dom  # the page's script ran to its end
    assert_not_blank(tmp_path / "plan.png")


def test_report_page_shows_predicted_and_measured(tmp_path: Path) -> None:
    _, report = replay(tmp_path, valid_actions())
    page = tmp_path / "report.html"
    page.write_text(render_report_page(report))
    assert "predicted against measured" in page.read_text()
    console, dom = render(page, tmp_path / "report.png")
    assert console == "" and 'data-ready="1"' in dom
    assert_not_blank(tmp_path / "report.png")


def test_console_errors_are_caught(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><html><body><h1>broken</h1>"
                    "<script>console.error('bad'); notDefined();</script></body></html>")
    console, dom = render(page, tmp_path / "broken.png")
    assert "bad" in console and "notDefined" in console
    assert 'data-ready="1"' not in dom


def test_show_html_needs_a_plan_or_report(tmp_path: Path) -> None:
    Path("x.json").write_text(json.dumps({"format": "planner.instance/1"}))
    res = CliRunner().invoke(cli, ["show", "x.json", "--html", "x.html"])
    assert res.exit_code == 2 and "expected 'planner.plan/1'" in res.output
    assert not Path("x.html").exists()
    res = CliRunner().invoke(cli, ["show", "x.json"])
    assert res.exit_code == 2 and "--html" in res.output
