"""The dbp spec's parity checklist (§6), worked out by hand: SemDeDup drops, eps selection, DBP
budgets and water-filling, lower bounds, d_inter, empty clusters, selection modes, SSP rules."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from clipsift.errors import ParamError
from clipsift.filters.density import allocation as density
from clipsift.filters.density.semdedup import (
    cluster_max_similarity,
    eps_for_target,
    max_similarity,
    processing_order,
    threshold,
)
from clipsift.filters.density.ssp import ssp_floor, uniform_budgets


def u(deg):
    t = np.deg2rad(deg)
    return np.array([np.cos(t), np.sin(t)], dtype=np.float32)


def abcd_group():
    """Items a, b, c, d (global indices 0..3) around the centroid u(60°)."""
    emb = np.stack([u(0), u(8.1), u(16.2), u(90)])
    sim = (emb.astype(np.float64) @ u(60).astype(np.float64)).astype(np.float32)
    return {"gidx": np.arange(4), "sim": sim, "emb": emb}


def m_of(group, keep, **kw):
    return cluster_max_similarity(group, keep, 0, 0, **kw)


# 1-3 ---------------------------------------------------------------------------------------------
def test_semdedup_hard_drops_b_and_c_non_transitively():
    g = abcd_group()
    dist = 1 - g["sim"]
    np.testing.assert_allclose(dist, [0.5, 0.383, 0.2782, 0.134], atol=1e-3)
    order = processing_order(np.float32(1) - g["sim"], g["gidx"], "hard")
    assert order.tolist() == [0, 1, 2, 3]  # a, b, c, d
    m = m_of(g, "hard")
    np.testing.assert_allclose(m, [0, 0.990, 0.990, 0.279], atol=1e-3)
    kept = m <= threshold(0.02)
    assert kept.tolist() == [True, False, False, True]
    # 3: c goes although S_ac = 0.9603 < 0.98 and b itself is dropped (reference, not greedy)
    s_ac = float(g["emb"][0] @ g["emb"][2])
    assert abs(s_ac - 0.9603) < 1e-3 and s_ac < 1 - 0.02


def test_semdedup_easy_reverses_order():
    g = abcd_group()
    order = processing_order(np.float32(1) - g["sim"], g["gidx"], "easy")
    assert order.tolist() == [3, 2, 1, 0]  # d, c, b, a
    m = m_of(g, "easy")  # in item order a, b, c, d
    np.testing.assert_allclose(m[order], [0, 0.279, 0.990, 0.990], atol=1e-3)
    kept = m <= threshold(0.02)
    assert kept.tolist() == [False, False, True, True]  # drops b and a, keeps d and c


def test_easy_reverses_ties_too():
    dist = np.array([0.5, 0.5, 0.3], np.float32)
    gidx = np.array([7, 3, 5])
    assert processing_order(dist, gidx, "hard").tolist() == [1, 0, 2]
    assert processing_order(dist, gidx, "easy").tolist() == [2, 0, 1]


# 4 ---------------------------------------------------------------------------------------------
def test_boundary_singletons_and_first_items_kept():
    eps = 0.25
    t = threshold(eps)
    assert np.float32(t) <= t  # M exactly float32(1 − eps) is kept, the next float32 up is not
    m = np.array([0.0, t, np.nextafter(t, np.float32(2))], np.float32)
    assert (m <= t).tolist() == [True, True, False]
    single = {"gidx": np.array([5]), "sim": np.array([0.3], np.float32), "emb": u(10)[None]}
    assert m_of(single, "hard").tolist() == [0.0]
    twins = {"gidx": np.array([0, 1]), "sim": np.array([0.5, 0.5], np.float32), "emb": np.stack([u(0), u(0)])}
    m = m_of(twins, "hard")
    assert m[0] == 0 and (m <= threshold(1.0)).tolist() == [True, False]  # eps = 1: first item still kept


# 5 ---------------------------------------------------------------------------------------------
def test_eps_for_target():
    m = m_of(abcd_group(), "hard")
    eps = eps_for_target(m, 0.5)  # K = 2
    assert abs(eps - (1 - 0.279)) < 1e-3
    assert (m <= threshold(eps)).tolist() == [True, False, False, True]
    m2 = np.array([0, 0.5, 0.9, 0.9], np.float32)
    eps2 = eps_for_target(m2, 0.75)  # K = 3 → eps* = 1 − 0.9; ties at 0.9 overshoot to 4
    assert eps2 == 1.0 - float(np.float32(0.9))
    assert np.float32(1.0 - eps2) == np.float32(0.9)
    assert int((m2 <= threshold(eps2)).sum()) == 4
    assert eps_for_target(m2, 0.3) == 1.0 - 0.5  # 0.3·4 = 1.2 → K = 2


# 6 ---------------------------------------------------------------------------------------------
def naive_m(e):
    s = np.triu(e @ e.T, k=1)
    return np.maximum(0, s.max(axis=0))


@pytest.mark.parametrize("n", [1, 10, 97, 1000])
def test_blockwise_m_equals_naive(n):
    rng = np.random.default_rng(n)
    e = rng.standard_normal((n, 8)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    got = max_similarity(lambda a, b: e[a:b], n, block=3 if n < 200 else 64)
    np.testing.assert_allclose(got, naive_m(e), atol=1e-6)


def test_blockwise_from_disk_equals_in_memory():
    rng = np.random.default_rng(1)
    n = 300
    emb = rng.standard_normal((n, 8)).astype(np.float16)
    grp = {"gidx": np.arange(n) * 3, "sim": rng.random(n).astype(np.float32), "emb": emb}
    a = cluster_max_similarity(grp, "hard", 0, 0, block=16, cap=10_000)
    b = cluster_max_similarity(grp, "hard", 0, 0, block=16, cap=50)  # read block by block
    np.testing.assert_array_equal(a, b)


# 7 ---------------------------------------------------------------------------------------------
def test_random_order_depends_on_seed_and_cluster_only():
    dist = np.linspace(0, 1, 50, dtype=np.float32)
    gidx = np.arange(50)
    a = processing_order(dist, gidx, "random", seed=3, cluster=7)
    assert a.tolist() == processing_order(dist, gidx, "random", seed=3, cluster=7).tolist()
    assert a.tolist() != processing_order(dist, gidx, "random", seed=4, cluster=7).tolist()
    assert a.tolist() != processing_order(dist, gidx, "random", seed=3, cluster=8).tolist()
    assert sorted(a.tolist()) == list(range(50))


# 8 ---------------------------------------------------------------------------------------------
def test_budget_worked_example():
    sizes = np.array([10, 10, 10, 10])
    c = np.array([0.30, 0.20, 0.10, 0.05])
    b = density.budgets(sizes, c, 20, tau=0.1, ratio=0.0)
    np.testing.assert_allclose(b["p"], [0.6308, 0.2321, 0.0854, 0.0518], atol=1e-4)
    np.testing.assert_allclose(b["x_real"], [10, 5.5131, 2.5793, 1.9075], atol=1e-4)
    assert abs(b["nu"] - (-0.8720)) < 1e-4
    assert b["x"].tolist() == [10, 5, 3, 2] and b["x"].sum() == 20  # reference rint: (10, 6, 3, 2) = 21


def test_target_exceeding_cluster_is_capped_and_mass_redistributed():
    sizes = np.array([3, 50, 50])
    c = np.array([1.0, 0.1, 0.1])
    b = density.budgets(sizes, c, 30, tau=0.1, ratio=0.0)
    # softmax puts ~99.98% on cluster 0 (target ≈ 30 > 3): it gets all 3, the rest splits evenly
    assert b["p"][0] * 30 > 3
    assert b["x"].tolist() == [3, 14, 13] and b["x"].sum() == 30


# 9 ---------------------------------------------------------------------------------------------
def test_water_fill_equals_generic_qp_solver():
    rng = np.random.default_rng(0)
    for _ in range(25):
        k = int(rng.integers(2, 8))
        ub = rng.integers(0, 30, k).astype(float)
        lb = np.minimum(rng.integers(0, 4, k), ub).astype(float)
        total = float(rng.integers(int(lb.sum()), int(ub.sum()) + 1))
        t = rng.dirichlet(np.ones(k)) * total * rng.uniform(0.5, 2.0)
        x, nu = density.water_fill(t, lb, ub, total)
        ref = minimize(lambda v, t=t: 0.5 * v @ v - t @ v, np.clip(t, lb, ub), jac=lambda v, t=t: v - t,
                       bounds=list(zip(lb, ub)), constraints=[{"type": "eq", "fun": lambda v, total=total: v.sum() - total}],
                       method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
        np.testing.assert_allclose(x, ref.x, atol=1e-6)
        f = density.round_budgets(x, lb.astype(int), ub.astype(int), int(total))
        assert f.sum() == total and (f >= lb).all() and (f <= ub).all() and (np.abs(f - x) < 1).all()


# 10 --------------------------------------------------------------------------------------------
def test_lower_bounds_and_infeasible():
    assert density.lower_bounds(np.array([0, 1, 2, 9]), 5, 4, 0.0).tolist() == [0, 0, 1, 1]
    assert density.lower_bounds(np.array([30, 200]), 1000, 10, 0.5).tolist() == [29, 50]
    with pytest.raises(ParamError):
        density.budgets(np.array([2, 2]), np.array([0.1, 0.2]), 5, tau=0.1, ratio=0.0)
    with pytest.raises(ParamError):  # lower bounds alone exceed N
        density.budgets(np.array([100, 100]), np.array([0.1, 0.2]), 10, tau=0.1, ratio=3.0)


# 11 --------------------------------------------------------------------------------------------
def test_inter_distances():
    cents = np.stack([u(0), u(10), u(30), u(100)])
    np.testing.assert_allclose(density.inter_distances(cents, 1), [0.0152, 0.0152, 0.0603, 0.6580], atol=1e-4)
    np.testing.assert_allclose(density.inter_distances(cents, 2), [0.0746, 0.0377, 0.0971, 0.8290], atol=1e-4)
    dup = np.stack([u(0), u(0), u(90)])  # a duplicated centroid excludes only itself
    np.testing.assert_allclose(density.inter_distances(dup, 1), [0, 0, 1], atol=1e-7)
    assert density.inter_distances(cents, 50).shape == (4,)  # l capped at k − 1
    assert density.inter_distances(cents[:1], 20).tolist() == [0.0]


# 12 --------------------------------------------------------------------------------------------
def test_empty_cluster_gets_mean_complexity_and_zero_budget():
    d_intra = np.array([0.2, np.nan, 0.4])
    d_inter = np.array([0.5, 0.5, 0.5])
    c = density.complexity(d_intra, d_inter)
    assert c[1] == pytest.approx((0.1 + 0.2) / 2)
    b = density.budgets(np.array([10, 0, 10]), c, 12, tau=0.1, ratio=0.0)
    assert b["x"][1] == 0 and b["x"].sum() == 12


# 13 --------------------------------------------------------------------------------------------
def test_take_hard_easy_random():
    dist = np.array([0.1, 0.9, 0.5, 0.9, 0.3], np.float32)
    gidx = np.array([10, 11, 12, 13, 14])
    assert density.take(dist, gidx, 2, "hard").tolist() == [1, 3]
    assert density.take(dist, gidx, 2, "easy").tolist() == [4, 0]
    assert density.take(dist, gidx, 0, "easy").tolist() == []
    r = density.take(dist, gidx, 3, "random", seed=1, cluster=2)
    assert len(set(r.tolist())) == 3 and r.tolist() == density.take(dist, gidx, 3, "random", seed=1, cluster=2).tolist()


# 14-15 -----------------------------------------------------------------------------------------
def test_ssp_floor_and_uniform():
    assert ssp_floor(np.array([3, 100, 100]), 60, 0.0).tolist() == [0, 0, 0]
    assert ssp_floor(np.array([3, 100, 100]), 60, 0.5).tolist() == [3, 10, 10]
    x = uniform_budgets(np.array([10, 30, 60]), 50, 0.0)
    assert x.tolist() == [5, 15, 30]
    x = uniform_budgets(np.array([2, 40, 60]), 30, 1.0)  # floor min(10, M) first
    assert x.sum() == 30 and x[0] == 2 and (x[1:] >= 10).all()


def test_uniform_density_gives_equal_targets():
    sizes = np.array([100, 100, 100, 100])
    b = density.budgets(sizes, density.complexity(np.ones(4), np.ones(4), "uniform"), 40, tau=0.1, ratio=0.0)
    assert b["x"].tolist() == [10, 10, 10, 10]
    b = density.budgets(sizes, np.array([0.3, 0.2, 0.1, 0.05]), 40, tau=1e9, ratio=0.0)  # τ → ∞
    assert b["x"].tolist() == [10, 10, 10, 10]


def test_rounding_negative_complexity_is_zero_real_negative_errors():
    assert density.complexity(np.array([-1.2e-7, 0.2]), np.array([0.5, 0.5])).tolist() == [0.0, 0.1]
    with pytest.raises(ParamError):
        density.complexity(np.array([-0.1, 0.2]), np.array([0.5, 0.5]))
