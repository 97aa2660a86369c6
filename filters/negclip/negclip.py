"""``negclip`` filter: keep the pairs with the best negCLIPLoss (Wang et al. 2024, "s-CLIPLoss").

negCLIPLoss corrects the CLIP score by how strongly a pair also matches the other pairs of random
batches: a generic caption or image that fits everything is demoted. Scores are computed per shard
in the map step; the global reduction is an exact top-n (ties by uid) or a threshold.
"""

from __future__ import annotations

import numpy as np

from clipsift.budget import budget_params, require_one
from clipsift.filter import Filter, RunContext, Selection, row_counters
from clipsift.filters.negclip.negclip_pass import KeptRows, NegClipScorer, release, score_pool
from clipsift.filters.negclip.rank import KeptScores, select_streamed
from clipsift.params import Param

ARCHES = ("l14", "b32")

NEGCLIP_PARAMS = (
    Param("tau", float, 0.01, "teacher temperature (OpenAI CLIP: 0.01, logit scale 100)", min=1e-6),
    Param("batch_size", int, 32768, "rows per random batch B; batches never mix shards", min=1),
    Param("repeats", int, 10, "K random batchings per shard, averaged (mean of logs)", min=1),
    Param("seed", int, 0, "seed of the per-(shard, repeat) permutations", min=0),
    Param("balanced_batches", bool, False, "deviation: split each permutation into near-equal batches (no short last batch)"),
    Param("chunk_rows", int, 0, "rows of the logits matrix held at once (0: auto, about 32M logits)", min=0),
    Param("renormalize", bool, False, "L2-normalise stored embeddings first (reference: no)"),
    Param("score_all_rows", bool, True, "with candidates, batches still use every shard row (reference given_uids)"),
)


def negclip_scorer(f, ctx: RunContext, arch: str, **extra) -> NegClipScorer:
    """The map step for the negCLIPLoss parameters of filter ``f`` on embeddings ``arch``."""
    return NegClipScorer(
        img_key=f"{arch}_img", txt_key=f"{arch}_txt", tau=f.tau, batch_size=f.batch_size, repeats=f.repeats,
        seed=f.seed, balanced=f.balanced_batches, chunk_rows=f.chunk_rows, renormalize=f.renormalize,
        device=ctx.torch_device(), **extra,
    )


def score_summary(scores: np.ndarray) -> dict:
    if len(scores) == 0:
        return {}
    return {"min": float(np.min(scores)), "max": float(np.max(scores)), "mean": float(np.mean(scores))}


class NegClipFilter(Filter):
    name = "negclip"
    description = "negCLIPLoss (Wang et al. 2024): CLIP score minus the batch-contrastive normaliser; top fraction or threshold."
    params = (
        *budget_params("rows, highest score first", threshold="keep rows with score >= threshold (scores are <= 0)"),
        Param("arch", str, "l14", "embeddings: l14 (ViT-L/14) or b32 (ViT-B/32)", choices=ARCHES),
        *NEGCLIP_PARAMS,
    )

    def validate(self) -> None:
        require_one(self, "fraction", "count", "threshold")

    def input_keys(self) -> tuple[str, ...]:
        return (f"{self.arch}_img", f"{self.arch}_txt")

    def select(self, ctx: RunContext) -> Selection:
        res = score_pool(ctx, negclip_scorer(self, ctx, self.arch), all_rows=self.score_all_rows)
        try:
            details: dict = {}
            out = KeptRows(ctx, self.name, len(res), with_scores=getattr(self, "keep_scores", False))
            every = KeptScores()
            for recs in res.parts():
                every.add(recs["score"])
            kept = select_streamed(res.parts, len(res), out.add, lambda: ctx.uid_sorter(0, f"{self.name}-ties"),
                                   fraction=self.fraction, count=self.count, threshold=self.threshold, owner=self.name, details=details)
        finally:
            release(ctx, res)
        counters = row_counters(len(res), kept.n, scored_rows=res.rows_read)
        details.update(device=ctx.torch_device(), score_all=every.summary(), score_kept=kept.summary())
        return out.selection(counters, details)
