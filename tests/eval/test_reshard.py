"""clipsift reshard: DataComp resharder semantics on small img2dataset-style shards written here."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from clipsift.cli import main as cli
from clipsift.eval.reshard import ReshardArgs, reshard
from clipsift.eval.train import resolve_train_data
from clipsift.subset import write_subset
from clipsift.uids import hex_to_records


def _uid(i: int) -> str:
    return hashlib.md5(f"uid-{i}".encode()).hexdigest()


def write_shards(root: Path, sizes, no_json=()) -> list[tuple[str, dict]]:
    """img2dataset layout: {S:08d}.tar with <key>.jpg/.json/.txt, {S:08d}_stats.json; returns samples in order."""
    root.mkdir(parents=True, exist_ok=True)
    samples, n = [], 0
    for s, size in enumerate(sizes):
        with tarfile.open(root / f"{s:08d}.tar", "w") as tar:
            for r in range(size):
                key = f"{s * 10**4 + r:012d}"
                uid = _uid(n)
                members = {"jpg": bytes([n % 256]) * (10 + n), "txt": f"caption {n}".encode()}
                if n not in no_json:
                    members["json"] = json.dumps({"uid": uid, "caption": f"caption {n}", "key": key}, indent=4).encode()
                for ext in sorted(members):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(members[ext])
                    tar.addfile(info, io.BytesIO(members[ext]))
                samples.append((uid, members))
                n += 1
        (root / f"{s:08d}_stats.json").write_text(json.dumps({"successes": size}, indent=4))
    return samples


def read_output(out: Path) -> list[tuple[str, dict]]:
    """(key, members) of every output shard in shard order, checking stats files as it goes."""
    meta = json.loads((out / "meta.json").read_text())
    got = []
    for sid in range(meta["output_shard_count"]):
        with tarfile.open(out / f"{sid:08d}.tar") as tar:
            cur: dict[str, dict] = {}
            order = []
            for info in tar:
                key, ext = info.name.split(".", 1)
                if key not in cur:
                    cur[key] = {}
                    order.append(key)
                cur[key][ext] = tar.extractfile(info).read()
        assert json.loads((out / f"{sid:08d}_stats.json").read_text()) == {"successes": len(order)}
        got += [(k, cur[k]) for k in order]
    assert not (out / f"{meta['output_shard_count']:08d}.tar").exists()
    return got


@pytest.fixture
def shards(tmp_path):
    samples = write_shards(tmp_path / "in", [5, 7, 4], no_json={3})
    return tmp_path, samples


def make_subset(tmp_path, samples):
    uids = [samples[i][0] for i in (0, 2, 3, 5, 8, 9, 15)] + [samples[8][0], samples[8][0]]  # uid 8 three times
    uids.append(_uid(999))  # not in the shards
    return write_subset(tmp_path / "subset.npy", hex_to_records(uids), {"filter": "hand"})


def test_reshard_semantics(shards):
    tmp_path, samples = shards
    subset = make_subset(tmp_path, samples)
    res = reshard(ReshardArgs(str(tmp_path / "in"), str(tmp_path / "out"), str(subset), num_workers=1, shard_size=4, allow_incomplete=True))
    out = tmp_path / "out"
    got = read_output(out)
    # sample 3 has no json (skipped); uid 8 three times with distinct keys; input order with -j 1
    expected = []
    for i in (0, 2, 5, 8, 9, 15):
        m = 3 if i == 8 else 1
        expected += [(f"{samples[i][0]}-{j}", {k: v for k, v in samples[i][1].items()}) for j in range(m)]
    assert [k for k, _ in got] == [k for k, _ in expected]
    for (_, a), (_, b) in zip(got, expected):
        assert a == b  # member bytes identical, same extensions
    assert res.output_count == 8 and res.processed_count == 15 and res.missing_count == 2
    assert res.output_shard_count == 2  # 4 + 4
    meta = json.loads((out / "meta.json").read_text())
    assert list(meta)[:3] == ["input_dir", "output_dir", "subset_file"] and meta["shard_size"] == "4"
    assert list(meta)[list(meta).index("quiet") + 1] == "processed_count"  # DataComp's flags only (no allow_incomplete)
    assert meta["output_shard_format"] == "{:08d}.tar" and meta["output_count"] == 8 and meta["cwd"]
    assert (out / "sample_ids.npy").read_bytes() == Path(subset).read_bytes()
    report = json.loads((out / "reshard_report.json").read_text())
    assert report["not_found_count"] == 10 - 8 and report["missing_count"] == 2
    missing = set(np.load(out / "missing_uids.npy").tolist())
    assert missing == set(hex_to_records([samples[3][0], _uid(999)]).tolist())
    assert resolve_train_data(str(out))[0] == f"{out}/{{00000000..00000001}}.tar"


def test_parallel_same_multiset_and_contiguous_ids(shards):
    tmp_path, samples = shards
    subset = make_subset(tmp_path, samples)
    reshard(ReshardArgs(str(tmp_path / "in"), str(tmp_path / "o1"), str(subset), num_workers=1, shard_size=3, allow_incomplete=True))
    res = reshard(ReshardArgs(str(tmp_path / "in"), str(tmp_path / "o3"), str(subset), num_workers=3, shard_size=3, allow_incomplete=True))
    a, b = read_output(tmp_path / "o1"), read_output(tmp_path / "o3")
    assert Counter(k for k, _ in a) == Counter(k for k, _ in b)
    assert res.output_shard_count >= 3  # one partial tail per worker


def test_sizes_table_first_and_dry_run(shards):
    tmp_path, samples = shards
    subset = make_subset(tmp_path, samples)
    (tmp_path / "in" / "sizes.json").write_text(json.dumps({"00000000.tar": 5, "00000001.tar": 7}))  # shard 2 from stats
    (tmp_path / "in" / "00000002_stats.json").unlink()
    res = reshard(ReshardArgs(str(tmp_path / "in"), str(tmp_path / "dry"), str(subset), num_workers=1, dry_run=True, allow_incomplete=True))
    assert res.output_count == 7 and not (tmp_path / "dry").exists()  # shard 2 skipped: no size known


def test_cli_non_empty_output_and_overwrite(shards, capsys):
    tmp_path, samples = shards
    subset = make_subset(tmp_path, samples)
    out = tmp_path / "cli"
    out.mkdir()
    (out / "stale.txt").write_text("x")
    args = ["reshard", "-i", str(tmp_path / "in"), "-o", str(out), "-s", str(subset), "-j", "2", "--allow-incomplete"]
    assert cli(args) == 1
    assert "not empty" in capsys.readouterr().err
    assert cli(args + ["--overwrite"]) == 1  # not clipsift's output: never deleted
    assert "not written by clipsift reshard" in capsys.readouterr().err
    assert (out / "stale.txt").read_text() == "x"
    (out / "stale.txt").unlink()
    assert cli(args + ["--shard-size", "3", "--json"]) == 0  # an empty folder is fine without --overwrite
    assert json.loads(capsys.readouterr().out)["output_shard_count"] >= 3
    assert cli(args) == 1  # clipsift's own output still needs --overwrite
    assert cli(args + ["--overwrite", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output_shard_count"] == 2
    assert len(read_output(out)) == 8 and not (out / "00000002_stats.json").exists()  # old shards gone
    own = json.loads((out / ".clipsift-reshard.json").read_text())["files"]
    assert sorted(p.name for p in out.iterdir()) == sorted(own + [".clipsift-reshard.json"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_raw_and_unsorted_subsets(shards):
    tmp_path, samples = shards
    recs = hex_to_records([samples[i][0] for i in (9, 0, 4)])
    raw = tmp_path / "raw.bin"
    raw.write_bytes(recs.tobytes())  # unsorted raw records: clipsift sorts before the lookup
    res = reshard(ReshardArgs(str(tmp_path / "in"), str(tmp_path / "raw_out"), str(raw), num_workers=2, allow_incomplete=True))
    assert res.output_count == 3
    assert (tmp_path / "raw_out" / "sample_ids.npy").read_bytes() == raw.read_bytes()
