"""The leaderboard HTML page in headless Chromium: renders, sorts, shows its images, logs nothing.

The screenshot is kept as a test artefact in $CLIPSIFT_TEST_ARTIFACTS (default: <repo>/tmp/test-artifacts,
which git ignores).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_leaderboard import _make_runs  # noqa: E402  (tests/ is on sys.path under pytest)

from clipsift.leaderboards.build import write_comparison, write_leaderboards
from clipsift.leaderboards.compare import build_comparison
from clipsift.leaderboards.store import ResultsStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(
    os.environ.get(
        "CLIPSIFT_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "tmp" / "test-artifacts"
    )
)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not installed (apt-get install chromium; see .ci/setup-system.sh)",
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]


def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *extra,
        page.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def console_messages(stderr: str) -> list[str]:
    """Console output of the page (errors, warnings and logs alike: the page must log nothing)."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]


def check_page(page: Path, tmp_path: Path, name: str) -> str:
    run = chromium(page, tmp_path / f"profile-dom-{name}", "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert console_messages(run.stderr) == []
    dom = run.stdout
    assert 'data-sortable="ready"' in dom  # the page script ran to its end
    m = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) >= 1, "images did not decode"
    shot = tmp_path / f"{name}.png"
    run = chromium(
        page, tmp_path / f"profile-shot-{name}", f"--screenshot={shot}", "--window-size=1400,2000"
    )
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    assert console_messages(run.stderr) == []
    with Image.open(shot) as im:
        assert im.size == (1400, 2000)
        colours = im.convert("RGB").resize((140, 200)).getcolors(maxcolors=100_000)
        assert colours is not None and len(colours) > 20  # not a blank page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / shot.name)
    return dom


def test_leaderboard_page_renders_in_chromium(tmp_path):
    store = ResultsStore.from_paths([_make_runs(tmp_path)])
    out = tmp_path / "lb"
    write_leaderboards(store, out, formats=("plots", "html"))
    dom = check_page(out / "index.html", tmp_path, "leaderboard_page")
    n_rows = len(re.findall(r'<tr class="(?:yours|published|baseline)', dom))
    assert n_rows == 24  # 3 run groups + 21 published small-scale entries
    assert dom.count('<tr class="yours') == 3 and "partial 37/38; missing: SVHN" in dom


def test_compare_page_renders_in_chromium(tmp_path):
    store = ResultsStore.from_paths([_make_runs(tmp_path)])
    write_comparison(build_comparison(store.groups), tmp_path / "h2h")
    dom = check_page(tmp_path / "h2h" / "compare.html", tmp_path, "compare_page")
    assert "clipcov vs dbp vs negclip" in dom


def test_harness_sees_console_errors(tmp_path):
    """The console check above is only worth something if it catches a failing script."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>x</p><script>console.error('bad'); missingFn();</script></body></html>"
    )
    run = chromium(page, tmp_path / "profile", "--dump-dom")
    msgs = console_messages(run.stderr)
    assert any("bad" in m for m in msgs) and any("missingFn" in m for m in msgs)


def _tiny_runs(root: Path) -> Path:
    """Tiny-suite runs, two seeds per method, with the seedless ground-truth figures in run.json."""
    import json

    from clipsift.leaderboards.tasks import tiny_tasks

    tasks = tiny_tasks().tasks
    for method, base, jitter, mis in (("clip_score", 0.40, 0.01, 0.7), ("clipcov", 0.395, 0.012, 0.6), ("no_filter", 0.25, 0.01, 13.3)):
        for seed in (0, 1):
            run = root / "runs" / f"{method}_s{seed}"
            run.mkdir(parents=True)
            v = base + (jitter if seed else -jitter)
            with open(run / "eval_results.jsonl", "w") as fh:
                for t in tasks:
                    fh.write(json.dumps({"key": t.key, "dataset": t.name, "metrics": {"acc1": v, "main_metric": v}}) + "\n")
            meta = {"method": method, "scale": "tiny", "seed": seed, "suite": "tiny", "dataset_size": 2400, "samples_seen": 16384,
                    "subset": {"path": str(run / "s.npy"), "manifest": {"filter": method, "params": {"fraction": 0.3}}},
                    "data_quality": {"rows": 2400, "mismatched": mis, "duplicated": 25.0, "non_english": 4.3,
                                     "concepts": 32, "concepts_of": 32, "tail": 9.2}}
            (run / "run.json").write_text(json.dumps(meta))
    return root / "runs"


def test_tiny_leaderboard_page_shows_std_ties_and_quality(tmp_path):
    store = ResultsStore.from_paths([_tiny_runs(tmp_path)])
    out = tmp_path / "lb"
    write_leaderboards(store, out, formats=("plots", "html"), include_published=False)
    dom = check_page(out / "index.html", tmp_path, "tiny_leaderboard_page")
    assert "0.400 ± 0.014" in dom  # mean ± sample std over the two seeds
    assert "tied with clipcov" in dom and "tied with clip_score" in dom  # 0.005 apart, 2 std = 0.034
    assert dom.count("separated") == 1  # no_filter: far below both
    assert "Data quality from the ground truth (seedless)" in dom and "13.3" in dom and "32/32" in dom
