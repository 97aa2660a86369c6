"""Untrusted files are read exactly and safely (issue 11: items 2, 11, 12).

* centroid / target files from ``torch.save(numpy_array)`` at pickle protocols 2, 4 and 5, with
  numpy 1.x (``numpy.core.*``) and numpy 2.x (``numpy._core.*``) module names, give the same
  matrix and byte-identical image_based subsets; numpy 1.26.4's own pickles are embedded below;
* malicious pickles (centroids, targets, info.pkl) are refused with one line and run nothing;
* object arrays are one line, never a traceback;
* leaderboards refuse NaN/Infinity/out-of-range main metrics and non-UTF-8 files with one stderr
  line naming file and line, write nothing, change nothing, and only ever write strict JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import pickletools
import struct
import zipfile
from pathlib import Path, PosixPath

import numpy as np
import pytest
from conftest import make_uids, write_pool

from clipsift.baselines import assets
from clipsift.baselines.centroids import save_centroids
from clipsift.baselines.image_based import ImageBasedFilter
from clipsift.cli import main
from clipsift.errors import ClipsiftError, ParamError
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.leaderboards.tasks import NO_MAIN_METRIC, datacomp_tasks
from clipsift.pool import Pool
from clipsift.runner import run_to_subset
from clipsift.safeload import (
    UnsafeFileError,
    load_array_file,
    load_info_pkl,
    load_torch_file,
    unpickle,
)
from clipsift.uids import hex_to_records, sort_records

# ---- numpy 1.x pickles ---------------------------------------------------------------------------
# pickle.dumps(A, protocol=p) under numpy 1.26.4 (Python 3.11), A as below.
A = (np.arange(6, dtype=np.float32).reshape(2, 3) / 7).astype(np.float32)
NUMPY1 = {
    2: b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01K\x00\x85q\x02c_codecs\nencode\nq"
    b"\x03X\x01\x00\x00\x00bq\x04X\x06\x00\x00\x00latin1q\x05\x86q\x06Rq\x07\x87q\x08Rq\t(K\x01K\x02K\x03\x86q\ncnumpy\n"
    b"dtype\nq\x0bX\x02\x00\x00\x00f4q\x0c\x89\x88\x87q\rRq\x0e(K\x03X\x01\x00\x00\x00<q\x0fNNNJ\xff\xff\xff\xffJ\xff"
    b"\xff\xff\xffK\x00tq\x10b\x89h\x03X\x1c\x00\x00\x00\x00\x00\x00\x00%I\x12>%I\xc2\x92>\xc2\xb7m\xc3\x9b>%I\x12?n"
    b"\xc3\x9b6?q\x11h\x05\x86q\x12Rq\x13tq\x14b.",
    4: b"\x80\x04\x95\xa2\x00\x00\x00\x00\x00\x00\x00\x8c\x15numpy.core.multiarray\x94\x8c\x0c_reconstruct\x94\x93"
    b"\x94\x8c\x05numpy\x94\x8c\x07ndarray\x94\x93\x94K\x00\x85\x94C\x01b\x94\x87\x94R\x94(K\x01K\x02K\x03\x86\x94h"
    b"\x03\x8c\x05dtype\x94\x93\x94\x8c\x02f4\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01<\x94NNNJ\xff\xff\xff\xffJ\xff"
    b"\xff\xff\xffK\x00t\x94b\x89C\x18\x00\x00\x00\x00%I\x12>%I\x92>\xb7m\xdb>%I\x12?n\xdb6?\x94t\x94b.",
}


def as_numpy1(data: bytes) -> bytes:
    """Rewrite a numpy 2.x pickle to numpy 1.x module names (numpy._core.* -> numpy.core.*).

    Frames are dropped and, for protocol >= 4, the whole body is put back in one frame, as pickle
    does for small pickles; the result equals numpy 1.26's bytes (tested against NUMPY1).
    """
    ops = list(pickletools.genops(data))
    out, proto = [], 0
    for i, (op, arg, pos) in enumerate(ops):
        raw = data[pos : ops[i + 1][2] if i + 1 < len(ops) else len(data)]
        if op.name == "PROTO":
            proto = arg
            continue
        if op.name == "FRAME":
            continue
        if op.name == "GLOBAL":
            module, name = arg.split(" ")
            raw = b"c" + module.replace("numpy._core.", "numpy.core.").encode() + b"\n" + name.encode() + b"\n"
        elif op.name == "SHORT_BINUNICODE" and arg.startswith("numpy._core."):
            new = arg.replace("numpy._core.", "numpy.core.").encode()
            raw = b"\x8c" + bytes([len(new)]) + new
        elif op.name == "BINUNICODE" and arg.startswith("numpy._core."):
            new = arg.replace("numpy._core.", "numpy.core.").encode()
            raw = b"X" + struct.pack("<I", len(new)) + new
        out.append(raw)
    body = b"".join(out)
    head = b"\x80" + bytes([proto])
    if proto >= 4:
        head += b"\x95" + struct.pack("<Q", len(body))
    return head + body


def replace_data_pkl(path: Path, data: bytes) -> None:
    """Put ``data`` as the data.pkl of a torch.save zip (other members unchanged)."""
    with zipfile.ZipFile(path) as zf:
        members = [(info, zf.read(info.filename)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for info, content in members:
            zf.writestr(info, data if info.filename.endswith("/data.pkl") else content)


def torch_save(obj, path: Path, protocol: int = 2, numpy1: bool = False, legacy: bool = False) -> Path:
    import torch

    torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    if numpy1:
        replace_data_pkl(path, as_numpy1(pickle.dumps(obj, protocol=protocol)))
    return path


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy1_rewrite_equals_numpy_1_26(protocol):
    assert as_numpy1(pickle.dumps(A, protocol=protocol)) == NUMPY1[protocol]


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy1_pickles_known_answer(tmp_path, protocol):
    got = unpickle(NUMPY1[protocol])
    assert got.dtype == np.float32 and got.tobytes() == A.tobytes()
    path = torch_save(np.zeros((2, 3), np.float32), tmp_path / "c.pt", protocol)
    replace_data_pkl(path, NUMPY1[protocol])  # numpy 1.x's bytes inside a torch.save zip
    arr, verified = assets.load_centroids(str(path))
    assert arr.tobytes() == A.tobytes() and not verified


VARIANTS = [  # (protocol, numpy 1.x names, legacy torch format)
    (2, False, False), (2, True, False), (4, False, False), (4, True, False), (5, False, False), (2, False, True),
]


@pytest.mark.parametrize("protocol,numpy1,legacy", VARIANTS)
def test_centroid_files_every_protocol_same_matrix(tmp_path, protocol, numpy1, legacy):
    c = np.random.default_rng(1).standard_normal((7, 16)).astype(np.float32)
    path = torch_save(c, tmp_path / "c.pt", protocol, numpy1, legacy)
    if numpy1:
        assert b"numpy.core.multiarray" in zipfile.ZipFile(path).read("c/data.pkl")
    arr, _ = assets.load_centroids(str(path))
    assert arr.dtype == np.float32 and arr.tobytes() == c.tobytes()
    # the same files work as NormSim targets and as image_based targets
    from clipsift.filters.negclip.normsim_targets import read_matrix

    assert read_matrix(path).tobytes() == c.tobytes()
    assert assets.load_targets(str(path))[0].tobytes() == c.tobytes()


def test_torch_save_default_protocol_is_accepted(tmp_path):
    import torch

    c = np.eye(4, dtype=np.float32) * 3
    torch.save(c, tmp_path / "c.pt")  # what DataComp's and our error message tell users to do
    assert b"_codecs\nencode" in zipfile.ZipFile(tmp_path / "c.pt").read("c/data.pkl")
    assert assets.load_centroids(str(tmp_path / "c.pt"))[0].tobytes() == c.tobytes()
    torch.save({"image_features": torch.from_numpy(c).half()}, tmp_path / "t.pt")  # tensors
    assert assets.load_targets(str(tmp_path / "t.pt"))[0].tobytes() == c.tobytes()


# ---- image_based: the same subset from every centroid file -------------------------------------
class FakeLID:
    def predict(self, texts):
        return ["en"] * len(texts)


def test_image_based_output_identical_for_every_centroid_file(tmp_path):
    import torch

    rng = np.random.default_rng(5)
    k, d, n = 6, 768, 60
    centroids = rng.standard_normal((k, d)).astype(np.float32) * rng.uniform(0.5, 2, (k, 1)).astype(np.float32)
    nearest = rng.integers(0, k, n)
    emb = centroids[nearest] / np.linalg.norm(centroids[nearest], axis=1, keepdims=True)
    emb = (emb + 0.01 * rng.standard_normal((n, d))).astype(np.float16)
    texts = [f"a photo of a thing number {i}" for i in range(n)]
    root = write_pool(tmp_path / "pool", [n, 0], texts=texts)
    full = next(p for p in root.glob("*.npz") if len(np.load(p)["l14_img"]))
    with np.load(full) as z:
        arrays = dict(z)
    arrays["l14_img"] = emb
    np.savez(full, **arrays)
    targets = tmp_path / "targets.pt"
    torch.save({"image_features": torch.from_numpy(centroids[[1, 4]] * 2)}, targets)  # targets -> {1, 4}
    # known answer: argmax inner product (margins are large), kept when in {1, 4}
    labels = np.argmax(emb.astype(np.float32) @ centroids.T, axis=1)
    assert (labels == nearest).all()
    kept = np.array(make_uids(n, 0))[np.isin(labels, [1, 4])]
    assert 0 < len(kept) < n
    buf = io.BytesIO()
    np.save(buf, sort_records(hex_to_records(list(kept))))  # DataComp's subset file
    expected = buf.getvalue()

    files = {"npy": tmp_path / "c.npy"}
    np.save(files["npy"], centroids)
    for protocol, numpy1, legacy in VARIANTS:
        files[(protocol, numpy1, legacy)] = torch_save(centroids, tmp_path / f"c{protocol}{numpy1}{legacy}.pt", protocol, numpy1, legacy)
    save_centroids(tmp_path / "built.pt", centroids)
    files["build-centroids"] = tmp_path / "built.pt"
    outputs = {}
    for name, path in files.items():
        f = ImageBasedFilter(centroids=str(path), targets=str(targets))
        f.language_id = FakeLID()
        ctx = RunContext(Pool(root), LocalExecutor(1, show_progress=False))
        out, _ = run_to_subset(f, ctx, tmp_path / "out" / f"{hashlib.md5(str(name).encode()).hexdigest()}.npy")
        outputs[name] = out.read_bytes()
    assert len(outputs) == len(VARIANTS) + 2
    assert all(v == expected for v in outputs.values()), [k for k, v in outputs.items() if v != expected]


# ---- malicious pickles ---------------------------------------------------------------------------
class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


class _Touch:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _bad_encode(marker):  # _codecs.encode with another codec than latin1
    return b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."


def malicious_files(tmp: Path, marker: Path) -> dict[str, Path]:
    """Each file would create ``marker`` when unpickled without restrictions."""
    import torch

    files = {}
    for name, cls in (("system", _System), ("exec", _Exec), ("touch", _Touch)):
        for p in (2, 4):
            path = tmp / f"{name}{p}.pt"
            torch.save(cls(marker), path, pickle_protocol=p)
            files[f"{name}-torch-p{p}"] = path
        raw = tmp / f"{name}.pkl"
        raw.write_bytes(pickle.dumps(cls(marker), protocol=2))
        files[f"{name}-plain"] = raw
    # hidden inside a numpy object array, a dict beside a real array, and beside tensors
    path = tmp / "objarray.pt"
    torch.save(np.array([_System(marker)], dtype=object), path)
    files["object-array"] = path
    path = tmp / "dict.pt"
    torch.save({"image_features": np.eye(2, dtype=np.float32), "x": _Exec(marker)}, path)
    files["dict"] = path
    path = tmp / "tensors.pt"
    torch.save({"image_features": torch.eye(2), "x": _System(marker)}, path)
    files["with-tensors"] = path
    legacy = tmp / "legacy.pt"
    torch.save(_System(marker), legacy, _use_new_zipfile_serialization=False)
    files["legacy"] = legacy
    codec = tmp / "codec.pkl"
    codec.write_bytes(_bad_encode(marker))
    files["codec"] = codec
    npz = tmp / "evil.npz"
    np.savez(npz, image_features=np.array([_System(marker)], dtype=object))
    files["npz"] = npz
    npy = tmp / "evil.npy"
    np.save(npy, np.array([_System(marker)], dtype=object), allow_pickle=True)
    files["npy"] = npy
    return files


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_malicious_array_files_refused_with_one_line(tmp_path):
    from clipsift.filters.negclip.normsim_targets import read_matrix

    marker = tmp_path / "pwned"
    for name, path in malicious_files(tmp_path, marker).items():
        before = path.read_bytes()
        for load in (
            lambda p: assets.load_centroids(str(p)),
            lambda p: assets.load_targets(str(p)),
            lambda p: read_matrix(p),
            lambda p: load_array_file(p),
        ):
            with pytest.raises(ClipsiftError) as exc:
                load(path)
            assert str(path) in one_line(exc.value), name
        assert not marker.exists(), name
        assert path.read_bytes() == before
    with pytest.raises(UnsafeFileError, match="posix.system is not allowed"):
        load_torch_file(tmp_path / "system2.pt")
    with pytest.raises(UnsafeFileError, match="encode.*latin1"):
        load_torch_file(tmp_path / "codec.pkl")
    with pytest.raises(UnsafeFileError, match="weights-only loader .global posix.system is not allowed; nothing"):
        load_torch_file(tmp_path / "tensors.pt")
    assert not marker.exists()


def test_cli_refuses_malicious_centroids_with_one_line(tmp_path, capsys):
    import torch

    marker = tmp_path / "pwned"
    pool = write_pool(tmp_path / "pool", [5, 0])
    evil = tmp_path / "centroids.pt"
    torch.save(_System(marker), evil)
    good_targets = tmp_path / "t.npy"
    np.save(good_targets, np.eye(3, 768, dtype=np.float32))
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([[0.5, 1.5]], dtype=object), allow_pickle=True)
    for centroids in (evil, objects):
        out = tmp_path / "out.npy"
        code = main(["-q", "filter", "image_based", "--pool", str(pool), "--out", str(out), "--workers", "1",
                     "--set", f"centroids={centroids}", "--set", f"targets={good_targets}"])
        captured = capsys.readouterr().err
        err = [ln for ln in captured.splitlines() if " WARNING " not in ln]  # the lid.176.ftz note
        assert code == 1 and len(err) == 1 and err[0].startswith("clipsift: error: ") and str(centroids) in err[0]
        assert "Traceback" not in captured and not out.exists() and not marker.exists()
    assert "Python objects" in err[0]


def test_object_arrays_are_one_line_everywhere(tmp_path):
    import torch

    from clipsift.clustering import ExternalEmbeddings
    from clipsift.filters.clipcov.partition import load_class_embeddings
    from clipsift.filters.negclip.normsim_targets import read_matrix

    obj = np.array([[0.1, 0.2], [0.3, 0.4]], dtype=object)
    npy = tmp_path / "o.npy"
    np.save(npy, obj, allow_pickle=True)
    pt = tmp_path / "o.pt"
    torch.save(obj, pt)
    npz = tmp_path / "o.npz"
    np.savez(npz, embeddings=obj, emb=obj, uids=np.array(make_uids(2), dtype=object))
    for path in (npy, pt, npz):
        with pytest.raises(ClipsiftError) as exc:
            assets.load_centroids(str(path))
        assert "Python objects" in one_line(exc.value) and str(path) in str(exc.value)
        with pytest.raises(ParamError) as exc:
            read_matrix(path)
        assert "Python objects" in one_line(exc.value)
    # class embeddings and external embeddings read npz without pickles: one line too
    with pytest.raises(ParamError) as exc:
        load_class_embeddings(npz)
    assert str(npz) in one_line(exc.value)
    with pytest.raises(ClipsiftError) as exc:
        ExternalEmbeddings._read(npz, "emb")
    assert str(npz) in one_line(exc.value)
    # ragged lists are one line too
    ragged = tmp_path / "ragged.pt"
    torch.save([[1.0, 2.0], [3.0]], ragged)
    with pytest.raises(ClipsiftError) as exc:
        assets.load_centroids(str(ragged))
    one_line(exc.value)


# ---- info.pkl ------------------------------------------------------------------------------------
DATACOMP_INFO = {
    "scale": "small",
    "checkpoint": PosixPath("/exp/checkpoints/epoch_latest.pt"),
    "scale_config": {"model": "ViT-B-32", "batch_size": 4096, "learning_rate": 5e-4},
    "data_dir": PosixPath("/data/shards"),
}


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_info_pkl_read_exactly_at_every_protocol(tmp_path, protocol):
    from clipsift.eval import evaluate as ev
    from clipsift.leaderboards.store import read_info_pkl

    path = tmp_path / "info.pkl"
    path.write_bytes(pickle.dumps(DATACOMP_INFO, protocol=protocol))
    assert load_info_pkl(path) == DATACOMP_INFO == ev._load_info(path)
    assert read_info_pkl(path)["checkpoint"] == "/exp/checkpoints/epoch_latest.pt"


def test_evaluate_refuses_malicious_info_pkl(tmp_path):
    from clipsift.eval import evaluate as ev
    from clipsift.leaderboards.store import read_info_pkl

    marker = tmp_path / "pwned"
    for i, cls in enumerate((_System, _Exec, _Touch)):
        train = tmp_path / f"train{i}"
        train.mkdir()
        (train / "info.pkl").write_bytes(pickle.dumps({"scale": "small", "checkpoint": cls(marker)}, protocol=2))
        with pytest.raises(ClipsiftError) as exc:
            ev.evaluate(train, tmp_path / f"out{i}", data_dir=str(tmp_path), suite="tiny")
        assert str(train / "info.pkl") in one_line(exc.value) and "not allowed" in str(exc.value)
        assert read_info_pkl(train / "info.pkl") == {}
        assert not (tmp_path / f"out{i}").exists()
    # a crafted info.pkl cached in the output folder is refused the same way
    good, out = tmp_path / "good", tmp_path / "out"
    good.mkdir()
    out.mkdir()
    (good / "info.pkl").write_bytes(pickle.dumps(DATACOMP_INFO))
    (out / "info.pkl").write_bytes(pickle.dumps(_System(marker)))
    with pytest.raises(ClipsiftError) as exc:
        ev.evaluate(good, out, data_dir=str(tmp_path), suite="tiny")
    assert str(out / "info.pkl") in one_line(exc.value)
    (out / "info.pkl").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ClipsiftError) as exc:
        ev.evaluate(good, out, data_dir=str(tmp_path), suite="tiny")
    one_line(exc.value)
    assert not marker.exists()


# ---- leaderboards: bad results files -------------------------------------------------------------
def write_results(path: Path, value=0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for t in datacomp_tasks().tasks:
            v = None if t.key in NO_MAIN_METRIC else value  # FairFace, UTKFace: null in DataComp's output
            fh.write(json.dumps({"key": t.key, "dataset": t.name, "metrics": {"acc1": v, "main_metric": v}}) + "\n")
    return path


def corrupt(path: Path, lineno: int, new: bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[lineno - 1] = new
    path.write_bytes(b"".join(lines))


BAD_METRICS = {
    "Infinity": b"Infinity",
    "-Infinity": b"-Infinity",
    "NaN": b"NaN",
    "above-one": b"1.5",
    "negative": b"-0.1",
    "string": b'"0.5"',
    "huge": b"1e999",
}


def snapshot(root: Path) -> dict:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", [*BAD_METRICS, "non-utf8"])
def test_leaderboard_bad_results_one_line_no_output(tmp_path, capsys, case):
    runs = tmp_path / "runs"
    good = write_results(runs / "good" / "eval_results.jsonl", 0.4)
    bad = write_results(runs / "bad" / "eval_results.jsonl", 0.5)
    lineno = 3
    if case == "non-utf8":
        corrupt(bad, lineno, b'{"key": "cars", "dataset": "Stanford Cars \xff", "metrics": {"main_metric": 0.5}}\n')
    else:
        task = datacomp_tasks().tasks[lineno - 1]
        corrupt(bad, lineno, b'{"key": "%s", "dataset": "%s", "metrics": {"acc1": 0.5, "main_metric": %s}}\n'
                % (task.key.encode(), task.name.encode(), BAD_METRICS[case]))
    before = snapshot(runs)
    out = tmp_path / "out"
    commands = [
        ["leaderboard", "aggregate", str(bad)],
        ["leaderboard", "aggregate", "--json", str(bad)],
        ["leaderboard", "build", str(runs), "--out", str(out)],
        ["leaderboard", "build", str(runs / "bad"), "--out", str(out), "--formats", "json"],
        ["leaderboard", "compare", str(runs / "good"), str(runs / "bad"), "--out", str(out)],
        ["leaderboard", "submit-pack", str(runs / "bad"), "--out", str(out), "--method-name", "m", "--author", "a",
         "--email", "a@b.c", "--hf-username", "u", "--hf-repo-name", "r", "--samples", str(good)],
    ]
    for argv in commands:
        code = main(argv)
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert code == 1, argv
        assert len(err) == 1 and err[0].startswith("clipsift: error: "), (argv, err)
        assert str(bad) in err[0] and f"line {lineno}" in err[0], err[0]
        assert "Traceback" not in captured.err and captured.out == ""
        assert not out.exists()
    assert snapshot(runs) == before


def test_null_main_metrics_stay_accepted_and_json_is_strict(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_results(runs / "a" / "eval_results.jsonl", 0.4)
    write_results(runs / "b" / "eval_results.jsonl", 1.0)  # bounds are scores too
    f = write_results(runs / "c" / "eval_results.jsonl", 0.0)

    def strict(text):
        def refuse(name):
            raise AssertionError(f"{name} in JSON output")

        return json.loads(text, parse_constant=refuse)

    assert main(["leaderboard", "aggregate", "--json", str(f)]) == 0
    assert strict(capsys.readouterr().out)["complete"] is True
    out = tmp_path / "out"
    assert main(["-q", "leaderboard", "build", str(runs), "--out", str(out), "--formats", "md,json"]) == 0
    capsys.readouterr()
    files = sorted(out.glob("*.json"))
    assert files
    for p in files:
        board = strict(p.read_text("utf-8"))
        ranked = [r for r in board["rows"] if r["source"] == "yours" and r["rank"]]
        assert len(ranked) == 3 and ranked[0]["average"] == 1.0
    assert main(["-q", "leaderboard", "compare", str(runs / "a"), str(runs / "b"), "--out", str(tmp_path / "cmp")]) == 0
    strict((tmp_path / "cmp" / "compare.json").read_text("utf-8"))


def test_run_json_with_nan_is_one_line(tmp_path, capsys):
    run = tmp_path / "runs" / "r"
    write_results(run / "eval_results.jsonl", 0.4)
    (run / "run.json").write_text('{"method": "m", "scale": "small", "subset": {"manifest": {"params": {"x": NaN}}}}')
    out = tmp_path / "out"
    assert main(["leaderboard", "build", str(run), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run / "run.json") in err[0] and "subset.manifest.params.x" in err[0]
    assert not out.exists()
    (run / "run.json").write_bytes(b'{"method": "m\xe9"}')
    assert main(["leaderboard", "build", str(run), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 1" in err[0] and "UTF-8" in err[0]


def test_strict_json_writer_refuses_non_finite():
    from clipsift.leaderboards.jsonio import dumps

    assert dumps({"a": [1.0, None]}) == '{"a": [1.0, null]}'
    with pytest.raises(ClipsiftError, match=r"rows\[1\]\.average is not a finite number"):
        dumps({"rows": [{"average": 0.5}, {"average": float("inf")}]}, "leaderboard.json")


def test_submit_pack_object_array_samples_is_a_failed_check(tmp_path, capsys):
    run = tmp_path / "r"
    write_results(run / "eval_results.jsonl", 0.4)
    samples = tmp_path / "subset.npy"
    np.save(samples, np.array([_System(tmp_path / "pwned")], dtype=object), allow_pickle=True)
    argv = ["leaderboard", "submit-pack", str(run), "--out", str(tmp_path / "pack"), "--samples", str(samples)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "samples:subset.npy: not a uid array" in err[0] and "Traceback" not in captured.err
    assert not (tmp_path / "pack").exists() and not (tmp_path / "pwned").exists()


def test_pickles_cannot_set_attributes_of_allowed_classes():
    import pathlib

    # (PosixPath, (None, {"__repr__": _codecs.encode})) BUILD: an unrestricted BUILD would replace
    # PosixPath.__repr__ for the whole process
    data = b"\x80\x02cpathlib\nPosixPath\nN}X\x08\x00\x00\x00__repr__c_codecs\nencode\ns\x86b."
    before = pathlib.PosixPath.__repr__
    with pytest.raises(pickle.UnpicklingError, match="state of a type is not allowed"):
        unpickle(data)
    assert pathlib.PosixPath.__repr__ is before
    # the same on an allowed function, through a dict state
    data = b"\x80\x02c_codecs\nencode\n}X\x0c\x00\x00\x00__defaults__(X\x05\x00\x00\x00rot13tsb."
    with pytest.raises(pickle.UnpicklingError, match="state of a function is not allowed"):
        unpickle(data)
    assert unpickle(pickle.dumps(b"\x00\xffab", protocol=2)) == b"\x00\xffab"


def test_cycles_deep_nesting_and_garbage_are_one_line(tmp_path):
    import torch

    cyclic = []
    cyclic.append(cyclic)
    n = 100_000  # [[[...]]] 100k levels deep, written opcode by opcode (pickle.dumps would recurse)
    deep = b"]" * n + b"a" * (n - 1)
    shared = [np.zeros(1, np.float32)]
    for _ in range(200):  # a DAG of 2^200 paths, 200 nodes: walked once per node
        shared = [shared, shared]
    torch.save({"image_features": cyclic}, tmp_path / "cycle.pt")
    (tmp_path / "cycle.pkl").write_bytes(pickle.dumps({"scale": cyclic}))
    (tmp_path / "deep.pt").write_bytes(b"\x80\x02" + deep + b".")
    (tmp_path / "deep.pkl").write_bytes(b"\x80\x02}X\x05\x00\x00\x00scale" + deep + b"s.")
    for name in ("cycle", "deep"):
        path = tmp_path / f"{name}.pt"
        with pytest.raises(ClipsiftError) as exc:
            assets.load_centroids(str(path))
        assert str(path) in one_line(exc.value)
        info = tmp_path / f"{name}.pkl"
        with pytest.raises(UnsafeFileError) as exc:
            load_info_pkl(info)
        one_line(exc.value)
    torch.save({"x": shared}, tmp_path / "shared.pt")
    with pytest.raises(UnsafeFileError, match="deeper than 64"):
        load_torch_file(tmp_path / "shared.pt")
    wide = [1.0]
    for _ in range(40):  # 40 levels, 41 lists, 2^40 items when expanded
        wide = [wide, wide]
    (tmp_path / "wide.pkl").write_bytes(pickle.dumps({"scale": wide}))
    with pytest.raises(UnsafeFileError, match="more than 100,000 items"):
        load_info_pkl(tmp_path / "wide.pkl")
    torch.save(wide, tmp_path / "wide.pt")
    with pytest.raises(UnsafeFileError, match="more than 100,000,000 items"):
        load_torch_file(tmp_path / "wide.pt")
    rng = np.random.default_rng(0)
    for i, data in enumerate([b"", b"\x80\x02", b"\x80\x04\x95garbage", rng.bytes(300), pickle.dumps(A, 4)[:-20]]):
        path = tmp_path / f"garbage{i}.pt"
        path.write_bytes(data)
        with pytest.raises(ClipsiftError) as exc:
            assets.load_centroids(str(path))
        assert str(path) in one_line(exc.value)
        with pytest.raises(UnsafeFileError) as exc:
            load_info_pkl(path)
        one_line(exc.value)
