"""`clipsift embed`: image shards -> DataComp metadata with a tiny random-weights open_clip model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipsift.cli import main as cli_main
from clipsift.errors import ParamError
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.filters.scores import embed as embed_mod
from clipsift.pool import Pool
from clipsift.registry import create_filter
from clipsift.synth import make_pool


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    make_pool(root / "pool", 60, images=True, shard_rows=25, seed=1, workers=1)
    return root / "pool" / "shards"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import open_clip
    import torch

    from clipsift.eval.train import register_model_configs

    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("clipsift-tiny")
    path = tmp_path_factory.mktemp("w") / "tiny_random.pt"
    torch.save(model.state_dict(), path)
    return path


def run_embed(shards, out, weights, name="l14", extra=()):
    args = ["embed", "--shards", str(shards), "--out", str(out), "--model", "clipsift-tiny", "--pretrained", str(weights),
            "--name", name, "--batch-size", "16", "--device", "cpu", *extra]
    return cli_main(args)


def tar_uids(shards: Path, stem: str) -> list[str]:
    t = pq.read_table(shards / f"{stem}.parquet", columns=["uid", "status"])
    return [u for u, s in zip(t.column("uid").to_pylist(), t.column("status").to_pylist()) if s == "success"]


def test_embed_writes_aligned_pool_metadata(shards, weights, tmp_path):
    out = tmp_path / "meta"
    assert run_embed(shards, out, weights) == 0
    pool = Pool(str(out))  # `clipsift pool info` accepts it
    assert cli_main(["pool", "info", str(out)]) == 0
    stems = sorted(p.stem for p in shards.glob("*.tar"))
    assert [s.name for s in pool.shards] == stems
    total = 0
    for stem in stems:
        t = pq.read_table(out / f"{stem}.parquet")
        assert t.column("uid").to_pylist() == tar_uids(shards, stem)  # rows align with the tar's samples
        z = np.load(out / f"{stem}.npz")
        img, txt = z["l14_img"], z["l14_txt"]
        assert img.dtype == np.float16 and img.shape == (t.num_rows, 64) and txt.shape == img.shape
        a, b = img.astype(np.float64), txt.astype(np.float64)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert np.allclose(t.column("clip_l14_similarity_score").to_numpy(), cos, rtol=0, atol=1e-12)
        assert np.allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1, atol=2e-3)
        assert set(t.column_names) >= {"url", "text", "original_width", "original_height", "sha256"}
        total += t.num_rows
    assert total > 0 and json.loads((out / "embed.json").read_text())["state"] == "done"
    # clip_score on the new column equals score on the same values written as a per-uid file
    ctx = RunContext(pool, LocalExecutor(workers=1, show_progress=False), workdir=tmp_path / "w")
    a = create_filter("clip_score", {"arch": "l14", "fraction": 0.3}).select(ctx)
    t = pa.concat_tables(
        [pq.read_table(p, columns=["uid", "clip_l14_similarity_score"]) for p in sorted(out.glob("*.parquet"))]
    )
    f = tmp_path / "s.parquet"
    pq.write_table(t.rename_columns(["uid", "score"]), f)
    b = create_filter("score", {"scores": str(f), "fraction": 0.3}).select(ctx)
    assert np.array_equal(a.uids, b.uids) and len(a) > 0


def test_embed_resumes_after_interruption(shards, weights, tmp_path, monkeypatch):
    out = tmp_path / "meta"
    real = embed_mod.embed_shard
    calls = []

    def flaky(em, tar_path, *a, **k):
        calls.append(tar_path.stem)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(em, tar_path, *a, **k)

    monkeypatch.setattr(embed_mod, "embed_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        embed_mod.embed_folder(shards, out, arch="clipsift-tiny", pretrained=str(weights), name="dfn", batch_size=16, device="cpu")
    stems = sorted(p.stem for p in shards.glob("*.tar"))
    assert sorted(p.stem for p in out.glob("*.parquet")) == stems[:1]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    monkeypatch.setattr(embed_mod, "embed_shard", real)
    first = (out / f"{stems[0]}.parquet").stat().st_mtime_ns
    summary = embed_mod.embed_folder(shards, out, arch="clipsift-tiny", pretrained=str(weights), name="dfn", batch_size=16, device="cpu")
    assert summary["skipped_done"] == 1 and (out / f"{stems[0]}.parquet").stat().st_mtime_ns == first
    assert sorted(p.stem for p in out.glob("*.parquet")) == stems
    assert "clip_dfn_similarity_score" in Pool(str(out)).columns
    # resuming with other settings is refused
    with pytest.raises(ParamError, match="other settings"):
        embed_mod.embed_folder(shards, out, arch="clipsift-tiny", pretrained=str(weights), name="other", batch_size=16, device="cpu")


def test_embed_errors(shards, weights, tmp_path):
    with pytest.raises(ParamError, match="weights file not found"):
        embed_mod.embed_folder(shards, tmp_path / "o", arch="clipsift-tiny", pretrained=str(tmp_path / "none.pt"), name="x")
    with pytest.raises(ParamError, match="no .tar shards"):
        embed_mod.embed_folder(tmp_path, tmp_path / "o", arch="clipsift-tiny", pretrained=str(weights), name="x")
    with pytest.raises(ParamError, match="--name"):
        embed_mod.embed_folder(shards, tmp_path / "o", arch="clipsift-tiny", pretrained=str(weights), name="Bad-Name")
    assert run_embed(shards, tmp_path / "o2", weights, extra=["--model-config", str(tmp_path / "nope.json")]) == 1


def test_embed_skips_samples_without_json_or_image(shards, weights, tmp_path):
    import io
    import tarfile

    src = sorted(shards.glob("*.tar"))[0]
    with tarfile.open(src) as tf:
        names = [m.name for m in tf.getmembers()]
        key = names[0].split(".")[0]
        good = {n.split(".", 1)[1]: tf.extractfile(n).read() for n in names if n.startswith(key + ".")}
    meta = json.loads(good["json"])
    d = tmp_path / "byod"
    d.mkdir()

    def add(tf, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    bad_meta = dict(meta, uid="f" * 32)
    with tarfile.open(d / "00000000.tar", "w") as tf:
        add(tf, "a.jpg", good["jpg"]), add(tf, "a.json", good["json"]), add(tf, "a.txt", good["txt"])
        add(tf, "b.jpg", b"not a jpeg"), add(tf, "b.json", json.dumps(bad_meta).encode())
        add(tf, "c.jpg", good["jpg"]), add(tf, "c.txt", b"no json")
    s = embed_mod.embed_folder(d, tmp_path / "o", arch="clipsift-tiny", pretrained=str(weights), name="t", device="cpu", decode_threads=2)
    assert (s["samples"], s["bad_image"], s["no_json"]) == (1, 1, 1)
    t = pq.read_table(tmp_path / "o" / "00000000.parquet")
    assert t.column("uid").to_pylist() == [meta["uid"]] and t.column("text").to_pylist() == [good["txt"].decode()]
