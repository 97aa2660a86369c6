"""negCLIPLoss / NormSim arithmetic against the spec's parity checklist (specs/negclip.md section 7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipsift.budget import fraction_count as count_for
from clipsift.filters.negclip.loss import batch_bounds, batch_gaps, shard_rng, shard_scores
from clipsift.filters.negclip.normsim_dynamic import dynamic_select
from clipsift.filters.negclip.normsim_math import normsim2, normsim_inf, quad_form, second_moment
from clipsift.filters.negclip.rank import select, top_n
from clipsift.uids import UID_DTYPE

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one torch thread


def u(deg):
    r = np.radians(deg)
    return np.array([np.cos(r), np.sin(r)], dtype=np.float32)


def unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def uids_of(n, seed=0):
    rng = np.random.default_rng(seed)
    out = np.empty(n, UID_DTYPE)
    out["f0"], out["f1"] = rng.integers(0, 2**63, n, dtype=np.uint64), rng.integers(0, 2**63, n, dtype=np.uint64)
    return out


def naive_batch(img, txt, tau):
    """float64 reference: css - (tau/2)(LSE_row + LSE_col), and -tau * symmetric CLIP loss."""
    x, y = torch.from_numpy(img).double(), torch.from_numpy(txt).double()
    s = x @ y.T
    css = torch.diagonal(s)
    lse = torch.logsumexp(s / tau, dim=1) + torch.logsumexp(s / tau, dim=0)
    by_lse = css - tau / 2 * lse
    target = torch.arange(len(x))
    loss = 0.5 * (
        torch.nn.functional.cross_entropy(s / tau, target, reduction="none")
        + torch.nn.functional.cross_entropy(s.T / tau, target, reduction="none")
    )
    return by_lse.numpy(), (-tau * loss).numpy()


def naive_shard(img, txt, tau, b, k, seed, name, balanced=False):
    n = len(img)
    if n <= b:
        return naive_batch(img, txt, tau)[0]
    acc = np.zeros(n)
    for r in range(k):
        perm = shard_rng(seed, name, r).permutation(n)
        for a, z in batch_bounds(n, b, balanced):
            idx = perm[a:z]
            acc[idx] += naive_batch(img[idx], txt[idx], tau)[0]
    return acc / k


# ---- checklist 1-5, 11: negCLIPLoss ----------------------------------------------------------
def test_checklist1_one_batch_values_and_ranking():
    img = np.stack([u(0), u(90), u(200)])
    txt = np.stack([u(10), u(80), u(150)])
    score, css = shard_scores(img, txt, tau=0.5, batch_size=32768)
    np.testing.assert_allclose(css, [0.9848, 0.9848, 0.6428], atol=1e-4)
    np.testing.assert_allclose(score, [-0.0992, -0.1694, -0.1798], atol=1e-4)
    assert css[0] == pytest.approx(css[1], abs=1e-6) and score[0] > score[1]


@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_checklist2_formulas_and_sign(chunk):
    rng = np.random.default_rng(3)
    img, txt = unit(rng, 40, 16), unit(rng, 40, 16)
    score, _ = shard_scores(img, txt, tau=0.07, batch_size=64, chunk_rows=chunk)
    by_lse, by_loss = naive_batch(img, txt, 0.07)
    np.testing.assert_allclose(score, by_lse, atol=2e-6)
    np.testing.assert_allclose(score, by_loss, atol=2e-6)
    assert (score <= 0).all()


def test_chunked_column_lse_equals_full_batch():
    rng = np.random.default_rng(4)
    x, y = torch.from_numpy(unit(rng, 33, 8)), torch.from_numpy(unit(rng, 33, 8))
    full = batch_gaps(x, y, 0.05, chunk_rows=33)
    for chunk in (1, 4, 10):
        part = batch_gaps(x, y, 0.05, chunk_rows=chunk)
        torch.testing.assert_close(part[0], full[0], atol=1e-6, rtol=1e-6)  # float32 GEMM blocking
        torch.testing.assert_close(part[1], full[1], atol=1e-6, rtol=1e-6)


def test_checklist3_identical_pairs_and_singleton():
    b = 7
    pair = np.tile(u(33), (b, 1))
    score, _ = shard_scores(pair, pair, tau=0.01, batch_size=b)
    np.testing.assert_allclose(score, -0.01 * math.log(b), rtol=1e-6)
    rng = np.random.default_rng(5)
    img, txt = unit(rng, 9, 16), unit(rng, 9, 16)  # n_s = B + 1: the last batch holds one row
    score, _ = shard_scores(img, txt, tau=0.01, batch_size=8, repeats=1, seed=11, shard_name="s0")
    lone = shard_rng(11, "s0", 0).permutation(9)[-1]
    assert score[lone] == 0.0
    assert (np.delete(score, lone) < 0).all()


def test_checklist4_seed_and_repeats():
    rng = np.random.default_rng(6)
    img, txt = unit(rng, 50, 16), unit(rng, 50, 16)
    one = shard_scores(img, txt, tau=0.1, batch_size=64, repeats=1, seed=0)[0]
    for seed, k in ((5, 3), (9, 10)):
        np.testing.assert_array_equal(one, shard_scores(img, txt, tau=0.1, batch_size=64, repeats=k, seed=seed)[0])
    got = shard_scores(img, txt, tau=0.1, batch_size=16, repeats=3, seed=2, shard_name="abc")[0]
    np.testing.assert_allclose(got, naive_shard(img, txt, 0.1, 16, 3, 2, "abc"), atol=2e-6)
    again = shard_scores(img, txt, tau=0.1, batch_size=16, repeats=3, seed=2, shard_name="abc")[0]
    np.testing.assert_array_equal(got, again)
    assert not np.array_equal(got, shard_scores(img, txt, tau=0.1, batch_size=16, repeats=3, seed=3, shard_name="abc")[0])


def test_balanced_batches():
    assert [z - a for a, z in batch_bounds(10, 4)] == [4, 4, 2]
    assert [z - a for a, z in batch_bounds(10, 4, balanced=True)] == [4, 3, 3]
    assert [z - a for a, z in batch_bounds(9, 8, balanced=True)] == [5, 4]
    rng = np.random.default_rng(7)
    img, txt = unit(rng, 9, 16), unit(rng, 9, 16)
    got = shard_scores(img, txt, tau=0.05, batch_size=8, repeats=2, seed=1, shard_name="x", balanced=True)[0]
    np.testing.assert_allclose(got, naive_shard(img, txt, 0.05, 8, 2, 1, "x", balanced=True), atol=2e-6)
    assert (got < 0).all()  # no singleton batch


def test_checklist5_no_overflow_at_tau_001():
    rng = np.random.default_rng(8)
    img = unit(rng, 6, 32)
    noise = unit(rng, 6, 32)
    noise -= (noise * img).sum(1, keepdims=True) * img
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    txt = (0.95 * img + math.sqrt(1 - 0.95**2) * noise).astype(np.float32)  # S_ii = 0.95 > 88.7 * tau
    with np.errstate(over="ignore"):  # the reference's float32 exp overflows here
        assert np.isinf(np.exp((img @ txt.T / 0.01).astype(np.float32))).any()
    score, css = shard_scores(img, txt, tau=0.01)
    np.testing.assert_allclose(css, 0.95, atol=1e-5)
    assert np.isfinite(score).all()
    np.testing.assert_allclose(score, naive_batch(img, txt, 0.01)[0], atol=1e-5)


def test_checklist11_raw_dot_products_without_renormalisation():
    rng = np.random.default_rng(9)
    img, txt = 2.0 * unit(rng, 5, 8), 0.5 * unit(rng, 5, 8)
    _, css = shard_scores(img, txt, tau=0.5)
    np.testing.assert_allclose(css, (img * txt).sum(1), atol=1e-6)
    _, css_n = shard_scores(img, txt, tau=0.5, renormalize=True)
    np.testing.assert_allclose(css_n, (img * txt).sum(1), atol=1e-6)  # scale 2 * 0.5 = 1 here
    _, css_n = shard_scores(3 * img, txt, tau=0.5, renormalize=True)
    np.testing.assert_allclose(css_n, (img * txt).sum(1), atol=1e-6)


# ---- ranking --------------------------------------------------------------------------------
def test_top_n_ties_by_uid_and_edge_counts():
    uids = uids_of(6)
    scores = np.array([1.0, 2.0, 2.0, 2.0, np.nan, 0.5])
    tied = np.array([1, 2, 3])
    first_two = tied[np.lexsort((uids["f1"][tied], uids["f0"][tied]))[:2]]
    np.testing.assert_array_equal(top_n(scores, uids, 2), np.sort(first_two))
    assert len(top_n(scores, uids, 0)) == 0 and len(top_n(scores, uids, 99)) == 6
    assert 4 not in top_n(scores, uids, 5)  # NaN ranks last
    np.testing.assert_array_equal(select(scores, uids, threshold=1.0), [0, 1, 2, 3])
    assert count_for(1000, 0.3) == 300 and count_for(1000, 0.2) == 200 and count_for(1000, 0.0005) == 0


# ---- checklist 6, 7, 10: NormSim -----------------------------------------------------------
def test_checklist6_normsim_values():
    g = np.stack([u(0), u(30)])
    f = np.stack([u(15), u(-20), u(180), u(90)])
    np.testing.assert_allclose(normsim2(f, second_moment(g)).numpy(), [1.3660, 1.1385, 1.3229, 0.5000], atol=1e-4)
    np.testing.assert_allclose(normsim_inf(f, g).numpy(), [0.9659, 0.9397, 1.0000, 0.5000], atol=1e-4)


def test_checklist7_gram_equals_direct_and_vas_ranking():
    rng = np.random.default_rng(10)
    g, f = unit(rng, 300, 64), unit(rng, 200, 64)
    direct = np.linalg.norm(f.astype(np.float64) @ g.T.astype(np.float64), axis=1)
    gram = normsim2(f, second_moment(g, chunk=70)).numpy()
    np.testing.assert_allclose(gram, direct, atol=1e-6)
    vas = quad_form(f, second_moment(g) / len(g)).numpy()
    np.testing.assert_allclose(np.sqrt(len(g) * vas), direct, atol=1e-6)
    uids = uids_of(200)
    np.testing.assert_array_equal(top_n(vas, uids, 50), top_n(gram, uids, 50))
    tiled = normsim_inf(f, g, row_chunk=33, target_tile=41).numpy()
    np.testing.assert_allclose(tiled, np.abs(f @ g.T).max(1), atol=1e-6)


def naive_dynamic(emb, uids, n_final, iterations, initial=None):
    """Recompute Sigma from scratch every iteration (the definition)."""
    alive = np.arange(len(emb))
    chunk = math.ceil((len(emb) - n_final) / iterations)
    x = emb.astype(np.float64)
    for t in range(iterations):
        if len(alive) <= n_final:
            break
        sigma = initial if (t == 0 and initial is not None) else x[alive].T @ x[alive] / len(alive)
        scores = np.einsum("nd,de,ne->n", x[alive], sigma, x[alive])
        keep = n_final if t == iterations - 1 else max(n_final, len(alive) - chunk)
        alive = alive[top_n(scores, uids[alive], keep)]
    return alive


def test_checklist10_dynamic_t1_sizes_and_incremental_sigma():
    rng = np.random.default_rng(11)
    emb = (unit(rng, 50, 24) + 0.6 * unit(rng, 1, 24)).astype(np.float16)
    uids = uids_of(50, 1)
    keep, sizes = dynamic_select(emb, uids, 20, 1)
    x = emb.astype(np.float64)
    np.testing.assert_array_equal(keep, top_n(np.einsum("nd,de,ne->n", x, x.T @ x, x), uids, 20))
    assert sizes == [50, 20]
    init = second_moment(unit(rng, 30, 24)).numpy()
    keep, _ = dynamic_select(emb, uids, 20, 1, initial=init)
    np.testing.assert_array_equal(keep, top_n(np.einsum("nd,de,ne->n", x, init, x), uids, 20))
    keep, sizes = dynamic_select(emb, uids, 20, 4)  # c = ceil(30 / 4) = 8
    assert sizes == [50, 42, 34, 26, 20]
    np.testing.assert_array_equal(keep, naive_dynamic(emb, uids, 20, 4))
    keep, sizes = dynamic_select(emb, uids, 20, 100)  # T > n_0 - n_f: clamps at n_f
    assert sizes[-1] == 20 and min(sizes) == 20 and len(sizes) == 31
    np.testing.assert_array_equal(keep, naive_dynamic(emb, uids, 20, 100))
    keep, sizes = dynamic_select(emb, uids, 20, 3, initial=init)  # c = 10 < D: low-rank score updates
    np.testing.assert_array_equal(keep, naive_dynamic(emb, uids, 20, 3, initial=init / 30))
    keep, _ = dynamic_select(emb, uids, 20, 3, subsample=0.5, seed=4)
    again, _ = dynamic_select(emb, uids, 20, 3, subsample=0.5, seed=4)
    assert len(keep) == 20 and np.array_equal(keep, again)


@pytest.mark.parametrize("rule", [{"fraction": 0.3}, {"count": 7}, {"count": 0}, {"count": 500}, {"threshold": 0.5}, {"fraction": 1.0}])
def test_streamed_selection_keeps_the_rows_select_keeps(tmp_path, rule):
    """select_streamed (parts on disk, the n-th score by an exact distributed selection, ties in
    uid order through a sorter) keeps exactly select()'s rows: ties, NaN scores (ranked as -inf),
    repeated uids and any chunking included."""
    from clipsift.filters.negclip.rank import select_streamed
    from clipsift.uids import UID_DTYPE, sort_records
    from clipsift.uidsort import UidSorter

    rng = np.random.default_rng(11)
    for trial in range(8):
        n = int(rng.integers(1, 300))
        uids = np.empty(n, UID_DTYPE)
        uids["f0"] = rng.integers(0, 30, n).astype(np.uint64)  # many repeats
        uids["f1"] = rng.integers(0, 4, n).astype(np.uint64)
        scores = rng.choice(np.array([0.1, 0.5, 0.5, 0.9, np.nan, -np.inf], np.float32), n) if trial % 2 else rng.random(n).astype(np.float32)
        recs = np.empty(n, [("f0", "<u8"), ("f1", "<u8"), ("score", "<f4")])
        recs["f0"], recs["f1"], recs["score"] = uids["f0"], uids["f1"], scores
        cuts = np.sort(rng.integers(0, n + 1, size=rng.integers(0, 5)))
        chunks = np.split(recs, cuts)
        got: list = []
        select_streamed(lambda c=chunks: iter(c), n, lambda u, s, out=got: out.append(u), lambda n=n: UidSorter(n, tmp_path), **rule)
        got = sort_records(np.concatenate(got)) if got else np.empty(0, UID_DTYPE)
        want = sort_records(uids[select(scores, uids, **rule)])
        np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")
