"""Run folders: per-shard results kept without pickle, reused by a rerun of the same step on the
same inputs (a killed driver resumes, the log says which stages), never reused for other inputs."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import write_pool

from clipsift.executor import LocalExecutor
from clipsift.filter import RowFilter, RunContext
from clipsift.params import Param
from clipsift.pool import Pool
from clipsift.registry import create_filter
from clipsift.runner import run_to_subset
from clipsift.stagecache import NotStorable, RunFolder, dumps, loads
from clipsift.uids import UID_DTYPE

TESTS = Path(__file__).parent


class SlowFilter(RowFilter):
    """Keeps rows with an even uid; sleeps per shard (SLOW_EVEN_DELAY seconds, outside its
    parameters so a rerun is the same step) so a test can kill the run part-way."""

    name = "slow_even"
    params = (Param("modulus", int, 2, "keep uids divisible by this", min=1),)

    def keep(self, batch):
        time.sleep(float(os.environ.get("SLOW_EVEN_DELAY", "0")))
        return batch.uids["f1"] % self.modulus == 0


def test_results_round_trip_without_pickle():
    uids = np.array([(1, 2), (3, 4)], dtype=UID_DTYPE)
    obj = (uids, Counter(input=3, kept=2), {"score": np.arange(3.0), "n": 7, "x": 0.5, "none": None},
           [np.int64(4), np.float32(1.5), True, "s"])
    back = loads(dumps(obj))
    np.testing.assert_array_equal(back[0], uids)
    assert back[0].dtype == UID_DTYPE
    assert isinstance(back[1], Counter) and back[1] == Counter(input=3, kept=2) and back[1]["absent"] == 0
    np.testing.assert_array_equal(back[2]["score"], np.arange(3.0))
    assert back[2]["n"] == 7 and back[2]["x"] == 0.5 and back[2]["none"] is None
    assert back[3] == [4, 1.5, True, "s"] and isinstance(back[3][0], np.int64)
    with pytest.raises(NotStorable):
        dumps((np.array([object()], dtype=object),))
    with pytest.raises(NotStorable):
        dumps({1: 2})


def _run(pool_dir, out, run_dir, name="clip_score", params=None, workers=1):
    ctx = RunContext(Pool(str(pool_dir)), LocalExecutor(workers, show_progress=False), workdir=out.parent / f"w-{out.stem}",
                     run_dir=RunFolder(str(run_dir)) if run_dir else None)
    f = SlowFilter(**(params or {})) if name == "slow_even" else create_filter(name, params or {"arch": "l14", "fraction": 0.3})
    path, _ = run_to_subset(f, ctx, out)
    return Path(path).read_bytes()


def test_rerun_reuses_finished_shards_and_says_so(tmp_path, caplog):
    pool = write_pool(tmp_path / "pool", [20] * 6)
    clean = _run(pool, tmp_path / "clean.npy", None)
    first = _run(pool, tmp_path / "a.npy", tmp_path / "run")
    assert first == clean
    stages = sorted(p for p in (tmp_path / "run").iterdir() if p.name != "scratch")  # scratch: parts and masks
    assert stages and all((s / "_DONE.json").is_file() for s in stages)
    # a run killed part-way: half the shard results of one stage, no marker
    victim = stages[0]
    (victim / "_DONE.json").unlink()
    for f in sorted(victim.glob("*.npz"))[3:]:
        f.unlink()
    (sorted(victim.glob("*.npz"))[0]).write_bytes(b"damaged")  # a damaged result is recomputed
    with caplog.at_level(logging.INFO, logger="clipsift"):
        again = _run(pool, tmp_path / "b.npy", tmp_path / "run")
    assert again == clean
    assert f"stage {victim.name.rsplit('-', 1)[0]}: 2 of 6 shards reused" in caplog.text
    assert "unreadable stored result" in caplog.text


def test_other_inputs_never_reuse_stored_results(tmp_path):
    pool = write_pool(tmp_path / "pool", [20] * 4)
    _run(pool, tmp_path / "a.npy", tmp_path / "run")
    before = {p.name for p in (tmp_path / "run").iterdir()}
    # other parameters: other stage folders
    _run(pool, tmp_path / "b.npy", tmp_path / "run", params={"arch": "l14", "fraction": 0.5})
    after_params = {p.name for p in (tmp_path / "run").iterdir()}
    assert after_params > before
    time.sleep(0.01)
    # the pool rewritten in place with other scores (same shard names, same rows): not reused
    import pyarrow as pa
    import pyarrow.parquet as pq

    for f in sorted(pool.glob("*.parquet")):
        t = pq.read_table(f)
        i = t.schema.get_field_index("clip_l14_similarity_score")
        pq.write_table(t.set_column(i, "clip_l14_similarity_score", pa.array(t.column(i).to_numpy()[::-1].copy())), f)
    fresh = _run(pool, tmp_path / "c.npy", None)
    reused = _run(pool, tmp_path / "d.npy", tmp_path / "run")
    assert reused == fresh


def test_killed_driver_resumes_with_the_same_bytes(tmp_path):
    pool = write_pool(tmp_path / "pool", [10] * 12)
    clean = _run(pool, tmp_path / "clean.npy", None, name="slow_even")
    script = (
        "import sys, logging; sys.path[:0] = [{!r}, {!r}]\n"
        "from clipsift.log import configure_logging; configure_logging(0)\n"
        "from test_stage_resume import _run; from pathlib import Path\n"
        "_run(Path({!r}), Path({!r}), Path({!r}), name='slow_even')\n"
    ).format(str(TESTS), str(TESTS.parent), str(pool), str(tmp_path / "out.npy"), str(tmp_path / "run"))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL, env={**os.environ, "SLOW_EVEN_DELAY": "0.4"})
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "run").glob("*/*.npz"))) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((tmp_path / "run").glob("*/*.npz")))
    assert 4 <= done < 12 and not (tmp_path / "out.npy").exists()
    rerun = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "SLOW_EVEN_DELAY": "0"})
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done} of 12 shards reused from the run folder" in rerun.stderr
    assert (tmp_path / "out.npy").read_bytes() == clean
    assert not [p for p in tmp_path.rglob("*.tmp")]
