"""`dvc plots show` renders offline: the vendored page template, and a real headless Chromium with the
network off drawing every chart of a page DVC wrote (issue 19 item 6)."""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ser.eval import plotpage

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))


def test_vendored_template_is_what_the_pinned_wheel_bundles():
    """.dvc/plots/offline.html is regenerated from vl-convert-python, not edited by hand."""
    assert (ROOT / plotpage.TEMPLATE).read_text(encoding="utf-8") == plotpage.build_template(), \
        "stale .dvc/plots/offline.html: run `python -m ser.eval.plotpage write`"


def test_dvc_config_points_at_the_offline_template():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert (ROOT / ".dvc" / config["plots"]["html_template"]).resolve() == (ROOT / plotpage.TEMPLATE).resolve()
    page = (ROOT / plotpage.TEMPLATE).read_text(encoding="utf-8")
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC's CDN <script> tags go in {scripts}
    assert "<script src" not in page and "window.vegaEmbed=" in page


@pytest.mark.parametrize("placeholder", ["{plot_divs}", "{scripts}", "</script>"])
def test_page_template_refuses_a_bundle_it_cannot_inline(placeholder):
    with pytest.raises(ValueError, match="cannot be inlined"):
        plotpage.page_template(f"var x = '{placeholder}';", "test")


def _browser() -> str:
    browser = plotpage.find_browser()
    if browser is None:
        if os.environ.get("SER_REQUIRE_BROWSER"):
            pytest.fail("SER_REQUIRE_BROWSER is set but no Chromium was found")
        pytest.skip("no Chromium (Debian's `chromium` package); CI installs it and sets SER_REQUIRE_BROWSER")
    return browser


def _project(tmp_path: Path) -> Path:
    """A DVC project with a training curve and a confusion matrix, set up as this repository is."""
    proj = tmp_path / "proj"
    proj.mkdir()
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=proj, check=True)
    (proj / ".dvc" / "plots").mkdir()
    shutil.copy(ROOT / plotpage.TEMPLATE, proj / plotpage.TEMPLATE)
    shutil.copy(ROOT / ".dvc" / "config", proj / ".dvc" / "config")
    (proj / "loss.tsv").write_text("step\tloss\n0\t1.3\n1\t0.9\n2\t0.7\n")
    rows = [("angry", "angry"), ("angry", "sad"), ("sad", "sad"), ("happy", "angry"), ("neutral", "neutral")]
    (proj / "confusion.csv").write_text("actual,predicted\n" + "".join(f"{a},{p}\n" for a, p in rows))
    (proj / "dvc.yaml").write_text("plots:\n  - loss.tsv:\n      x: step\n"
                                   "  - confusion.csv:\n      template: confusion\n      x: actual\n"
                                   "      y: predicted\n")
    return proj


@pytest.mark.slow
def test_dvc_plots_show_draws_every_chart_offline_in_chromium(tmp_path):
    browser = _browser()
    proj = _project(tmp_path)
    subprocess.run([DVC, "plots", "show", "-o", "offline"], cwd=proj, check=True, capture_output=True)
    assert plotpage.drawn_charts(proj / "offline" / "index.html", browser) == (2, 2)

    # Control: DVC's own page (Vega from a CDN) draws nothing offline, so the check can fail.
    from dvc_render.html import PAGE_HTML
    (proj / "cdn.html").write_text(PAGE_HTML)
    subprocess.run([DVC, "plots", "show", "-o", "cdn", "--html-template", "cdn.html"], cwd=proj, check=True,
                   capture_output=True)
    assert "cdn.jsdelivr.net" in (proj / "cdn" / "index.html").read_text()
    assert plotpage.drawn_charts(proj / "cdn" / "index.html", browser) == (0, 2)


@pytest.mark.slow
def test_check_command_exits_nonzero_when_a_chart_does_not_draw(tmp_path):
    browser = _browser()
    proj = _project(tmp_path)
    subprocess.run([DVC, "plots", "show", "-o", "out"], cwd=proj, check=True, capture_output=True)
    page = proj / "out" / "index.html"
    env = {**os.environ, "SER_BROWSER": browser}
    ok = subprocess.run([sys.executable, "-m", "ser.eval.plotpage", "check", str(page)], capture_output=True,
                        text=True, env=env)
    assert ok.returncode == 0 and "2 of 2 charts drawn offline" in ok.stderr
    # A spec Vega-Lite rejects: the chart shows its error in place and the check fails.
    head, _, body = page.read_text().rpartition("<body>")
    assert '"mark":' in body
    page.write_text(head + "<body>" + body.replace('"mark":', '"mark": "no-such-mark", "_unused":', 1))
    bad = subprocess.run([sys.executable, "-m", "ser.eval.plotpage", "check", str(page)], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 1 and "1 of 2 charts drawn offline" in bad.stderr
    assert "chart failed:" in plotpage.rendered_dom(page, browser)


def test_check_command_without_a_browser_is_one_line(tmp_path):
    page = tmp_path / "index.html"
    page.write_text("<html></html>")
    env = {**os.environ, "SER_BROWSER": str(tmp_path / "no-such-browser")}
    proc = subprocess.run([sys.executable, "-m", "ser.eval.plotpage", "check", str(page)], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
