"""Look at the findings page as a person would: render it in headless Chromium and check the screenshot.

Skipped when `chromium` is not on PATH (Debian: `apt-get install chromium`; the lead's CI installs it).
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from test_report import DS, make_inputs

from deepfeat.report import build_tables, write_findings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")


def _screenshot(url: str, png, profile, size=(1280, 2000)) -> None:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        f"--window-size={size[0]},{size[1]}",
        url,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert png.is_file(), f"chromium wrote no screenshot (exit {r.returncode}): {r.stderr[-2000:]}"


def test_findings_page_renders(tmp_path):
    import matplotlib.image as mpimg

    inputs, _ = make_inputs(tmp_path / "in")
    build_tables(**inputs, tables=tmp_path / "tables", settings={}, dataset=DS)
    html = tmp_path / "findings.html"
    write_findings(tables=tmp_path / "tables", md=tmp_path / "findings.md", html=html, settings={}, dataset=DS)
    png = tmp_path / "page.png"
    _screenshot(html.resolve().as_uri(), png, tmp_path / "profile")
    img = mpimg.imread(png)[..., :3]
    assert img.shape[:2] == (2000, 1280)
    ink = img.mean(axis=-1) < 0.6  # dark pixels: text and table rules
    rows = ink.any(axis=1)
    assert ink.mean() > 0.01, "page is (almost) blank"
    assert rows[:1000].mean() > 0.3 and rows[1000:].mean() > 0.3, "text does not fill the page"
    # the heading colour (#2a4d7f) and the table header background (#eef2f8) are drawn: CSS was applied
    assert (np.abs(img - np.array([0x2A, 0x4D, 0x7F]) / 255).max(axis=-1) < 0.08).sum() > 200
    assert (np.abs(img - np.array([0xEE, 0xF2, 0xF8]) / 255).max(axis=-1) < 0.02).sum() > 2000
