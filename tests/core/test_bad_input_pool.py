"""Malformed pools, as a hostile user would make them: every case is one stderr line naming the
file (and row or key), exit 1, no traceback, nothing written, inputs unchanged. Typed 0-row
shards (pandas writes an empty caption column as double) are read by every filter."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_pool

from clipsift.cli import main
from clipsift.embcheck import bad_embedding_rows, screen_embeddings
from clipsift.errors import PoolError
from clipsift.pool import Pool


def tree_digest(root: Path) -> dict:
    """Every file under ``root`` (links not followed) with its sha256: inputs must stay unchanged."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def first(root: Path, ext: str) -> Path:
    return sorted(root.glob(f"*{ext}"))[0]


def rewrite_column(root: Path, name: str, make, only_first: bool = False) -> None:
    for f in sorted(root.glob("*.parquet"))[: 1 if only_first else None]:
        t = pq.read_table(f)
        i = t.schema.get_field_index(name)
        t = t.set_column(i, name, make(t.column(i), t.num_rows))
        pq.write_table(t, f)


def edit_npz(root: Path, edit) -> None:
    f = first(root, ".npz")
    z = dict(np.load(f))
    edit(z)
    np.savez(f, **z)


def corrupt_page(root):
    f = first(root, ".parquet")
    b = bytearray(f.read_bytes())
    for i in range(8, 400):
        b[i] ^= 0x5A
    f.write_bytes(bytes(b))


def _nan_row(z):
    z["l14_img"][3, 5] = np.nan


def _zero_row(z):
    z["l14_img"][4] = 0


def _narrow(z):
    z["l14_img"] = z["l14_img"][:, :700]


def _one_d(z):
    z["l14_img"] = z["l14_img"][:, 0]


def _objects(z):
    z["l14_img"] = np.array([None] * len(z["l14_img"]), dtype=object)


def _ints(z):
    z["l14_img"] = np.ones(z["l14_img"].shape, dtype=np.int32)


CASES = {
    # name: (break the pool, command args after --pool/--out, message fragment)
    "corrupt_page": (corrupt_page, ["no_filter"], "cannot read columns"),
    "garbage_parquet": (lambda r: first(r, ".parquet").write_bytes(b"not parquet" * 9), ["no_filter"], "unreadable parquet"),
    "zero_byte_parquet": (lambda r: first(r, ".parquet").write_bytes(b""), ["no_filter"], "0 bytes"),
    "folder_named_like_shard": (lambda r: (r / "zz.parquet").mkdir(), ["no_filter"], "folder named like a shard"),
    "symlink_loop": (lambda r: os.symlink(r / "loop.parquet", r / "loop.parquet"), ["no_filter"], "symbolic links"),
    "missing_uid": (lambda r: [pq.write_table(pq.read_table(f).drop(["uid"]), f) for f in r.glob("*.parquet")], ["no_filter"], "missing column(s) uid"),
    "non_hex_uid": (lambda r: rewrite_column(r, "uid", lambda c, n: pa.array(["zz" * 16] * n), only_first=True), ["no_filter"], "row 0"),
    "score_as_string": (
        lambda r: rewrite_column(r, "clip_l14_similarity_score", lambda c, n: c.cast(pa.string())),
        ["clip_score", "--set", "arch=l14", "--set", "fraction=0.3"], "clip_l14_similarity_score has type string",
    ),
    "score_as_string_in_one_shard": (
        lambda r: rewrite_column(r, "clip_l14_similarity_score", lambda c, n: c.cast(pa.string()), only_first=True),
        ["clip_score", "--set", "arch=l14", "--set", "fraction=0.3"], "clip_l14_similarity_score has type string",
    ),
    "binary_captions": (
        lambda r: rewrite_column(r, "text", lambda c, n: pa.array([b"\xff\xfe%d" % i for i in range(n)], pa.binary())),
        ["basic_filter"], "text has type binary",
    ),
    "non_utf8_captions": (
        lambda r: rewrite_column(r, "text", lambda c, n: pa.array([b"ok %d" % i if i != 7 else b"caf\xe9" for i in range(n)], pa.binary()).view(pa.string()), only_first=True),
        ["basic_filter"], "row 7 is not valid UTF-8",
    ),
    "truncated_npz": (lambda r: first(r, ".npz").write_bytes(first(r, ".npz").read_bytes()[:5000]), ["negclip", "--set", "fraction=0.5"], "unreadable npz"),
    "nan_embedding": (lambda r: edit_npz(r, _nan_row), ["negclip", "--set", "fraction=0.5"], "key 'l14_img' row 3 has non-finite values"),
    "zero_embedding": (lambda r: edit_npz(r, _zero_row), ["negclip", "--set", "fraction=0.5"], "row 4 has zero norm"),
    "npz_wrong_width": (lambda r: edit_npz(r, _narrow), ["negclip", "--set", "fraction=0.5"], "l14_img has width 700"),
    "npz_one_d": (lambda r: edit_npz(r, _one_d), ["negclip", "--set", "fraction=0.5"], "expected (rows, width)"),
    "npz_object_array": (lambda r: edit_npz(r, _objects), ["negclip", "--set", "fraction=0.5"], "unreadable npz"),
    "npz_integer_array": (lambda r: edit_npz(r, _ints), ["negclip", "--set", "fraction=0.5"], "expected float16/float32"),
    "column_missing_in_one_shard": (
        lambda r: pq.write_table(pq.read_table(sorted(r.glob("*.parquet"))[1]).drop(["text"]), sorted(r.glob("*.parquet"))[1]),
        ["basic_filter"], "missing column(s) text that the pool's first shard has",
    ),
    "null_uid": (
        lambda r: rewrite_column(r, "uid", lambda c, n: pa.array([None, *c.to_pylist()[1:]], pa.string()), only_first=True),
        ["no_filter"], "row 0",
    ),
    "npz_missing": (lambda r: first(r, ".npz").unlink(), ["negclip", "--set", "fraction=0.5"], "missing embeddings file"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_pool_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    breaker, args, fragment = CASES[case]
    pool = write_pool(tmp_path / "pool", [30, 20])
    breaker(pool)
    before = tree_digest(pool)
    out = tmp_path / "out" / "subset.npy"
    code = main(["-q", "filter", args[0], "--pool", str(pool), "--out", str(out), "--workers", "1", *args[1:]])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("clipsift: error:")]
    assert code == 1, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert fragment in errors[0], errors[0]
    assert str(pool) in errors[0], errors[0]  # names the file
    assert tree_digest(pool) == before
    assert not out.parent.exists() or not any(out.parent.iterdir())


@pytest.mark.parametrize("case", ["truncated_npz", "folder_named_like_shard", "symlink_loop"])
def test_pool_info_on_bad_pools_is_one_line(tmp_path, capsys, case):
    pool = write_pool(tmp_path / "pool", [30, 20])
    CASES[case][0](pool)
    assert main(["pool", "info", str(pool)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and str(pool) in err, err


def test_stray_files_are_warned(tmp_path, caplog):
    pool = write_pool(tmp_path / "pool", [30, 20])
    shutil.copy(first(pool, ".parquet"), str(first(pool, ".parquet")) + ".bak")
    shutil.copy(first(pool, ".npz"), pool / "orphan.npz")
    with caplog.at_level("WARNING", logger="clipsift"):
        p = Pool(str(pool))
    text = caplog.text
    assert ".parquet.bak: read as a shard" in text and "orphan.npz: npz without its parquet" in text
    assert p.num_rows == 80  # DataComp's rule still counts the .bak: the warning says so


def typed_empty_shard(root: Path) -> None:
    """A 0-row shard whose every column is double, as pandas writes an empty frame."""
    schema = pq.read_schema(first(root, ".parquet"))
    pq.write_table(pa.table({name: pa.array([], pa.float64()) for name in schema.names}), root / "000empty.parquet")
    np.savez(root / "000empty.npz", **{k: np.zeros((0, d), np.float16) for k, d in (("b32_img", 512), ("b32_txt", 512), ("l14_img", 768), ("l14_txt", 768))})


FILTER_ARGS = {
    "no_filter": {},
    "basic_filter": {},
    "clip_score": {"arch": "l14", "fraction": 0.5},
    "random": {"fraction": 0.5},
    "negclip": {"fraction": 0.5, "batch_size": 16},
    "normsim": {"fraction": 0.5, "norm": "dynamic"},
    "semdedup": {"k": 2},
    "ssp": {"fraction": 0.5, "k": 2},
    "dbp": {"fraction": 0.5, "k": 2, "dedup_k": 2, "clip_fraction": 0.8},
    "clipcov": {"partition": "kmeans", "clusters": 2, "fraction": 0.5},
}


@pytest.mark.parametrize("name", sorted(FILTER_ARGS))
def test_typed_empty_shard_gives_the_same_subset(tmp_path, name):
    """Adding a 0-row shard with double columns changes nothing (DataComp handles such shards)."""
    from clipsift.executor import LocalExecutor
    from clipsift.filter import RunContext
    from clipsift.registry import create_filter

    plain = write_pool(tmp_path / "plain", [40, 30], seed=4)
    typed = tmp_path / "typed"
    shutil.copytree(plain, typed)
    typed_empty_shard(typed)
    pool = Pool(str(typed))
    assert pool.shards[0].num_rows == 0 and pool.schema.field("text").type == pa.string()
    results = []
    for root in (plain, typed):
        ctx = RunContext(Pool(str(root)), LocalExecutor(1, show_progress=False), workdir=tmp_path / f"w-{root.name}")
        results.append(create_filter(name, FILTER_ARGS[name]).select(ctx).uids)
    np.testing.assert_array_equal(results[0], results[1])


def test_bad_embeddings_drop_leaves_rows_out_and_counts_them(tmp_path):
    import json

    pool = write_pool(tmp_path / "pool", [30, 20])
    edit_npz(pool, _nan_row)
    out = tmp_path / "s.npy"
    assert main(["-q", "filter", "negclip", "--pool", str(pool), "--out", str(out), "--set", "fraction=1.0", "--bad-embeddings", "drop"]) == 0
    manifest = json.loads(Path(f"{out}.json").read_text())
    assert manifest["counters"]["dropped_while_reading"] == {"bad_embeddings": 1}
    bad_uid = pq.read_table(first(pool, ".parquet")).column("uid")[3].as_py()
    from clipsift.uids import records_to_hex

    kept = set(records_to_hex(np.load(out)))
    assert bad_uid not in kept and len(kept) == 49


def test_embedding_rule_reads_the_bits_right():
    for dt in (np.float16, np.float32, np.float64):
        e = np.ones((9, 4), dtype=dt)
        e[1, 2], e[2, 0], e[3, 3], e[4] = np.nan, np.inf, -np.inf, 0
        e[5] = -0.0
        e[6, 1] = np.finfo(dt).max  # large but finite: usable
        e[7] = np.finfo(dt).tiny  # tiny but not zero: usable
        np.testing.assert_array_equal(np.flatnonzero(bad_embedding_rows(e)), [1, 2, 3, 4, 5])
    with pytest.raises(PoolError, match=r"x.npz: key 'k' row 12 has zero norm \(1 such"):
        screen_embeddings(np.array([[1, 0], [0, 0]], np.float32), source="x.npz", key="k", rows=np.array([11, 12]))
    keep = screen_embeddings(np.array([[1, 0], [0, 0]], np.float32), source="x.npz", key="k", policy="drop")
    np.testing.assert_array_equal(keep, [True, False])


@pytest.mark.parametrize("name,extra", [("random", {}), ("clipcov", {"partition": "kmeans", "clusters": 2})])
def test_count_above_the_pool_warns_and_records_the_shortfall(tmp_path, caplog, name, extra):
    from clipsift.executor import LocalExecutor
    from clipsift.filter import RunContext
    from clipsift.registry import create_filter

    pool = Pool(str(write_pool(tmp_path / "pool", [30, 20])))
    ctx = RunContext(pool, LocalExecutor(1, show_progress=False), workdir=tmp_path / "w")
    with caplog.at_level("WARNING", logger="clipsift"):
        sel = create_filter(name, {"count": 60, **extra}).select(ctx)
    assert len(sel) == 50
    assert sel.details["shortfall"] == {"asked": 60, "available": 50, "kept": 50, "short": 10, "of": "candidates"}
    assert "count=60 asked, but only 50" in caplog.text


def test_dictionary_encoded_captions_read_as_strings(tmp_path):
    """pandas writes categoricals as dictionary columns: same subset as plain strings."""
    from clipsift.executor import LocalExecutor
    from clipsift.filter import RunContext
    from clipsift.registry import create_filter

    plain = write_pool(tmp_path / "plain", [30, 20], texts=[f"a dog number {i % 7} on grass" for i in range(50)])
    coded = tmp_path / "coded"
    shutil.copytree(plain, coded)
    rewrite_column(coded, "text", lambda c, n: c.dictionary_encode())
    out = []
    for root in (plain, coded):
        ctx = RunContext(Pool(str(root)), LocalExecutor(1, show_progress=False), workdir=tmp_path / f"w{root.name}")
        out.append(create_filter("basic_filter", {}).select(ctx).uids)
    np.testing.assert_array_equal(out[0], out[1])


def test_a_bad_row_read_by_several_passes_is_counted_once():
    from clipsift.embcheck import DropCounts

    d = DropCounts()
    d.add_rows("bad_embeddings", 0, np.array([3, 4]))
    d.add_rows("bad_embeddings", 0, np.array([4, 3]))  # the same rows in a second pass
    d.add_rows("bad_embeddings", 1, np.array([3]))  # row 3 of another shard is another row
    assert d == {"bad_embeddings": 3}
