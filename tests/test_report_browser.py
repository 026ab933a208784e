"""report.html renders in a real headless Chromium: every plot drawn, no console errors, offline.

Needs Chromium (Debian package ``chromium``; `.ci/setup_services.sh` installs it). The binary is
``$BPFREE_CHROMIUM`` if set, else ``chromium`` / ``chromium-browser`` on PATH; the test skips
with that reason when none is found.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bpfree.bench.html import write_report
from bpfree.records import RunRecord, record_path, write_record


def chromium() -> str | None:
    for c in (os.environ.get("BPFREE_CHROMIUM"), shutil.which("chromium"),
              shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if c and Path(c).exists():
            return c
    return None


def dump_dom(page: Path, tmp: Path) -> tuple[str, str]:
    exe = chromium()
    if exe is None:
        pytest.skip("Chromium not found (apt-get install chromium, or set BPFREE_CHROMIUM); "
                    ".ci/setup_services.sh installs it in CI")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'chrome-profile'}",
           "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, r.stderr


def console_errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines()
            if "CONSOLE" in ln and re.search(r"Uncaught|Error|error", ln)]


def make_records(root: Path) -> None:
    for ds in ("mnist", "fashion-mnist"):
        for rule, t, acc, reach in (("bp", 1.0, 0.97, True), ("mf", 0.6, 0.975, True),
                                    ("ff", 5.0, 0.95, False)):
            for seed in (0, 1):
                curve = [{"epoch": e, "train_loss": 1 / e, "val_acc": acc - 0.1 / e,
                          "time_s": t * e, "energy_j": 9 * t * e} for e in range(1, 6)]
                rec = RunRecord(rule=rule, dataset=ds, model="mlp:1000,1000", seed=seed,
                                suite="browser", test_acc=acc + 0.002 * seed, val_acc=acc, epochs=5,
                                train_time_s=5 * t, epoch_time_s=t, peak_mem_bytes=int(1e8 * t),
                                energy_j=45 * t, energy_method="estimate-tdp",
                                flops_per_step=int(2e9 * t), target_acc=0.96,
                                time_to_target_s=3 * t if reach else None, curve=curve,
                                machine={"cpu_model": "Test CPU", "torch_threads": 1},
                                commit="0123456789abcdef", dirty=True)
                write_record(rec, record_path(root, suite=rec.suite, dataset=ds, model=rec.model,
                                              rule=rule, seed=seed))


def test_report_renders_every_plot_without_errors(tmp_path):
    make_records(tmp_path / "records")
    _, page = write_report(tmp_path / "records")
    html_text = page.read_text()
    expected = int(re.search(r'id="render-check" data-expected="(\d+)"', html_text).group(1))
    assert expected == 10  # accuracy vs time/energy/memory, curves, ratio bars; x 2 datasets
    dom, err = dump_dom(page, tmp_path)
    m = re.search(r'<p id="render-check"[^>]*>', dom)
    assert m, "render check marker missing from the DOM"
    tag = m.group(0)
    assert 'data-ok="1"' in tag, tag
    assert f'data-drawn="{expected}"' in tag and 'data-errors="0"' in tag, tag
    assert not console_errors(err), console_errors(err)
    assert dom.count("energy ESTIMATED") >= expected and dom.count("commit 0123456789+dirty") >= expected


def test_render_check_catches_a_broken_page(tmp_path):
    """The check is not vacuous: an empty plot and a script error are both reported."""
    make_records(tmp_path / "records")
    _, page = write_report(tmp_path / "records")
    broken = page.read_text().replace('<svg class="plot"', '<svg class="plot" style="display:none"', 1)
    broken = broken.replace("</body>", "<script>undefinedFunction()</script></body>")
    bad = tmp_path / "broken.html"
    bad.write_text(broken)
    dom, err = dump_dom(bad, tmp_path)
    tag = re.search(r'<p id="render-check"[^>]*>', dom).group(0)
    assert 'data-ok="0"' in tag and 'data-drawn="9"' in tag and 'data-errors="1"' in tag, tag
    assert console_errors(err)
