"""DataComp baselines on hand-built pools: every expected subset is worked out here, row by row."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import make_uids, write_pool

from clipsift.baselines.basic_filter import BasicFilter
from clipsift.baselines.centroids import save_centroids
from clipsift.baselines.clip_score import ClipScoreFilter
from clipsift.baselines.image_based import ImageBasedFilter, ImageBasedIntersectClipScoreFilter
from clipsift.baselines.laion2b import Laion2bFilter
from clipsift.baselines.text_based import TextBasedFilter
from clipsift.cli import main
from clipsift.errors import MissingDependencyError, ParamError
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.pool import Pool
from clipsift.runner import run_to_subset
from clipsift.uids import hex_to_records, sort_records


class FakeLID:
    """English unless the caption holds 'ZZ'; records what it was asked."""

    def __init__(self):
        self.seen = []

    def predict(self, texts):
        self.seen.extend(texts)
        return ["xx" if "ZZ" in t else "en" for t in texts]


def expected_bytes(uids_hex) -> bytes:
    """What DataComp's baselines.py writes: np.save of the sorted u8,u8 array."""
    buf = io.BytesIO()
    np.save(buf, sort_records(hex_to_records(list(uids_hex))))
    return buf.getvalue()


def run(filter_, pool_dir, out, workers=1) -> bytes:
    ctx = RunContext(Pool(pool_dir), LocalExecutor(workers, show_progress=False))
    path, _ = run_to_subset(filter_, ctx, out)
    return path.read_bytes()


def build(tmp_path, rows, sizes=None, **columns):
    """Pool from per-row tuples; ``sizes`` splits it into shards (an empty one included)."""
    n = len(rows)
    sizes = sizes or [n // 2, 0, n - n // 2]
    root = write_pool(tmp_path / "pool", sizes, texts=[r[0] for r in rows], extra_columns=columns)
    return root, make_uids(n, 0)


# ---- basic_filter -------------------------------------------------------------------------------
BASIC_ROWS = [  # text, width, height, kept
    ("one two three", 300, 300, True),
    ("one two", 300, 300, False),  # 2 words
    ("a b c", 300, 300, False),  # 5 characters
    ("a b cd", 300, 300, True),  # 6 characters, 3 words
    ("one two three", 200, 300, True),  # short side exactly 200
    ("one two three", 199, 300, False),
    ("one two three", 600, 200, True),  # aspect ratio exactly 3.0
    ("one two three", 601, 200, False),
    ("one two three", 200, 600, True),
    ("one two three", None, 300, False),  # null width
    ("one two three", 0, 300, False),
    ("one two ZZ three", 300, 300, False),  # not English
    ("one\ntwo\nthree", 300, 300, True),  # LF splits words; replaced before language ID
    ("one\u00a0two\u3000three", 300, 300, True),  # Unicode whitespace splits words
    ("one\u200btwo three", 300, 300, False),  # U+200B does not: 2 words
    ("日本語の テキスト です", 300, 300, True),  # 3 words, 12 code points
    ("", 300, 300, False),
]


def test_basic_filter_boundaries(tmp_path):
    root, uids = build(tmp_path, BASIC_ROWS, original_width=[r[1] for r in BASIC_ROWS], original_height=[r[2] for r in BASIC_ROWS])
    f = BasicFilter()
    f.language_id = lid = FakeLID()
    got = run(f, root, tmp_path / "basic.npy")
    assert got == expected_bytes(u for u, r in zip(uids, BASIC_ROWS) if r[3])
    assert all("\n" not in t for t in lid.seen) and "one two three" in lid.seen


def test_basic_filter_parallel_and_in_blocks_is_the_same(tmp_path, monkeypatch):
    import clipsift.baselines.basic_filter as bf

    rows = BASIC_ROWS * 3
    root, uids = build(tmp_path, rows, sizes=[17, 0, 20, 14], original_width=[r[1] for r in rows], original_height=[r[2] for r in rows])
    expected = expected_bytes(u for u, r in zip(uids, rows) if r[3])
    f = BasicFilter()
    f.language_id = FakeLID()
    assert run(f, root, tmp_path / "p.npy", workers=2) == expected
    f.language_id = lid = FakeLID()
    assert run(f, root, tmp_path / "one.npy") == expected
    assert sorted(lid.seen) == sorted(set(lid.seen))  # one round: each caption once in the whole job
    monkeypatch.setattr(bf, "BLOCK_CAPTIONS", 3)  # a language-ID round after every shard
    f.language_id = FakeLID()
    assert run(f, root, tmp_path / "b.npy") == expected
    manifest = json.loads((tmp_path / "b.npy.json").read_text())
    assert manifest["counters"]["kept"] == sum(r[3] for r in rows) and manifest["counters"]["input"] == len(rows)


def test_basic_filter_row_contract_equals_its_batched_select(tmp_path):
    """keep() (the row-filter contract, language ID per shard) and select() (language ID batched
    over distinct captions across shards) are the same rule: same bytes, same per-reason counters."""
    from clipsift.executor import LocalExecutor
    from clipsift.filter import RowFilter, RunContext
    from clipsift.pool import Pool

    rows = BASIC_ROWS * 2
    root, uids = build(tmp_path, rows, sizes=[10, 0, 15, 9], original_width=[r[1] for r in rows], original_height=[r[2] for r in rows])
    f = BasicFilter()
    f.language_id = FakeLID()
    ctx = lambda: RunContext(Pool(str(root)), LocalExecutor(1, show_progress=False), workdir=tmp_path / "w")  # noqa: E731
    batched = f.select(ctx())
    by_row = RowFilter.select(f, ctx())
    assert np.array_equal(batched.uids, by_row.uids) and len(batched) == sum(r[3] for r in rows)
    common = {k: v for k, v in batched.counters.items() if k != "language_id_captions"}
    assert common == by_row.counters
    assert common["dropped"] == common["input"] - common["kept"] == sum(v for k, v in common.items() if k.startswith("dropped_"))
    assert common["dropped_language"] == 2 and common["dropped_image_size"] == 8


# ---- text_based ---------------------------------------------------------------------------------
TEXT_ROWS = [  # text, kept
    ("a dog on the sofa", True),  # dog -> n02084071
    ("the dog, and", False),  # punctuation stays attached: "dog," has no synset
    ("Dogs", True),  # lower-cased, plural rule
    ("Dogs!", False),
    ("ZZ a dog", False),  # not English
    ("a visual essay", True),  # adjective whose offset equals an ImageNet-21k noun offset
    ("a cerebral essay", False),  # ... only in Debian's rebuild of WordNet, not in Princeton's (nltk's)
    ("his and the", False),  # exception list short-circuit: "his" is not "hi"
    ("a photo of cars\n", True),
    ("", False),
    ("犬 Hund", False),
    ("x\u00a0dog", True),  # str.split splits at NBSP
    ("x\u200bdog", False),  # but not at U+200B: one word
]


def test_text_based_known_answers(tmp_path):
    root, uids = build(tmp_path, TEXT_ROWS)
    f = TextBasedFilter()
    f.language_id = FakeLID()
    got = run(f, root, tmp_path / "text.npy")
    assert got == expected_bytes(u for u, r in zip(uids, TEXT_ROWS) if r[1])


# ---- clip_score ---------------------------------------------------------------------------------
def test_clip_score_fraction_cut_inside_ties(tmp_path):
    scores = np.array([0.9, 0.7, 0.5, 0.7, np.nan, 0.7, 0.3, 0.7, 0.1, 0.2])
    rows = [(f"caption {i}",) for i in range(10)]
    root, uids = build(tmp_path, rows, clip_l14_similarity_score=scores)
    # n = int(10 * 0.2) = 2 -> threshold = 3rd largest = 0.7 -> the 0.9 and all four 0.7s
    got = run(ClipScoreFilter(arch="l14", fraction=0.2), root, tmp_path / "f.npy", workers=2)
    assert got == expected_bytes(uids[i] for i in (0, 1, 3, 5, 7))
    got = run(ClipScoreFilter(arch="l14", threshold=0.5), root, tmp_path / "t.npy")
    assert got == expected_bytes(uids[i] for i in (0, 1, 2, 3, 5, 7))  # >= keeps 0.5, NaN dropped
    with pytest.raises(ParamError):
        run(ClipScoreFilter(arch="l14", fraction=1.0), root, tmp_path / "e.npy")


def test_clip_score_float32_column_and_null(tmp_path):
    import pyarrow as pa

    rows = [("a",), ("b",), ("c",), ("d",)]
    col = pa.array([0.28, 0.2799999, None, 0.3], type=pa.float32())
    root, uids = build(tmp_path, rows, sizes=[4], clip_b32_similarity_score=col)
    got = run(ClipScoreFilter(arch="b32", threshold=0.28000001), root, tmp_path / "s.npy")
    assert got == expected_bytes([uids[0], uids[3]])  # float32(0.28000001) == float32(0.28)


def test_clip_score_parameters_are_datacomp_checked():
    with pytest.raises(ParamError):
        ClipScoreFilter(fraction=0.3)  # no arch
    with pytest.raises(ParamError):
        ClipScoreFilter(arch="l14")  # neither
    with pytest.raises(ParamError):
        ClipScoreFilter(arch="l14", fraction=0.3, threshold=0.2)
    with pytest.raises(ParamError):
        BasicFilter(fraction=0.3)
    with pytest.raises(ParamError):
        Laion2bFilter(arch="b32")


# ---- laion2b ------------------------------------------------------------------------------------
def test_laion2b_logic_with_injected_language_id(tmp_path):
    rows = [("a cat", 0.28), ("a ZZ cat", 0.5), ("a cat\nx", 0.2799), ("", 0.9), ("a dog", float("nan"))]
    root, uids = build(tmp_path, rows, clip_b32_similarity_score=np.array([r[1] for r in rows]))
    f = Laion2bFilter()
    f.language_id = lid = FakeLID()
    got = run(f, root, tmp_path / "l.npy")
    assert got == expected_bytes([uids[0], uids[3]])
    assert all("\n" not in t for t in lid.seen)


def test_laion2b_with_gcld3_or_one_line_install_hint(tmp_path):
    root, _ = build(tmp_path, [("The quick brown fox jumps over the lazy dog near the river.", 0.3)], sizes=[1],
                    clip_b32_similarity_score=np.array([0.3]))
    try:
        import gcld3  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="pip install") as exc:
            run(Laion2bFilter(), root, tmp_path / "l.npy")
        assert "\n" not in str(exc.value)
        pytest.skip("gcld3 not installed: only the install hint was checked")
    assert len(run(Laion2bFilter(), root, tmp_path / "l.npy")) == 128 + 16


# ---- image_based --------------------------------------------------------------------------------
def unit(i, d=768):
    v = np.zeros(d, dtype=np.float32)
    v[i] = 1
    return v


def write_image_pool(tmp_path, rows, scores=None):
    """Pool whose l14_img rows are the given vectors (one shard + an empty one)."""
    import pyarrow.parquet as pq

    extra = {"clip_l14_similarity_score": np.array(scores)} if scores is not None else {}
    root, uids = build(tmp_path, rows, sizes=[len(rows), 0], **extra)
    stems = sorted(p.stem for p in root.glob("*.parquet"))
    full = next(s for s in stems if pq.read_metadata(root / f"{s}.parquet").num_rows)
    emb = np.stack([r[1] for r in rows]).astype(np.float16)
    np.savez(root / f"{full}.npz", l14_img=emb, b32_img=np.zeros((len(rows), 512), np.float16))
    return root, uids


@pytest.fixture
def image_assets(tmp_path):
    import torch

    centroids = np.stack([10 * unit(0), unit(1), unit(2)])  # unnormalised: c0 has norm 10
    cpath = tmp_path / "centroids.pt"
    save_centroids(cpath, centroids)
    tpath = tmp_path / "targets.pt"
    torch.save({"image_features": torch.from_numpy(np.stack([unit(0), unit(0)]))}, tpath)  # target = {0}
    return str(cpath), str(tpath)


MIXED = 0.6 * unit(0) + 0.8 * unit(1)  # inner product picks c0 (6 > 0.8); L2 would pick c1
IMAGE_ROWS = [  # text, embedding, kept
    ("sunset\n", MIXED, True),  # 2 fastText tokens (word + </s>), 7 chars
    ("sunset", MIXED, False),  # 1 token
    ("ab\ncd", MIXED, False),  # 3 tokens but 5 chars
    ("ab\ncde", MIXED, True),
    ("a\u00a0bcdefg", MIXED, False),  # NBSP does not split fastText tokens: 1 token
    ("ZZ a photo", MIXED, False),  # not English
    ("a photo of it", unit(1), False),  # centroid 1 is not a target
    ("a photo of it", unit(3), True),  # all inner products 0: tie -> lowest index 0
    ("", MIXED, False),
]


def test_image_based_inner_product_and_caption_filter(tmp_path, image_assets):
    root, uids = write_image_pool(tmp_path, IMAGE_ROWS)
    f = ImageBasedFilter(centroids=image_assets[0], targets=image_assets[1])
    f.language_id = lid = FakeLID()
    got = run(f, root, tmp_path / "ib.npy")
    assert got == expected_bytes(u for u, r in zip(uids, IMAGE_ROWS) if r[2])
    assert "sunset " in lid.seen  # LF replaced for language ID, counted as </s> for tokens


def test_image_based_intersect_applies_score_first(tmp_path, image_assets):
    scores = [0.3, 0.3, 0.3, 0.1, 0.3, 0.3, 0.3, float("nan"), 0.3]
    root, uids = write_image_pool(tmp_path, IMAGE_ROWS, scores)
    f = ImageBasedIntersectClipScoreFilter(centroids=image_assets[0], targets=image_assets[1], arch="l14", threshold=0.2)
    f.language_id = FakeLID()
    got = run(f, root, tmp_path / "ibi.npy")
    assert got == expected_bytes([uids[0]])  # row 3 fails the score, row 7 is NaN
    with pytest.raises(ParamError):
        ImageBasedIntersectClipScoreFilter(centroids=image_assets[0], targets=image_assets[1], threshold=0.2)


def test_image_based_needs_asset_paths():
    with pytest.raises(ParamError, match="centroids=PATH"):
        ImageBasedFilter()


# ---- command line: every baseline runs and its subset checks out --------------------------------
@pytest.fixture(scope="module")
def cli_pool(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    words = ["a", "dog", "photo", "of", "the", "red", "car", "Hund", "\n", "sunset", "日本", "tree,", "\u00a0"]
    texts = [" ".join(rng.choice(words, rng.integers(0, 7))) for _ in range(120)]
    return write_pool(tmp / "pool", [50, 0, 70], texts=texts), tmp


def test_cli_every_baseline_then_subset_check(cli_pool, image_assets, capsys):
    pool, tmp = cli_pool
    runs = {
        "no_filter": [],
        "basic_filter": [],
        "text_based": [],
        "clip_score": ["--set", "arch=b32", "--set", "fraction=0.3"],
        "image_based": ["--set", f"centroids={image_assets[0]}", "--set", f"targets={image_assets[1]}"],
        "image_based_intersect_clip_score": [
            "--set", f"centroids={image_assets[0]}", "--set", f"targets={image_assets[1]}", "--set", "arch=l14", "--set", "threshold=0.0",
        ],
    }
    for name, extra in runs.items():
        out = tmp / f"{name}.npy"
        assert main(["-q", "filter", name, "--pool", str(pool), "--out", str(out), "--workers", "1", *extra]) == 0
        assert main(["-q", "subset", "check", str(out), "--pool", str(pool)]) == 0
        manifest = json.loads((tmp / f"{name}.npy.json").read_text())
        assert manifest["filter"] == name and manifest["output_count"] == len(np.load(out))
    # DataComp's own flags give the same bytes
    out = tmp / "dc_clip.npy"
    assert main(["-q", "datacomp-baseline", "--name", "clip_score", "--arch", "b32", "--fraction", "0.3",
                 "--metadata_dir", str(pool), "--save_path", str(out), "--num_workers", "1"]) == 0
    assert out.read_bytes() == (tmp / "clip_score.npy").read_bytes()
    assert main(["-q", "datacomp-baseline", "--name", "laion2b", "--arch", "b32", "--metadata_dir", str(pool), "--save_path", str(out)]) == 1
    assert "laion2b does not support" in capsys.readouterr().err


def test_cli_build_centroids(cli_pool):
    from clipsift.baselines.assets import load_centroids

    pool, tmp = cli_pool
    out = tmp / "cent.pt"
    assert main(["-q", "build-centroids", "--pool", str(pool), "--out", str(out), "--num-clusters", "4",
                 "--disable-caption-filtering", "--workers", "1"]) == 0
    arr, verified = load_centroids(str(out))
    assert arr.shape == (4, 768) and arr.dtype == np.float32 and not verified
    assert json.loads((tmp / "cent.pt.json").read_text())["num_points"] == 120
