"""clipsift reshard on bad input and unsafe output folders: one error line, exit 1, inputs unchanged,
nothing left behind, and the rerun after the fix works without --overwrite."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from test_reshard import _uid, read_output, write_shards

from clipsift.cli import main as cli
from clipsift.errors import ClipsiftError
from clipsift.eval.reshard import MARKER, ReshardArgs, reshard
from clipsift.eval.train import TrainConfig, build_open_clip_args
from clipsift.subset import write_subset
from clipsift.uids import UID_DTYPE, hex_to_records


@pytest.fixture
def work(tmp_path):
    """Complete shards (every sample has jpg/json/txt) and a subset of 6 of their 16 samples."""
    samples = write_shards(tmp_path / "in", [5, 7, 4])
    subset = write_subset(tmp_path / "subset.npy", hex_to_records([samples[i][0] for i in (0, 2, 5, 8, 9, 15)]))
    return tmp_path, samples, subset


def checksums(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out.update({str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    return out


def run_cli(capsys, tmp_path, out, subset, *extra) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli(["reshard", "-i", str(tmp_path / "in"), "-o", str(out), "-s", str(subset), *extra])
    return rc, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clipsift: error: "), err
    assert "Traceback" not in err
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".reshard-" in p.name)


# ---- overlapping input and output ----------------------------------------------------------------
@pytest.mark.parametrize("case", ["same", "inside_input", "contains_input", "contains_subset", "symlink_to_input"])
def test_overlapping_output_refused(work, capsys, case):
    tmp_path, _, subset = work
    inp = tmp_path / "in"
    if case == "contains_subset":  # the subset lives in the folder that would be replaced
        (tmp_path / "prev").mkdir()
        subset = write_subset(tmp_path / "prev" / "s.npy", np.load(subset))
    out = {"same": inp, "inside_input": inp / "out", "contains_input": tmp_path, "contains_subset": tmp_path / "prev",
           "symlink_to_input": tmp_path / "link"}[case]
    if case == "symlink_to_input":
        out.symlink_to(inp, target_is_directory=True)
    before = checksums(inp, Path(subset))
    for extra in ((), ("--overwrite",)):
        rc, err = run_cli(capsys, tmp_path, out, subset, *extra)
        assert rc == 1
        line = one_line(err)
        assert ("input folder" in line) if case != "contains_subset" else ("subset file" in line)
    assert checksums(inp, Path(subset)) == before
    assert not (inp / "out").exists() and leftovers(tmp_path) == [] and leftovers(inp) == []


def test_overwrite_replaces_only_its_own_output(work, capsys):
    tmp_path, _, subset = work
    out = tmp_path / "out"
    assert run_cli(capsys, tmp_path, out, subset, "--shard-size", "2")[0] == 0
    assert (out / MARKER).is_file()
    own = set(json.loads((out / MARKER).read_text())["files"])
    assert {"meta.json", "sample_ids.npy", "00000000.tar", "00000002_stats.json"} <= own

    (out / "notes.txt").write_text("mine")  # something the user put there
    rc, err = run_cli(capsys, tmp_path, out, subset, "--overwrite")
    assert rc == 1 and "notes.txt" in one_line(err)
    assert (out / "notes.txt").read_text() == "mine" and (out / "00000002.tar").exists()
    (out / "notes.txt").unlink()

    (out / "sub").mkdir()  # a folder is never clipsift's
    rc, err = run_cli(capsys, tmp_path, out, subset, "--overwrite")
    assert rc == 1 and "sub" in one_line(err) and (out / "sub").is_dir()
    (out / "sub").rmdir()

    marker = (out / MARKER).read_text()
    (out / MARKER).write_text(json.dumps({"written_by": "someone else", "files": sorted(own)}))
    rc, err = run_cli(capsys, tmp_path, out, subset, "--overwrite")
    assert rc == 1 and "not written by clipsift reshard" in one_line(err)
    (out / MARKER).write_text(marker)

    assert run_cli(capsys, tmp_path, out, subset, "--overwrite", "-j", "1")[0] == 0  # shard size 10000: one shard now
    assert [k for k, _ in read_output(out)] and not (out / "00000001.tar").exists()
    assert leftovers(tmp_path) == []


def test_not_a_folder_and_remote_output(work, capsys):
    tmp_path, _, subset = work
    (tmp_path / "file").write_text("x")
    rc, err = run_cli(capsys, tmp_path, tmp_path / "file", subset, "--overwrite")
    assert rc == 1 and "not a folder" in one_line(err) and (tmp_path / "file").read_text() == "x"
    rc, err = run_cli(capsys, tmp_path, "memory://bucket/out", subset)
    assert rc == 1 and "local folder" in one_line(err)


# ---- broken input, full disk: one line, nothing left, rerun works --------------------------------
def _truncate_inside_member(tar: Path) -> None:
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2 + 100])


def _truncate_between_members(tar: Path) -> None:
    with tarfile.open(tar) as t:
        cut = t.getmembers()[6].offset  # header of the 7th member: the file ends cleanly after member 6
    tar.write_bytes(tar.read_bytes()[:cut])


def _garbage(tar: Path) -> None:
    tar.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())


def _drop_member(ext: str):
    def damage(tar: Path) -> None:
        buf = io.BytesIO()
        with tarfile.open(tar) as src, tarfile.open(fileobj=buf, mode="w") as dst:
            for info in src:
                if info.name != f"000000010002.{ext}":
                    dst.addfile(info, src.extractfile(info))
        tar.write_bytes(buf.getvalue())
    return damage


def _a_folder(tar: Path) -> None:
    tar.unlink()
    tar.mkdir()


DAMAGE = {
    "truncated_inside_member": (_truncate_inside_member, ["00000001.tar", "truncated or corrupt tar", "after member 0000000100"]),
    "truncated_between_members": (_truncate_between_members, ["00000001.tar", "end-of-archive", "after member 000000010001.txt"]),
    "garbage": (_garbage, ["00000001.tar", "truncated or corrupt tar", "at its start"]),
    "no_json": (_drop_member("json"), ["00000001.tar", "sample 000000010002 has no .json member", "--allow-incomplete"]),
    "no_txt": (_drop_member("txt"), ["00000001.tar", "sample 000000010002 has no .txt member", "re-download"]),
    "shard_is_a_folder": (_a_folder, ["00000001.tar", "cannot read this input shard"]),
}


@pytest.mark.parametrize("workers", ["1", "3"])
@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_bad_shard_one_line_nothing_left(work, capsys, case, workers):
    tmp_path, _, subset = work
    good = (tmp_path / "in" / "00000001.tar").read_bytes()
    damage, expect = DAMAGE[case]
    damage(tmp_path / "in" / "00000001.tar")
    before = checksums(tmp_path / "in", Path(subset))
    out = tmp_path / "out"
    rc, err = run_cli(capsys, tmp_path, out, subset, "-j", workers, "--shard-size", "1")
    assert rc == 1
    line = one_line(err)
    for part in expect:
        assert part in line, line
    assert checksums(tmp_path / "in", Path(subset)) == before  # inputs unchanged
    assert not out.exists() and leftovers(tmp_path) == []
    # fix: restore the shard; the rerun needs no --overwrite
    bad = tmp_path / "in" / "00000001.tar"
    if bad.is_dir():
        bad.rmdir()
    bad.write_bytes(good)
    rc, err = run_cli(capsys, tmp_path, out, subset, "-j", workers, "--shard-size", "1")
    assert rc == 0, err
    assert len(read_output(out)) == 6


def test_allow_incomplete_is_datacomp_leniency(work):
    tmp_path, samples, subset = work
    _drop_member("json")(tmp_path / "in" / "00000001.tar")  # sample 7 (not in the subset) loses its json
    _drop_member("txt")(tmp_path / "in" / "00000000.tar")  # nothing named 000000010002 there: unchanged
    res = reshard(ReshardArgs(str(tmp_path / "in"), str(tmp_path / "out"), str(subset), num_workers=1, allow_incomplete=True))
    assert res.output_count == 6 and res.processed_count == 15  # the json-less sample is skipped, not counted


def test_pre_existing_empty_output_stays_after_failure(work, capsys):
    tmp_path, _, subset = work
    out = tmp_path / "out"
    out.mkdir()  # DataComp's resharder wants the folder to exist
    good = (tmp_path / "in" / "00000002.tar").read_bytes()
    _garbage(tmp_path / "in" / "00000002.tar")
    rc, err = run_cli(capsys, tmp_path, out, subset)
    assert rc == 1 and "00000002.tar" in one_line(err)
    assert out.is_dir() and list(out.iterdir()) == [] and leftovers(tmp_path) == []
    (tmp_path / "in" / "00000002.tar").write_bytes(good)
    assert run_cli(capsys, tmp_path, out, subset)[0] == 0


def test_output_parents_created_and_removed_on_failure(work, capsys, monkeypatch):
    tmp_path, _, subset = work
    good = (tmp_path / "in" / "00000000.tar").read_bytes()
    _garbage(tmp_path / "in" / "00000000.tar")
    rc, err = run_cli(capsys, tmp_path, tmp_path / "a" / "b" / "out", subset)
    assert rc == 1 and not (tmp_path / "a").exists()
    (tmp_path / "in" / "00000000.tar").write_bytes(good)

    def denied(*a, **k):  # a parent folder this user cannot write in
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr("clipsift.eval.reshard.tempfile.mkdtemp", denied)
    rc, err = run_cli(capsys, tmp_path, tmp_path / "a" / "b" / "out", subset)
    line = one_line(err)
    assert rc == 1 and "Permission denied" in line and "writable" in line and not (tmp_path / "a").exists()
    monkeypatch.undo()
    assert run_cli(capsys, tmp_path, tmp_path / "a" / "b" / "out", subset)[0] == 0


def test_unreadable_input_folder(work, capsys, monkeypatch):
    tmp_path, _, subset = work
    real_scandir = os.scandir
    inp = str(tmp_path / "in")

    def scandir(path="."):
        if os.fspath(path) == inp:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), inp)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    before = checksums(tmp_path / "in")
    rc, err = run_cli(capsys, tmp_path, tmp_path / "out", subset)
    line = one_line(err)
    assert rc == 1 and inp in line and "cannot read the input folder" in line and "chmod" in line
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == [] and checksums(tmp_path / "in") == before
    monkeypatch.setattr(os, "scandir", real_scandir)
    assert run_cli(capsys, tmp_path, tmp_path / "out", subset)[0] == 0
    rc, err = run_cli(capsys, tmp_path, tmp_path / "out2", subset.with_name("nope.npy"))
    assert rc == 1 and "not found" in one_line(err)
    capsys.readouterr()
    assert cli(["reshard", "-i", str(tmp_path / "missing"), "-o", str(tmp_path / "o3"), "-s", str(subset)]) == 1
    assert "input folder not found" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("where", ["shard", "meta"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_disk_full(work, capsys, monkeypatch, where, workers):
    tmp_path, _, subset = work

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "shard":
        monkeypatch.setattr(tarfile.TarFile, "addfile", full)  # workers are forked: they see it too
    else:
        monkeypatch.setattr("clipsift.eval.reshard.write_json", full)
    before = checksums(tmp_path / "in", Path(subset))
    out = tmp_path / "out"
    rc, err = run_cli(capsys, tmp_path, out, subset, "-j", workers)
    line = one_line(err)
    assert rc == 1 and "No space left on device" in line and "free space" in line
    assert re.search(r"writing 0000000[01]\.tar;" if where == "shard" else r"writing meta\.json;", line)  # -j 2: either worker
    assert not out.exists() and leftovers(tmp_path) == [] and checksums(tmp_path / "in", Path(subset)) == before
    monkeypatch.undo()
    assert run_cli(capsys, tmp_path, out, subset, "-j", workers)[0] == 0


# ---- subsets that select nothing -----------------------------------------------------------------
def test_empty_subset_refused(work, capsys):
    tmp_path, _, _ = work
    empty = tmp_path / "empty.npy"
    np.save(empty, np.empty(0, dtype=UID_DTYPE))  # a valid .npy with no records
    rc, err = run_cli(capsys, tmp_path, tmp_path / "out", empty)
    assert rc == 1 and "0 uids" in one_line(err) and not (tmp_path / "out").exists()


def test_zero_byte_subset_refused(work, capsys):
    tmp_path, _, _ = work
    (tmp_path / "zero.bin").write_bytes(b"")
    rc, err = run_cli(capsys, tmp_path, tmp_path / "out", tmp_path / "zero.bin")
    assert rc == 1 and "zero.bin" in one_line(err) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,content,expect", [
    ("00000001_stats.json", b"{not json", "unreadable stats file"),
    ("00000001_stats.json", b'{"count": 7}', 'no whole-number "successes"'),
    ("sizes.json", b"[1, 2]", "not a JSON object"),
    ("sizes.json", b'{"00000000.tar": "many"}', "not a whole number"),
])
def test_bad_stats_or_shard_table(work, capsys, name, content, expect):
    tmp_path, _, subset = work
    (tmp_path / "in" / name).write_bytes(content)
    before = checksums(tmp_path / "in")
    rc, err = run_cli(capsys, tmp_path, tmp_path / "out", subset)
    line = one_line(err)
    assert rc == 1 and name in line and expect in line
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == [] and checksums(tmp_path / "in") == before


def test_subset_selecting_nothing_refused(work, capsys):
    tmp_path, _, _ = work
    other = write_subset(tmp_path / "other.npy", hex_to_records([_uid(1000 + i) for i in range(5)]))
    for extra in ((), ("--dry-run",), ("-j", "3")):
        rc, err = run_cli(capsys, tmp_path, tmp_path / "out", other, *extra)
        line = one_line(err)
        assert rc == 1 and "none of its 5 uids" in line and "16 samples read" in line
        assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_track_refuses_empty_subset_before_making_the_run_folder(work):
    from clipsift.eval.track import TrackSpec, run_track

    tmp_path, _, _ = work
    empty = tmp_path / "empty.npy"
    np.save(empty, np.empty(0, dtype=UID_DTYPE))
    spec = TrackSpec(subset=str(empty), shards=str(tmp_path / "in"), out=str(tmp_path / "run"),
                     train=TrainConfig(scale="tiny", data_dir="", output_dir=""))
    with pytest.raises(ClipsiftError, match="0 uids"):
        run_track(spec)
    assert not (tmp_path / "run").exists()


def test_train_refuses_data_without_samples(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = TrainConfig(scale="tiny", data_dir=str(tmp_path / "empty"), output_dir=str(tmp_path / "run")).resolved(False)
    with pytest.raises(ClipsiftError, match="no training shards"):
        build_open_clip_args(cfg)
    nested = tmp_path / "nested" / "resharded"
    nested.mkdir(parents=True)
    (nested / "meta.json").write_text(json.dumps({"output_shard_count": 0, "output_count": 0, "output_shard_format": "{:08d}.tar"}))
    cfg = TrainConfig(scale="tiny", data_dir=str(tmp_path / "nested"), output_dir=str(tmp_path / "run")).resolved(False)
    with pytest.raises(ClipsiftError, match="0 samples"):
        build_open_clip_args(cfg)


# ---- worker pool under the CLI's SIGTERM handler -------------------------------------------------
def _signal_state(_):
    import signal

    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_workers_keep_default_sigterm(work):
    """A worker that ignored SIGTERM (a Python handler inherited over fork loses a signal that
    arrives before CPython's after-fork reinit) left Pool.terminate() waiting forever."""
    import multiprocessing as mp
    import signal

    from clipsift.eval.reshard import _start_pool

    prev = signal.signal(signal.SIGTERM, lambda *a: None)  # as clipsift.cli installs one
    try:
        ctx = mp.get_context("fork")
        with _start_pool(ctx, 2, ctx.Value("q", 0)) as pool:
            assert pool.map(_signal_state, range(4)) == [(True, False)] * 4  # default action, not blocked
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # parent's mask restored
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, prev)


_RACE = """
import multiprocessing as mp, signal
from clipsift.eval.reshard import _start_pool
signal.signal(signal.SIGTERM, lambda *a: None)
ctx = mp.get_context("fork")
for _ in range(30):
    _start_pool(ctx, 4, ctx.Value("q", 0)).terminate()  # terminate right after the forks
print("ok")
"""


def test_terminate_right_after_start_does_not_hang():
    """With a plain ctx.Pool this hung within a few rounds (a worker lost its SIGTERM)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _RACE], capture_output=True, text=True, timeout=120, start_new_session=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
