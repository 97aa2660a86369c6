"""``normsim`` filter: keep the candidates whose image embedding is most like a target set.

NormSim_p(f) = ||G f||_p over target image embeddings G (p = 2 or inf; Wang et al. 2024), or
NormSim_2-D, which uses the shrinking selection itself as the target. Targets are user files
(ImageNet-1k or downstream-task training features from the same CLIP encoder as ``arch``). On its
own the fraction refers to this filter's candidates; ``negclip_normsim`` gives the paper's two-stage
rule, where the NormSim fraction refers to the whole pool.
"""

from __future__ import annotations

import numpy as np

from clipsift.budget import budget_params, keep_count, require_one
from clipsift.errors import ParamError, PoolError
from clipsift.filter import Filter, RunContext, Selection, row_counters
from clipsift.filters.negclip.normsim_dynamic import dynamic_select
from clipsift.filters.negclip.normsim_pass import (
    collect_embeddings,
    pool_moment,
    prepare_target,
    score_candidates,
)
from clipsift.filters.negclip.rank import top_n
from clipsift.params import Param

NORMS = ("2", "inf", "dynamic")

NORMSIM_PARAMS = (
    Param("norm", str, "inf", "2: NormSim_2 (Gram shortcut), inf: max |cosine| to a target, dynamic: NormSim_2-D", choices=NORMS),
    Param("target", str, None, "target image embeddings: comma-separated .npy/.npz/.pt files, folders or globs"),
    Param("target_key", str, None, "array name inside .npz/.pt targets (default: the only one, or image_features)"),
    Param("target_format", str, "embeddings", "embeddings (G, |T| x D) or covariance (one D x D Sigma, norm=2 only)", choices=("embeddings", "covariance")),
    Param("iterations", int, 500, "NormSim_2-D: iterations T", min=1),
    Param("init_target", str, "pool", "NormSim_2-D: first target = whole pool (reference) or the start set", choices=("pool", "start")),
    Param("sigma_subsample", float, None, "NormSim_2-D: Sigma from a seeded share of rows (reference 0.1; default exact)", min=0.0, max=1.0),
)


def embedding_dim(pool, key: str) -> int:
    pool.require((), (key,))
    shapes = pool.embedding_shapes()
    if key not in shapes:
        raise PoolError(f"{pool.shards[0].npz}: no embedding key {key!r} (has {', '.join(shapes)}); choose arch= accordingly")
    return int(shapes[key][0][1])


def check_normsim_params(f, owner: str) -> None:
    if f.norm != "dynamic" and not f.target:
        raise ParamError(f"{owner}: norm={f.norm} needs target= (image embedding files of ImageNet-1k or the downstream tasks)")
    if f.target_format == "covariance" and f.norm != "2":
        raise ParamError(f"{owner}: target_format=covariance works with norm=2 only")
    if f.sigma_subsample is not None and f.sigma_subsample <= 0:
        raise ParamError(f"{owner}: sigma_subsample must be in (0, 1]")


def run_normsim(f, ctx: RunContext, *, count: int | None, threshold: float | None, initial: np.ndarray | None = None):
    """NormSim selection among ``ctx``'s candidates: (kept uids, their values or None, details)."""
    key = f"{f.arch}_img"
    if f.norm == "dynamic":
        uids, emb = collect_embeddings(ctx, key, f.renormalize)
        keep, sizes = dynamic_select(
            emb, uids, count, f.iterations, initial=initial, subsample=f.sigma_subsample, seed=f.seed, device=ctx.torch_device()
        )
        details = {"start_rows": len(uids), "iterations_run": len(sizes) - 1, "sizes_head": sizes[:4], "final_rows": sizes[-1]}
        return uids[keep], None, details
    target = prepare_target(f.target, f.norm, embedding_dim(ctx.pool, key), ctx.workdir, f.target_key, f.target_format == "covariance")
    uids, vals = score_candidates(ctx, key, target, f.renormalize)
    keep = np.flatnonzero(vals >= threshold) if threshold is not None else top_n(vals, uids, count)
    details = {"target_rows": target.rows, "scored_rows": len(uids)}
    if len(keep):
        details["normsim_kept"] = {"min": float(vals[keep].min()), "max": float(vals[keep].max())}
    return uids[keep], vals[keep], details


class NormSimFilter(Filter):
    name = "normsim"
    description = "NormSim (Wang et al. 2024): similarity of each image to a target set (p=2, p=inf) or NormSim_2-D."
    params = (
        *budget_params("candidates, highest NormSim first", threshold="keep candidates with NormSim >= threshold (not with norm=dynamic)"),
        Param("arch", str, "l14", "image embeddings: l14 or b32 (targets must come from the same encoder)", choices=("l14", "b32")),
        *NORMSIM_PARAMS,
        Param("seed", int, 0, "seed of the sigma_subsample draws", min=0),
        Param("renormalize", bool, False, "L2-normalise stored embeddings first (reference: no)"),
    )

    def validate(self) -> None:
        require_one(self, "fraction", "count", "threshold")
        if self.norm == "dynamic" and self.threshold is not None:
            raise ParamError("normsim: norm=dynamic selects by fraction; drop threshold=")
        check_normsim_params(self, "normsim")

    def input_keys(self) -> tuple[str, ...]:
        return (f"{self.arch}_img",)

    def select(self, ctx: RunContext) -> Selection:
        total = ctx.num_candidates
        budget: dict = {}
        count = None if self.threshold is not None else keep_count(total, self.fraction, self.count, owner=self.name, details=budget)
        initial = None
        if self.norm == "dynamic" and self.init_target == "pool":
            initial, _ = pool_moment(ctx.with_candidates(None), f"{self.arch}_img", self.renormalize, self.sigma_subsample, self.seed)
        uids, vals, details = run_normsim(self, ctx, count=count, threshold=self.threshold, initial=initial)
        return Selection(uids, counters=row_counters(total, len(uids)), details={"device": ctx.torch_device(), **budget, **details}, scores=vals)
