"""Regenerate the README screenshot (docs/img/report.png) from a records directory.

    python benchmarks/screenshot.py results/quick                # -> docs/img/report.png
    python benchmarks/screenshot.py results/paper-cpu --out docs/img/report.png --height 2400

Writes report.md/report.html for the records (``bpfree report``), checks in headless Chromium
that every plot is drawn and the page has no script errors, then takes the screenshot. Needs
Chromium (``apt-get install chromium``, or ``--chromium PATH`` / ``$BPFREE_CHROMIUM``); offline.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bpfree.bench.html import write_report  # noqa: E402


def find_chromium(given: str | None) -> str:
    for c in (given, os.environ.get("BPFREE_CHROMIUM"), shutil.which("chromium"),
              shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if c and Path(c).exists():
            return c
    sys.exit("screenshot: Chromium not found (apt-get install chromium, or --chromium PATH)")


def chrome(exe: str, profile: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", help="records directory written by `bpfree bench`")
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "report.png"))
    ap.add_argument("--width", type=int, default=1300)
    ap.add_argument("--height", type=int, default=1700)
    ap.add_argument("--title", help="report title")
    ap.add_argument("--chromium", help="path of the chromium binary")
    args = ap.parse_args()
    exe = find_chromium(args.chromium)
    with tempfile.TemporaryDirectory(prefix="bpfree-shot-") as tmp:
        _, page = write_report(args.records, out=tmp, title=args.title)
        dom = chrome(exe, f"{tmp}/profile", "--dump-dom", page.as_uri()).stdout
        tag = re.search(r'<p id="render-check"[^>]*>', dom)
        if not tag or 'data-ok="1"' not in tag.group(0):
            sys.exit(f"screenshot: the report did not render cleanly: {tag.group(0) if tag else dom[-500:]}")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        r = chrome(exe, f"{tmp}/profile", f"--window-size={args.width},{args.height}",
                   f"--screenshot={out.resolve()}", page.as_uri())
        if r.returncode != 0 or not out.is_file():
            sys.exit(f"screenshot: chromium failed: {r.stderr[-1000:]}")
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB) from {args.records}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
