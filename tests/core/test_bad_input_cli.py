"""Hostile and broken command lines: every case is one `clipsift: error:` line on stderr, exit 1,
no traceback, nothing written (no output, temp, lock or work folder) and every input byte-identical.

Also: the .npy and its manifest never disagree (file_sha256, pair writes, output lock), full disks
are one line naming the path, and work folders of killed runs are reclaimed or reported.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_uids, write_pool

import clipsift.io as cio
import clipsift.runner as runner
from clipsift.cli import main, os_error_line
from clipsift.errors import ParamError
from clipsift.io import atomic_pair, check_output_path, output_lock
from clipsift.params import Param, resolve_params
from clipsift.recipe import MAX_DEPTH
from clipsift.subset import check_subset, write_subset
from clipsift.uids import hex_to_records
from clipsift.workdir import OWNER_FILE, PREFIX, owner_record

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def snapshot(root: Path) -> dict:
    """Every file (sha256) and folder under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.islink(p) or not os.path.isfile(p):
                out[os.path.relpath(p, root)] = "special"
                continue
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def _deep_chain(depth: int) -> str:
    inner = '{ filter = "random", params = { fraction = 0.5 } }'
    for _ in range(depth):
        inner = "{ chain = [ " + inner + " ] }"
    return "[[step]]\nchain = [ " + inner + " ]\n"


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A workspace (the cwd) with a pool, broken recipes, folders and files in the way, and its own TMPDIR."""
    write_pool(tmp_path / "pool", [40, 0, 25, 35])
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "keep.txt").write_text("x")
    (tmp_path / "out_dir.npy").mkdir()
    (tmp_path / "afile").write_text("a file in the way\n")
    files = {
        "bad_utf8.toml": b"name = 'x'\n\xff\xfe[[step]]\n",
        "invalid.toml": b"[[step]\nfilter = 'random'\n",
        "deep.toml": ("a = " + "[" * 3000 + "]" * 3000 + "\n").encode(),
        "deep_table.toml": ("a = " + "{b = " * 2000 + "1" + "}" * 2000 + "\n").encode(),
        "params_int.toml": b"[[step]]\nfilter = 'random'\nparams = 3\n",
        "params_deep.toml": ("[[step]]\nfilter = 'random'\nparams = { fraction = " + "{a = " * 200 + "1" + "}" * 200 + " }\n").encode(),
        "unknown_filter.toml": b"[[step]]\nfilter = 'random'\nparams = { fraction = 0.5 }\n[[step]]\nfilter = 'no_such_filter'\n",
        "unknown_key.toml": b"[[step]]\nfilter = 'random'\nparam = { fraction = 0.5 }\n",
        "top_key.toml": b"nmae = 'typo'\n[[step]]\nfilter = 'random'\n",
        "one_branch.toml": b"[[step]]\nunion = [ { filter = 'random', params = { fraction = 0.5 } } ]\n",
        "union_str.toml": b"[[step]]\nunion = 'random'\n",
        "filter_int.toml": b"[[step]]\nfilter = 7\n",
        "nan.toml": b"[[step]]\nfilter = 'random'\nparams = { fraction = nan }\n",
        "no_steps.toml": b"name = 'empty'\n",
        "deep_chain.toml": _deep_chain(MAX_DEPTH + 2).encode(),
        "good.toml": b"[[step]]\nfilter = 'random'\nparams = { fraction = 0.5 }\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    os.mkfifo(tmp_path / "fifo.toml")
    np.save(tmp_path / "cands.npy", np.sort(hex_to_records(np.array(make_uids(20)))))
    monkeypatch.chdir(tmp_path)
    return tmp_path


RUN = "filter random --pool pool --out o.npy"
CASES = [
    # parameters
    ("nan", f"{RUN} --set fraction=nan", "random: parameter fraction=nan is not a finite number; allowed: a finite number in [0.0, 1.0]"),
    ("inf", f"{RUN} --set fraction=inf", "fraction=inf"),
    ("neg-inf", f"{RUN} --set fraction=-inf", "fraction=-inf"),
    ("above-max", f"{RUN} --set fraction=1.5", "fraction=1.5 is above its maximum 1.0"),
    ("negative-count", f"{RUN} --set count=-3", "count=-3 is below its minimum 0"),
    ("not-int", f"{RUN} --set seed=abc", "seed='abc' is not a valid int"),
    ("float-for-int", f"{RUN} --set count=2.5", "count='2.5' is not a valid int"),
    ("huge-int", f"{RUN} --set fraction=0.5 --set seed=99999999999999999999999", "does not fit in 64 bits"),
    ("twice", f"{RUN} --set fraction=0.1 --set fraction=0.2", "fraction given twice"),
    ("unknown-param", f"{RUN} --set nope=1", "unknown parameter 'nope'"),
    ("no-equals", f"{RUN} --set fraction", "expected key=value"),
    ("bad-bool", "filter dbp --pool pool --out o.npy --set dedup=maybe", "dbp: parameter dedup='maybe' is not a boolean"),
    ("unknown-filter", "filter nosuch --pool pool --out o.npy", "unknown filter 'nosuch'"),
    ("name-and-recipe", "filter random --recipe good.toml --pool pool --out o.npy", "exactly one"),
    ("set-with-recipe", "filter --recipe good.toml --set fraction=0.2 --pool pool --out o.npy", "--set applies to a NAME"),
    # recipes
    ("recipe-folder", "filter --recipe adir --pool pool --out o.npy", "adir: recipe is a folder"),
    ("recipe-missing", "filter --recipe missing.toml --pool pool --out o.npy", "missing.toml: recipe file not found"),
    ("recipe-fifo", "filter --recipe fifo.toml --pool pool --out o.npy", "fifo.toml: recipe is not a regular file"),
    ("recipe-device", "filter --recipe /dev/zero --pool pool --out o.npy", "/dev/zero: recipe is not a regular file"),
    ("recipe-not-utf8", "filter --recipe bad_utf8.toml --pool pool --out o.npy", "bad_utf8.toml: recipe is not UTF-8"),
    ("recipe-invalid", "filter --recipe invalid.toml --pool pool --out o.npy", "invalid.toml: invalid TOML"),
    ("recipe-deep-array", "filter --recipe deep.toml --pool pool --out o.npy", "deep.toml: invalid TOML"),
    ("recipe-deep-table", "filter --recipe deep_table.toml --pool pool --out o.npy", "deep_table.toml: invalid TOML"),
    ("recipe-params-int", "filter --recipe params_int.toml --pool pool --out o.npy", "params_int.toml: step[0] (random): params must be a table"),
    ("recipe-params-deep", "filter --recipe params_deep.toml --pool pool --out o.npy", "params_deep.toml: step[0]: random: parameter fraction="),
    ("recipe-unknown-filter", "filter --recipe unknown_filter.toml --pool pool --out o.npy", "unknown_filter.toml: step[1]: unknown filter 'no_such_filter'"),
    ("recipe-unknown-key", "filter --recipe unknown_key.toml --pool pool --out o.npy", "unknown_key.toml: step[0]: unknown key(s) param; a step has filter and params"),
    ("recipe-top-key", "filter --recipe top_key.toml --pool pool --out o.npy", "top_key.toml: unknown top-level key(s) nmae"),
    ("recipe-one-branch", "filter --recipe one_branch.toml --pool pool --out o.npy", "one_branch.toml: step[0]: union needs at least two branches"),
    ("recipe-union-str", "filter --recipe union_str.toml --pool pool --out o.npy", "union_str.toml: step[0]: union must be an array"),
    ("recipe-filter-int", "filter --recipe filter_int.toml --pool pool --out o.npy", "filter_int.toml: step[0]: filter must be a filter name"),
    ("recipe-nan", "filter --recipe nan.toml --pool pool --out o.npy", "nan.toml: step[0]: random: parameter fraction=nan is not a finite number"),
    ("recipe-no-steps", "filter --recipe no_steps.toml --pool pool --out o.npy", "no_steps.toml: a recipe needs at least one [[step]]"),
    ("recipe-deep-chain", "filter --recipe deep_chain.toml --pool pool --out o.npy", f"nested more than {MAX_DEPTH} levels"),
    # devices
    ("device-tpu", f"{RUN} --set fraction=0.5 --device tpu", "--device tpu: unknown device; use auto, cpu, cuda, cuda:N or mps"),
    ("device-empty", f"{RUN} --set fraction=0.5 --device ''", "--device '': unknown device"),
    ("device-cuda-x", f"{RUN} --set fraction=0.5 --device cuda:x", "--device cuda:x: unknown device"),
    ("device-cuda", f"{RUN} --set fraction=0.5 --device cuda", "--device cuda: no CUDA GPU is visible"),
    ("device-cuda7", f"{RUN} --set fraction=0.5 --device cuda:7", "--device cuda:7"),
    # outputs and scratch folders
    ("out-folder", "filter random --set fraction=0.5 --pool pool --out adir", "--out adir: is a folder"),
    ("out-slash", "filter random --set fraction=0.5 --pool pool --out new/", "--out new/: names a folder"),
    ("out-npy-folder", "filter random --set fraction=0.5 --pool pool --out out_dir", "--out out_dir.npy: is a folder"),
    ("out-under-file", "filter random --set fraction=0.5 --pool pool --out afile/sub/o.npy", "afile is a file, not a folder"),
    ("out-empty", "filter random --set fraction=0.5 --pool pool --out ''", "--out is empty"),
    ("out-special", "filter random --set fraction=0.5 --pool pool --out /dev/null", "--out /dev/null: exists and is not a regular file"),
    ("workdir-file", f"{RUN} --set fraction=0.5 --workdir afile", "--workdir afile: is a file, not a folder"),
    ("workdir-under-file", f"{RUN} --set fraction=0.5 --workdir afile/w", "--workdir afile/w: a parent of this folder is a file"),
    ("candidates-folder", f"{RUN} --set fraction=0.5 --candidates adir", "adir"),
    ("pool-missing", "filter random --set fraction=0.5 --pool nowhere --out o.npy", "nowhere"),
    ("combine-out-folder", "subset union cands.npy cands.npy -o adir", "-o adir: is a folder"),
    ("combine-out-empty", "subset union cands.npy -o ''", "-o is empty"),
    ("pool-make-out-file", "pool make --out afile --rows 10", "--out afile: is a file"),
    ("pool-make-shard-rows", "pool make --out newpool --rows 10 --shard-rows 0", "--shard-rows must be positive"),
    ("baseline-save-folder", "datacomp-baseline --name no_filter --metadata_dir pool --save_path adir", "--save_path adir: is a folder"),
    ("baseline-device", "datacomp-baseline --name no_filter --metadata_dir pool --save_path b.npy --device tpu", "--device tpu"),
    ("centroids-out-slash", "build-centroids --pool pool --out adir/ --num-clusters 2", "--out adir/: names a folder"),
]


@pytest.mark.parametrize("argv,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(ws, capsys, argv, needle):
    if needle.startswith("--device cuda") and _cuda():
        pytest.skip("a GPU is visible here")
    before = snapshot(ws)
    rc = main(["-q", *shlex.split(argv)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 1, err
    assert len(lines) == 1 and lines[0].startswith("clipsift: error: "), err
    assert "Traceback" not in err
    assert needle in lines[0], lines[0]
    assert snapshot(ws) == before  # nothing written (no output, temp, lock, work folder), inputs unchanged


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_unwritable_out_folder(ws, capsys):
    ro = ws / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["-q", *shlex.split(f"{RUN} --set fraction=0.5"), "--out", "ro/o.npy"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "ro is not writable" in err[0]
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_unwritable_out_folder_as_reported_by_access(ws, capsys, monkeypatch):
    """The same check where the tests run as root (root passes permission bits)."""
    before = snapshot(ws)
    monkeypatch.setattr(cio.os, "access", lambda path, mode: Path(path).name != "adir")
    assert main(["-q", *shlex.split(f"{RUN} --set fraction=0.5"), "--out", "adir/o.npy"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("adir is not writable; choose a writable output folder"), err
    assert snapshot(ws) == before


def test_check_output_path_accepts_new_nested_folders(tmp_path):
    assert check_output_path(tmp_path / "a" / "b" / "o.npy") == tmp_path / "a" / "b" / "o.npy"
    (tmp_path / "o.npy").write_bytes(b"old")
    assert check_output_path(tmp_path / "o.npy") == tmp_path / "o.npy"  # overwriting a file is fine


# ---- parameters and devices, below the CLI -----------------------------------------------------------
def test_param_messages_name_parameter_and_range():
    p = Param("fraction", float, None, min=0.0, max=1.0)
    for bad, why in ((float("nan"), "not a finite number"), (float("inf"), "not a finite number"), (2, "above its maximum"),
                     (True, "not a number"), ("x", "not a valid float"), ([1], "not a number"), (10**400, "out of range")):
        with pytest.raises(ParamError) as exc:
            p.check(bad, "owner")
        msg = str(exc.value)
        assert msg.startswith("owner: parameter fraction=") and why in msg and "[0.0, 1.0]" in msg and "\n" not in msg
    assert p.check(1, "o") == 1.0 and p.check("0.25", "o") == 0.25 and p.check(None, "o") is None
    deep: dict = {}
    node = deep
    for _ in range(5000):  # repr() of this would recurse past the interpreter's limit
        node["a"] = {}
        node = node["a"]
    with pytest.raises(ParamError, match=r"fraction=\{'a': \{") as exc:
        resolve_params((p,), {"fraction": deep}, "owner")
    assert len(str(exc.value)) < 300
    with pytest.raises(ParamError, match="parameters must be a table"):
        resolve_params((p,), [1, 2], "owner")
    with pytest.raises(ParamError, match="allowed: one of a, b"):
        Param("mode", str, "a", choices=("a", "b")).check("c", "owner")
    with pytest.raises(ParamError, match="must not be empty"):
        Param("seed", int, 0).check(None, "owner")


def test_devices(monkeypatch):
    import clipsift.devices as dev

    assert dev.check_device(" CPU ") == "cpu" and dev.check_device("auto") == "auto"
    monkeypatch.setattr(dev, "_cuda_count", lambda: 0)
    assert dev.resolve_device("auto") == "cpu"
    with pytest.raises(ParamError, match="no CUDA GPU"):
        dev.resolve_device("cuda")
    monkeypatch.setattr(dev, "_cuda_count", lambda: 2)
    assert dev.resolve_device("auto") == "cuda" and dev.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ParamError, match=r"--device cuda:7: only 2 GPU\(s\) visible \(cuda:0 to cuda:1\)"):
        dev.check_device("cuda:7")
    for bad in ("tpu", "cuda:", "cuda:-1", "gpu", "cuda 0"):
        with pytest.raises(ParamError, match="unknown device"):
            dev.normalize_device(bad)


# ---- manifests: the .npy and its manifest never disagree ---------------------------------------------
def _filter(ws, out, *extra) -> int:
    return main(["-q", "filter", "random", "--pool", "pool", "--out", str(out), "--workers", "1", *extra])


def test_manifest_names_file_sha256_and_check_verifies(ws, capsys):
    assert _filter(ws, "a.npy", "--set", "fraction=0.5", "--set", "seed=1") == 0
    assert _filter(ws, "b.npy", "--set", "fraction=0.5", "--set", "seed=2") == 0
    man = json.loads(Path("a.npy.json").read_text())
    assert man["file_sha256"] == hashlib.sha256(Path("a.npy").read_bytes()).hexdigest()
    assert check_subset("a.npy").manifest_status == "verified"
    capsys.readouterr()
    assert main(["-q", "subset", "check", "a.npy"]) == 0
    assert "manifest    verified" in capsys.readouterr().out
    shutil.copyfile("b.npy", "a.npy")  # same size, other uids: the pair now disagrees
    assert main(["-q", "subset", "check", "a.npy"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clipsift: error: a.npy: does not match its manifest a.npy.json")
    assert main(["-q", "subset", "check", "a.npy", "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["manifest_status"] == "mismatch" and rep["ok"] is False
    # a manifest from before file_sha256: checked through uids_sha256 and output_count
    legacy = {k: v for k, v in json.loads(Path("b.npy.json").read_text()).items() if k != "file_sha256"}
    Path("a.npy.json").write_text(json.dumps(legacy))
    assert check_subset("a.npy").manifest_status == "verified"
    Path("b.npy.json").write_text(json.dumps(legacy | {"uids_sha256": "0" * 64}))
    assert check_subset("b.npy").manifest_status == "mismatch"
    Path("b.npy.json").write_text("{not json")
    assert check_subset("b.npy").manifest_status == "unreadable"
    assert main(["-q", "subset", "check", "b.npy"]) == 1
    assert "manifest unreadable" in capsys.readouterr().err


def test_full_disk_between_the_two_writes_keeps_the_old_pair(ws, capsys, monkeypatch):
    assert _filter(ws, "o.npy", "--set", "fraction=0.5", "--set", "seed=1") == 0
    before = snapshot(ws)

    def full(path, manifest):
        with open(path, "w") as fh:
            fh.write("{")
        raise OSError(errno.ENOSPC, "No space left on device")  # as a failed write() reports it: no file name

    monkeypatch.setattr(runner, "write_manifest_file", full)
    capsys.readouterr()
    assert _filter(ws, "o.npy", "--set", "fraction=0.3", "--set", "seed=2") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "o.npy: no space left on device (ENOSPC)" in err[0] and "TMPDIR" in err[0], err
    assert snapshot(ws) == before  # old pair intact, no temporaries, no lock, no work folder
    assert check_subset("o.npy").manifest_status == "verified"


def test_crash_between_the_renames_never_leaves_new_npy_with_old_manifest(ws, capsys, monkeypatch):
    assert _filter(ws, "o.npy", "--set", "fraction=0.5", "--set", "seed=1") == 0
    old = Path("o.npy").read_bytes()
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if str(dst).endswith(".json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(cio.os, "replace", replace)
    assert _filter(ws, "o.npy", "--set", "fraction=0.3", "--set", "seed=2") == 1
    monkeypatch.setattr(cio.os, "replace", real)
    assert Path("o.npy").read_bytes() != old  # the new .npy went in ...
    assert not Path("o.npy.json").exists()  # ... and the old manifest had gone first
    assert check_subset("o.npy").manifest_status == "absent"
    assert sorted(p.name for p in ws.iterdir() if p.name.startswith((".o.npy", "..o.npy", "o.npy."))) == []


def test_real_file_size_limit_is_one_line_and_leaves_nothing(ws):
    """A real write failure (RLIMIT_FSIZE: EFBIG, like a full disk) in a separate process."""
    assert _filter(ws, "o.npy", "--set", "fraction=0.5") == 0
    before = snapshot(ws)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # the 100-row .npy is 1728 bytes

    env = {**os.environ, "TMPDIR": str(ws / "tmp")}
    proc = subprocess.run([sys.executable, "-m", "clipsift.cli", "-q", "filter", "no_filter", "--pool", "pool", "--out", "o.npy",
                           "--workers", "1"], cwd=ws, capture_output=True, text=True, preexec_fn=limit, env=env, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("clipsift: error: o.npy: file too large for the file system (EFBIG)"), lines[0]
    assert snapshot(ws) == before
    assert check_subset("o.npy").manifest_status == "verified"


def test_os_error_line_finds_wrapped_disk_errors():
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded", "/data/x.npy")
        except OSError as inner:
            raise RuntimeError("worker failed") from inner
    except RuntimeError as outer:
        line = os_error_line(outer)
    assert line.startswith("/data/x.npy: disk quota exceeded (EDQUOT)")
    assert os_error_line(OSError("IOError: No space left on device")).startswith("writing: no space left")
    assert os_error_line(OSError(errno.EROFS, "Read-only file system", "/ro/o.npy")).startswith("/ro/o.npy: read-only file system (EROFS); write somewhere writable")
    assert os_error_line(PermissionError(errno.EACCES, "Permission denied", "/x")) == "/x: permission denied; check the path and its permissions"
    assert os_error_line(OSError(errno.EIO, "I/O error", "/x")) is None  # other errors keep their traceback


# ---- concurrent writers ----------------------------------------------------------------------------------
def test_second_writer_of_the_same_output_fails_with_one_line(ws, capsys):
    with output_lock(ws / "o.npy"):
        assert (ws / "o.npy.lock").read_text().strip() == str(os.getpid())
        assert _filter(ws, "o.npy", "--set", "fraction=0.5") == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "o.npy: another clipsift run (pid" in err[0] and "choose another --out" in err[0], err
        assert not (ws / "o.npy").exists()
    assert not (ws / "o.npy.lock").exists()
    assert _filter(ws, "o.npy", "--set", "fraction=0.5") == 0  # free again
    assert not (ws / "o.npy.lock").exists()


def test_two_processes_writing_one_output(ws):
    env = {**os.environ, "TMPDIR": str(ws / "tmp")}
    cmd = [sys.executable, "-m", "clipsift.cli", "-q", "filter", "random", "--pool", "pool", "--out", "o.npy", "--workers", "1"]
    procs = [subprocess.Popen([*cmd, "--set", "fraction=0.5", "--set", f"seed={s}"], cwd=ws, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in (1, 2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert any(rc == 0 for rc, _ in results), results
    for rc, err in results:
        assert rc == 0 or (rc == 1 and len(err.strip().splitlines()) == 1 and "another clipsift run" in err), results
    man = json.loads(Path("o.npy.json").read_text())
    assert check_subset("o.npy").manifest_status == "verified"
    assert man["file_sha256"] == hashlib.sha256(Path("o.npy").read_bytes()).hexdigest()
    assert not Path("o.npy.lock").exists()


def test_failed_run_removes_the_output_folders_it_created(ws, capsys, monkeypatch):
    before = snapshot(ws)

    def fail(*a, **kw):
        raise ParamError("boom")

    monkeypatch.setattr(runner, "build_manifest", fail)
    assert _filter(ws, "new/deeper/o.npy", "--set", "fraction=0.5") == 1
    assert capsys.readouterr().err.strip() == "clipsift: error: boom"
    assert snapshot(ws) == before
    monkeypatch.undo()
    monkeypatch.chdir(ws)
    assert _filter(ws, "new/deeper/o.npy", "--set", "fraction=0.5") == 0


def test_stale_temporaries_of_killed_writers_are_removed(ws):
    stale = [".o.npy.abcd1234.tmp.npy", "..o.npy.abcd1234.tmp.npy.zz_z9999.tmp", ".o.npy.json.0123abcd.tmp", ".o.npy.k1l2m3n4.tmp"]
    others = [".other.npy.abcd1234.tmp", ".o.npy.x.npy.abcd1234.tmp", "o.npy.notes"]
    for name in stale + others:
        (ws / name).write_bytes(b"junk")
    (ws / "o.npy.lock").write_text("12345\n")  # a killed holder's lock file: flock died with it
    assert _filter(ws, "o.npy", "--set", "fraction=0.5") == 0
    assert not any((ws / n).exists() for n in stale)
    assert all((ws / n).exists() for n in others)
    assert not (ws / "o.npy.lock").exists()


def test_atomic_pair_without_companion_removes_the_old_one(tmp_path):
    rec = np.sort(hex_to_records(np.array(make_uids(5))))
    out = write_subset(tmp_path / "s.npy", rec, {"x": 1})
    assert check_subset(out).manifest_status == "verified"
    write_subset(out, rec[:3])  # no manifest this time: the old one would describe another file
    assert not Path(f"{out}.json").exists()
    with pytest.raises(KeyboardInterrupt), atomic_pair(tmp_path / "p.bin", tmp_path / "p.bin.json") as (tmp, ctmp):
        tmp.write_bytes(b"data")
        ctmp.write_text("{}")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]


# ---- work folders of killed runs -------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _work_folder(base: Path, name: str, owner: dict | None, mb: int = 0, age_h: float = 0) -> Path:
    d = base / f"{PREFIX}{name}"
    d.mkdir(parents=True)
    if owner is not None:
        (d / OWNER_FILE).write_text(json.dumps(owner))
    if mb:
        (d / "spill.bin").write_bytes(os.urandom(mb << 20))
    if age_h:
        t = time.time() - age_h * 3600
        os.utime(d, (t, t))
    return d


def test_work_folders_of_killed_runs_in_tmpdir_are_reclaimed_or_reported(ws, capsys):
    base = ws / "tmp"
    me = owner_record()
    dead = _work_folder(base, "dead", {**me, "pid": _dead_pid()}, mb=1)
    reused = _work_folder(base, "reused", {**me, "start": (me["start"] or 0) + 1})  # our pid, another start time
    rebooted = _work_folder(base, "rebooted", {**me, "boot_id": "another-boot"})
    alive = _work_folder(base, "alive", me)
    remote = _work_folder(base, "remote", {**me, "pid": _dead_pid(), "host": "another-host"})
    ownerless_old = _work_folder(base, "old", None, age_h=3)
    ownerless_new = _work_folder(base, "new", None)
    assert main(["filter", "random", "--pool", "pool", "--out", "o.npy", "--set", "fraction=0.5", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert not dead.exists() and not reused.exists() and not rebooted.exists()
    assert f"reclaimed {dead}" in err and "1.0 MB" in err
    assert alive.exists() and remote.exists() and ownerless_new.exists()
    assert ownerless_old.exists() and f"1 work folder(s) without an owner under {base}" in err and ownerless_old.name in err
    assert ownerless_new.name not in err
    left = sorted(p.name for p in base.iterdir())
    assert left == sorted(p.name for p in (alive, remote, ownerless_old, ownerless_new))  # this run's folder is gone too


def test_user_workdir_is_kept_and_scratch_of_killed_runs_reclaimed(ws, capsys):
    from clipsift.workdir import RUN_MARKER

    work = ws / "work"
    cache = work / "clipcov" / "abc"  # resumable state: never touched
    cache.mkdir(parents=True)
    (cache / "state.npy").write_bytes(b"state")
    old_scratch = work / "dbp-0badc0de"  # from before the killed run started: reported, kept
    old_scratch.mkdir()
    t = time.time() - 7200
    os.utime(old_scratch, (t, t))
    me = owner_record()
    (work / f"{RUN_MARKER}1-dead.json").write_text(json.dumps({**me, "pid": _dead_pid(), "created": time.time() - 60}))
    killed = work / "semdedup-0123abcd"
    (killed / "store").mkdir(parents=True)
    (killed / "store" / "emb.bin").write_bytes(os.urandom(1 << 20))
    args = ["filter", "random", "--pool", "pool", "--set", "fraction=0.5", "--workers", "1", "--workdir", str(work)]
    assert main([*args, "--out", "o.npy"]) == 0
    err = capsys.readouterr().err
    assert not killed.exists() and f"reclaimed {killed}: scratch folder of a run that was killed, 1.0 MB" in err
    assert old_scratch.exists() and f"{old_scratch}: scratch folder left by an interrupted run" in err
    assert (cache / "state.npy").read_bytes() == b"state"
    assert sorted(p.name for p in work.iterdir()) == ["clipcov", "dbp-0badc0de"]  # markers gone, nothing else left
    # a live run's marker: its scratch folders are left alone
    (work / f"{RUN_MARKER}2-live.json").write_text(json.dumps({**me, "created": time.time() - 60}))
    (work / f"{RUN_MARKER}3-dead.json").write_text(json.dumps({**me, "pid": _dead_pid(), "created": time.time() - 60}))
    busy = work / "ssp-89abcdef"
    busy.mkdir()
    assert main([*args, "--out", "p.npy"]) == 0
    assert busy.exists()


def test_run_workdir_removed_or_unmarked_after_failure(ws):
    from clipsift.workdir import RUN_MARKER, run_workdir

    with pytest.raises(RuntimeError), run_workdir() as wd:
        assert wd.parent == ws / "tmp" and json.loads((wd / OWNER_FILE).read_text())["pid"] == os.getpid()
        raise RuntimeError
    assert list((ws / "tmp").iterdir()) == []
    with pytest.raises(RuntimeError), run_workdir(ws / "w") as wd:
        assert wd == ws / "w" and len(list(wd.glob(f"{RUN_MARKER}*"))) == 1
        (wd / "cache").mkdir()
        raise RuntimeError
    assert [p.name for p in (ws / "w").iterdir()] == ["cache"]


# ---- --bad-embeddings and the dropped-row counters -------------------------------------------------------
def test_bad_embeddings_flag_reaches_the_run_and_the_manifest(ws, monkeypatch):
    seen = {}
    real = runner.build_manifest

    def spy(step, ctx, *a, **kw):
        seen["policy"] = ctx.bad_embeddings
        ctx.dropped["bad_embeddings"] = 3  # as the reader counts rows it left out
        return real(step, ctx, *a, **kw)

    monkeypatch.setattr(runner, "build_manifest", spy)
    assert _filter(ws, "o.npy", "--set", "fraction=0.5", "--bad-embeddings", "drop") == 0
    man = json.loads(Path("o.npy.json").read_text())
    assert seen["policy"] == "drop" and man["bad_embeddings"] == "drop"
    assert man["counters"]["dropped_while_reading"] == {"bad_embeddings": 3}
    monkeypatch.setattr(runner, "build_manifest", real)
    assert _filter(ws, "p.npy", "--set", "fraction=0.5") == 0
    man = json.loads(Path("p.npy.json").read_text())
    assert "bad_embeddings" not in man and "dropped_while_reading" not in man["counters"]


def test_sigterm_mid_write_leaves_the_old_pair_and_nothing_else(ws):
    """``kill PID`` while the new pair is being written: the run unwinds like Ctrl-C."""
    assert _filter(ws, "o.npy", "--set", "fraction=0.5", "--set", "seed=1") == 0
    before = snapshot(ws)
    script = (
        "import sys, time\n"
        "import clipsift.runner as r\n"
        "def slow(*a, **k):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "r.build_manifest = slow\n"
        "from clipsift.cli import main\n"
        "sys.exit(main(['-q', 'filter', 'random', '--pool', 'pool', '--out', 'o.npy', '--set', 'fraction=0.3', '--workers', '1']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ws, env={**os.environ, "TMPDIR": str(ws / "tmp")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert (ws / "o.npy.lock").exists() and any((ws / "tmp").iterdir())  # mid-run: locked, work folder in use
        proc.terminate()
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert rc == 143 and proc.stderr.read().strip() == "clipsift: terminated"
    assert snapshot(ws) == before
