"""ClipCov on pools (spec §8 items 2, 5, 7, 8, 9): modes agree, numerics exact, outputs stable."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_uids

from clipsift.cli import main
from clipsift.errors import ClipsiftError, ParamError, PoolError
from clipsift.executor import LocalExecutor
from clipsift.filter import RunContext
from clipsift.filters.clipcov.filter import ClipCovFilter
from clipsift.filters.clipcov.numeric import canonical, q_np, unit_canonical
from clipsift.filters.clipcov.quantities import DenseKernel, EmbeddingKernel, embedding_problem
from clipsift.pool import Pool
from clipsift.subset import read_subset
from clipsift.uids import hex_to_records, sort_records


def clipcov_pool(root: Path, shard_sizes, seed=0, d=512, distinct=None, score_shift=0.0):
    """A pool whose rows repeat a few distinct (image, text) pairs: exact duplicates and score ties.

    Texts are noisy copies of images so cross similarities are mostly positive (S has structure).
    """
    rng = np.random.default_rng(seed)
    n = int(sum(shard_sizes))
    m = distinct or max(1, n // 3)
    base = rng.standard_normal((m, d)).astype(np.float32) + 0.8 * rng.standard_normal(d).astype(np.float32)
    img_b = canonical(base.astype(np.float32))
    txt_b = canonical((base + 0.7 * rng.standard_normal((m, d))).astype(np.float32))
    pick = rng.integers(0, m, n)
    img, txt = img_b[pick], txt_b[pick]
    score = (img.astype(np.float32) * txt.astype(np.float32)).sum(1).astype(np.float64) + score_shift
    uids = make_uids(n, seed + 100)
    root.mkdir(parents=True, exist_ok=True)
    start = 0
    for s, size in enumerate(shard_sizes):
        sl = slice(start, start + size)
        pq.write_table(pa.table({"uid": uids[sl], "clip_b32_similarity_score": score[sl]}), root / f"{s:08d}.parquet")
        np.savez(root / f"{s:08d}.npz", b32_img=img[sl], b32_txt=txt[sl], l14_img=np.zeros((size, 768), np.float16) + np.float16(1 / np.sqrt(768)), l14_txt=np.zeros((size, 768), np.float16) + np.float16(1 / np.sqrt(768)))
        start += size
    return root, uids, img, txt


def write_labels(path, uids, labels):
    pq.write_table(pa.table({"uid": uids, "label": np.asarray(labels, dtype=np.int64)}), path)
    return path


def run(root, workdir, **params):
    ctx = RunContext(Pool(root), LocalExecutor(workers=1, show_progress=False), workdir=workdir)
    return ClipCovFilter(**params).select(ctx)


def order_of(path):
    return pq.read_table(path).column("global_index").to_numpy()


@pytest.mark.parametrize(
    "n,K,B,frac,seed",
    [(300, 1, 3, 0.3, 1), (600, 5, 1, 0.2, 2), (900, 20, 7, 0.5, 3), (1200, 8, 200, 0.1, 4), (2000, 20, 2, 0.15, 5), (400, 3, 200, 0.9, 6)],
)
def test_scalable_equals_reference_on_pools(tmp_path, n, K, B, frac, seed):
    sizes = [n // 3, 0, n - n // 3]
    root, uids, _, _ = clipcov_pool(tmp_path / "pool", sizes, seed=seed)
    rng = np.random.default_rng(seed)
    labels = write_labels(tmp_path / "labels.parquet", uids, rng.integers(0, K, n))
    orders = {}
    for mode in ("reference", "scalable"):
        out = tmp_path / f"{mode}.parquet"
        sel = run(root, tmp_path / "w", mode=mode, partition="labels", labels=str(labels), fraction=frac, batch=B, order_out=str(out))
        orders[mode] = order_of(out)
        assert len(sel) == int(n * frac) == len(orders[mode])
        assert sel.details["refreshes_per_class"] == [
            (c if B == 1 else (c + 1) // B) for c in sel.details["picks_per_class"]
        ]
    assert np.array_equal(orders["reference"], orders["scalable"])


def test_blocked_products_are_bitwise_equal(tmp_path):
    _, _, img, txt = clipcov_pool(tmp_path / "pool", [500], seed=9)
    dense = EmbeddingKernel(img, txt, block=10_000).coverage_sums()
    for block in (7, 64, 333):
        assert np.array_equal(EmbeddingKernel(img, txt, block=block).coverage_sums(), dense)
    small = EmbeddingKernel(img[:40], txt[:40], block=10_000).coverage_sums()
    assert np.array_equal(EmbeddingKernel(img[:40], txt[:40], block=1).coverage_sums(), small)
    S = EmbeddingKernel(img, txt).dense()
    assert np.array_equal(DenseKernel(S).coverage_sums(), dense)
    T = [5, 3, 499, 0, 3]
    assert np.array_equal(EmbeddingKernel(img, txt, block=2).pair_sums(T), DenseKernel(S).pair_sums(T))
    # N2: a dot product in any order is the same fp64 number
    a, t = img[:50].astype(np.float64), txt[:50].astype(np.float64)
    fwd = (a * t).sum(1)
    rev = np.array([sum(reversed((a[i] * t[i]).tolist())) for i in range(50)])
    perm = np.random.default_rng(0).permutation(512)
    assert np.array_equal(fwd, rev) and np.array_equal(fwd, (a[:, perm] * t[:, perm]).sum(1))
    # r from the dense path equals r from the blocked path in a class problem
    dense_p = embedding_problem(np.arange(500), img, txt, img[0], dense=True)
    block_p = embedding_problem(np.arange(500), img, txt, img[0], block=37)
    assert np.array_equal(dense_p.r, block_p.r) and np.array_equal(dense_p.u0, block_p.u0)


def test_numpy_and_torch_backends_agree(tmp_path):
    """The CUDA code path (torch) run on CPU gives the same bits as the numpy path."""
    _, _, img, txt = clipcov_pool(tmp_path / "pool", [300], seed=10)
    np_k = EmbeddingKernel(img, txt, block=64, tau=0.05)
    th_k = EmbeddingKernel(img, txt, block=100, tau=0.05, backend="torch")
    assert np.array_equal(np_k.coverage_sums(), th_k.coverage_sums())
    assert np.array_equal(np_k.pair_sums([1, 2, 250, 2]), th_k.pair_sums([1, 2, 250, 2]))
    assert np.array_equal(np_k.diag(), th_k.diag()) and np.array_equal(np_k.dense(), th_k.dense())


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_cpu_and_gpu_agree(tmp_path):
    _, _, img, txt = clipcov_pool(tmp_path / "pool", [700], seed=10)
    cpu = EmbeddingKernel(img, txt, block=256)
    gpu = EmbeddingKernel(img, txt, block=300, device="cuda")
    assert np.array_equal(cpu.coverage_sums(), gpu.coverage_sums())
    assert np.array_equal(cpu.pair_sums([1, 2, 600]), gpu.pair_sums([1, 2, 600]))


def test_q_is_fp32_then_fp16():
    x = np.array([0.1, 1 / 3, 0.2 + 2**-30, -0.7])
    assert np.array_equal(q_np(x), x.astype(np.float32).astype(np.float16).astype(np.float64))
    # a value where rounding fp64 -> fp16 directly differs from going through fp32 (double rounding)
    y = np.array([1 + 2**-11 + 2**-40])  # rounds up directly, to even via fp32's 1 + 2^-11
    assert q_np(y)[0] == 1.0 and y.astype(np.float16)[0] != 1.0


def test_unit_canonical_is_order_free():
    rng = np.random.default_rng(0)
    rows = canonical(rng.standard_normal((300, 64)).astype(np.float32))
    s1 = rows.astype(np.float64).sum(0)
    s2 = rows[::-1].astype(np.float64).sum(0)
    assert np.array_equal(s1, s2)
    v = unit_canonical(s1[None])[0]
    assert v.dtype == np.float16 and abs(np.linalg.norm(v.astype(np.float64)) - 1) < 1e-2


def test_output_is_sorted_unique_and_byte_identical(tmp_path):
    root, uids, _, _ = clipcov_pool(tmp_path / "pool", [200, 150], seed=11)
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}.npy"
        assert main(["filter", "clipcov", "--pool", str(root), "--out", str(out), "--workers", "1", "--workdir", str(tmp_path / f"w{i}"),
                     "--set", "partition=kmeans", "--set", "clusters=4", "--set", "fraction=0.2", "--set", "batch=3"]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    got = read_subset(tmp_path / "out0.npy")
    assert len(got) == 70 and len(np.unique(got)) == 70
    assert np.array_equal(got, sort_records(got))
    pool_uids = sort_records(hex_to_records(uids))
    assert np.isin(got.view("V16"), pool_uids.view("V16")).all()


def test_resume_and_cap(tmp_path):
    root, uids, _, _ = clipcov_pool(tmp_path / "pool", [400, 200], seed=12)
    labels = write_labels(tmp_path / "labels.parquet", uids, np.random.default_rng(1).integers(0, 4, 600))
    base = dict(partition="labels", labels=str(labels), fraction=0.3, batch=5)
    ref = run(root, tmp_path / "w0", mode="reference", **base, order_out=str(tmp_path / "ref.parquet"))
    # a second run in the same workdir reuses grouped rows and class prefixes, same result
    first = run(root, tmp_path / "w1", **base, order_out=str(tmp_path / "a.parquet"))
    again = run(root, tmp_path / "w1", **base, order_out=str(tmp_path / "b.parquet"))
    assert np.array_equal(order_of(tmp_path / "a.parquet"), order_of(tmp_path / "b.parquet"))
    assert np.array_equal(order_of(tmp_path / "a.parquet"), order_of(tmp_path / "ref.parquet"))
    assert np.array_equal(first.uids, ref.uids) and np.array_equal(again.uids, ref.uids)
    # a cap at or above the largest class changes nothing
    big = max(first.details["class_sizes"])
    run(root, tmp_path / "w2", **base, cap=big, order_out=str(tmp_path / "c.parquet"))
    assert np.array_equal(order_of(tmp_path / "c.parquet"), order_of(tmp_path / "ref.parquet"))
    # a smaller cap splits classes (a documented deviation) and still keeps k rows
    split = run(root, tmp_path / "w3", **base, cap=60)
    assert split.details["units"] > 4 and len(split) == 180
    assert split.details["picks_per_class"] and sum(split.details["picks_per_class"]) == 180


def test_fixed_mode_on_pool_meets_budgets(tmp_path):
    root, uids, _, _ = clipcov_pool(tmp_path / "pool", [300], seed=13)
    labels = write_labels(tmp_path / "labels.parquet", uids, np.arange(300) % 7)
    sel = run(root, tmp_path / "w", mode="fixed", partition="labels", labels=str(labels), count=100)
    sizes = np.asarray(sel.details["class_sizes"])
    picks = np.asarray(sel.details["picks_per_class"])
    assert picks.sum() == 100 and np.all(np.abs(picks - sizes * 100 / 300) < 1)


def test_zeroshot_partition_duplicate_names_leave_classes_empty(tmp_path):
    root, _, img, _ = clipcov_pool(tmp_path / "pool", [300], seed=14)
    rng = np.random.default_rng(0)
    E = canonical(rng.standard_normal((6, 512)).astype(np.float32))
    E[4] = E[1]  # a repeated class name gives an identical e_c: ties go to the smaller class
    np.savez(tmp_path / "ce.npz", embeddings=E, classnames=np.array(list("abcdbf")))
    sel = run(root, tmp_path / "w", partition="zeroshot", class_embeddings=str(tmp_path / "ce.npz"), fraction=0.1)
    assert sel.details["class_sizes"][4] == 0
    expect = np.bincount(np.argmax(img.astype(np.float64) @ E.astype(np.float64).T, axis=1), minlength=6)
    assert sel.details["class_sizes"] == expect.tolist()
    assert sel.details["partition"]["empty_classes"] >= 1


def test_imagenet_names_repeat_where_the_spec_says():
    from clipsift.filters.clipcov.cli import clip_benchmark_prompts

    names, templates = clip_benchmark_prompts("imagenet1k")
    assert len(names) == 1000 and len(templates) == 80
    assert names[657] == names[744] == "missile" and names[836] == names[837] == "sunglasses"
    assert len(set(names)) == 998


def test_row_alignment_check(tmp_path):
    root, _, _, _ = clipcov_pool(tmp_path / "pool", [100], seed=15, score_shift=0.05)
    with pytest.raises(PoolError, match="row-aligned"):
        run(root, tmp_path / "w", partition="kmeans", clusters=3, fraction=0.1)
    sel = run(root, tmp_path / "w2", partition="kmeans", clusters=3, fraction=0.1, check_scores=False)
    assert len(sel) == 10


def test_e_matches_clip_score(tmp_path):
    root, _, img, txt = clipcov_pool(tmp_path / "pool", [200], seed=16)
    p = embedding_problem(np.arange(200), img, txt, img[0])
    score = pq.read_table(next(root.glob("*.parquet"))).column("clip_b32_similarity_score").to_numpy()
    assert np.max(np.abs(p.extra["e"] - score)) < 1e-2


def test_parameter_errors(tmp_path):
    with pytest.raises(ParamError):
        ClipCovFilter(fraction=0.1)  # zeroshot without class embeddings
    with pytest.raises(ParamError):
        ClipCovFilter(partition="kmeans")
    with pytest.raises(ParamError):
        ClipCovFilter(partition="kmeans", fraction=0.1, redundancy_scale=2.0)
    root, uids, _, _ = clipcov_pool(tmp_path / "pool", [50], seed=17)
    labels = write_labels(tmp_path / "labels.parquet", uids[:-1], np.zeros(49))
    with pytest.raises(ClipsiftError, match="no label"):
        run(root, tmp_path / "w", partition="labels", labels=str(labels), fraction=0.1)
    with pytest.raises(ParamError, match="dimension"):
        np.savez(tmp_path / "ce.npz", embeddings=np.ones((3, 32), np.float16) / np.float16(np.sqrt(32)))
        run(root, tmp_path / "w2", class_embeddings=str(tmp_path / "ce.npz"), fraction=0.1)


def test_fast_mode_is_labelled_not_exact(tmp_path):
    root, uids, _, _ = clipcov_pool(tmp_path / "pool", [300], seed=18)
    sel = run(root, tmp_path / "w", partition="kmeans", clusters=3, fraction=0.2, fast=True)
    assert "NOT parity-exact" in sel.details["numeric"] and len(sel) == 60


def test_class_embeddings_command(tmp_path):
    cfg = tmp_path / "tiny-clip.json"
    cfg.write_text('{"embed_dim": 512, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},'
                   ' "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}')
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nmissile\nmissile\n")
    out = tmp_path / "ce.npz"
    assert main(["clipcov", "class-embeddings", "--model", "tiny-clip", "--model-config", str(cfg), "--classnames", str(names), "--out", str(out), "--device", "cpu"]) == 0
    with np.load(out) as z:
        E = z["embeddings"]
        assert E.shape == (4, 512) and E.dtype == np.float16
        assert np.array_equal(E[2], E[3]) and not np.array_equal(E[0], E[1])
        assert str(z["model"]) == "tiny-clip"
    assert np.all(np.abs(np.linalg.norm(E.astype(np.float64), axis=1) - 1) < 1e-2)
    # the file drives a zero-shot run; repeated names leave the later class empty
    root, _, _, _ = clipcov_pool(tmp_path / "pool", [120], seed=19)
    sel = run(root, tmp_path / "w", class_embeddings=str(out), fraction=0.25)
    assert sel.details["class_sizes"][3] == 0 and len(sel) == 30
    assert sel.details["partition"]["model"] == "tiny-clip"


def test_resumed_classes_and_interrupted_runs_give_the_same_order(tmp_path, monkeypatch):
    from clipsift.filters.clipcov import pipeline as clipcov_pipeline

    root, uids, _, _ = clipcov_pool(tmp_path / "pool", [500], seed=20)
    labels = write_labels(tmp_path / "labels.parquet", uids, np.random.default_rng(2).integers(0, 3, 500))
    base = dict(partition="labels", labels=str(labels), fraction=0.4, batch=3)
    run(root, tmp_path / "w0", mode="reference", **base, order_out=str(tmp_path / "ref.parquet"))
    monkeypatch.setattr(clipcov_pipeline, "prefix_length", lambda n, f, B: 1)  # every class runs out (P4)
    sel = run(root, tmp_path / "w1", **base, order_out=str(tmp_path / "short.parquet"))
    assert sel.details["resumed_classes"] == 3
    assert np.array_equal(order_of(tmp_path / "short.parquet"), order_of(tmp_path / "ref.parquet"))
    # an interrupted run: some classes' saved sequences are missing; the re-run completes them
    seq = next((tmp_path / "w1" / "clipcov").glob("*/seq-*"))
    for f in sorted(seq.glob("u*.npz"))[::2]:
        f.unlink()
    run(root, tmp_path / "w1", **base, order_out=str(tmp_path / "again.parquet"))
    assert np.array_equal(order_of(tmp_path / "again.parquet"), order_of(tmp_path / "ref.parquet"))


def test_kmeans_partition_follows_the_spec_recipe(tmp_path):
    from clipsift.filters.clipcov.numeric import argmax_exact
    from clipsift.filters.clipcov.partition import kmeans_centres, kmeans_sample_step

    assert kmeans_sample_step(12_800_000, 1000) == 13 and kmeans_sample_step(500, 1000) == 1
    root, _, img, _ = clipcov_pool(tmp_path / "pool", [240], seed=21, distinct=40)
    cent = kmeans_centres(img, 5)
    assert cent.dtype == np.float16 and np.all(np.abs(np.linalg.norm(cent.astype(np.float64), axis=1) - 1) < 1e-2)
    assert np.array_equal(cent, kmeans_centres(img, 5))
    sel = run(root, tmp_path / "w", partition="kmeans", clusters=5, fraction=0.25)
    expect = np.bincount(argmax_exact(img, cent), minlength=5)
    assert sel.details["class_sizes"] == expect.tolist() and len(sel) == 60
    # more clusters than distinct rows: the extra clusters stay empty
    cent = kmeans_centres(img[:10], 20)
    assert np.count_nonzero(np.abs(cent.astype(np.float64)).sum(1)) <= 10
