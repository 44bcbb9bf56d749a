"""The HTML cost report renders in headless Chromium with its charts (scripts/report_screenshot.sh
decodes the screenshot and checks it is not blank and shows the chart colours)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; "
                                             "or run scripts/report_screenshot.sh as root)")
def test_report_screenshot_in_headless_chromium(tmp_path):
    out = tmp_path / "cost-report.png"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "report_screenshot.sh"), str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CHROMIUM": CHROMIUM, "PYTHON": sys.executable, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.stat().st_size > 20 * 1024
    assert "distinct colours" in proc.stdout
