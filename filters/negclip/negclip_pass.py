"""Stage-1 pass: score every shard in the executor's map step, gather (uid, score) in the parent.

With candidates (a chained run, the reference's ``given_uids``) batches still contain every row of
the shard by default and only the output is restricted, as in the reference; ``all_rows=False``
batches the candidate rows alone. The pass can also accumulate sum f f^T of an image key over every
row read, the "whole pool" target of NormSim_2-D (optionally from a seeded row subsample).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from clipsift.devices import task_resources
from clipsift.executor import map_shards
from clipsift.filters.negclip.loss import shard_scores
from clipsift.filters.negclip.normsim_pass import shard_moment
from clipsift.uids import UID_DTYPE, isin_sorted


@dataclass(frozen=True)
class NegClipScorer:
    """Picklable map step: negCLIPLoss of one shard (or the parquet CLIP score when ``column``)."""

    img_key: str = "l14_img"
    txt_key: str = "l14_txt"
    tau: float = 0.01
    batch_size: int = 32768
    repeats: int = 10
    seed: int = 0
    balanced: bool = False
    chunk_rows: int = 0
    renormalize: bool = False
    device: str = "cpu"
    column: str | None = None  # stage 1 by a parquet score column instead of negCLIPLoss
    moment_key: str | None = None
    moment_subsample: float | None = None

    def keys(self) -> tuple[str, ...]:
        keys = () if self.column else (self.img_key, self.txt_key)
        if self.moment_key and self.moment_key not in keys:
            keys += (self.moment_key,)
        return keys

    def columns(self) -> tuple[str, ...]:
        return (self.column,) if self.column else ()

    def __call__(self, batch) -> dict:
        if self.column:
            score = batch.numpy(self.column, np.float64).astype(np.float32)
            out = {"uids": batch.uids, "score": score}
        else:
            score, css = shard_scores(
                batch.embeddings[self.img_key], batch.embeddings[self.txt_key], tau=self.tau,
                batch_size=self.batch_size, repeats=self.repeats, seed=self.seed, shard_name=batch.shard.name,
                balanced=self.balanced, chunk_rows=self.chunk_rows, renormalize=self.renormalize, device=self.device,
            )
            out = {"uids": batch.uids, "score": score, "css": css}
        if self.moment_key:
            out["moment"], out["moment_rows"] = self._moment(batch)
        return out

    def _moment(self, batch) -> tuple[np.ndarray, int]:
        emb = batch.embeddings[self.moment_key]
        return shard_moment(emb, self.renormalize, self.moment_subsample, self.seed, batch.shard.name)


def _flag_candidates(scorer: NegClipScorer, candidates, batch) -> dict:
    """Score every row (the normaliser's batches span the whole shard) and flag the candidates."""
    out = scorer(batch)
    out["candidate"] = candidates.mask(batch.shard)[batch.rows]
    return out


@dataclass
class PassResult:
    uids: np.ndarray
    score: np.ndarray
    css: np.ndarray | None
    moment: np.ndarray | None
    moment_rows: int
    rows_read: int


def score_pool(ctx, scorer: NegClipScorer, all_rows: bool = True, desc: str = "negclip") -> PassResult:
    """Run ``scorer`` on every shard; keep the rows of ``ctx.candidates`` (all rows when None)."""
    cands = ctx.candidates
    read_cands = None if (cands is None or all_rows) else cands
    uids, scores, css = [], [], []
    moment, moment_rows, rows_read = None, 0, 0
    by_rows = read_cands is None and hasattr(cands, "mask")  # candidate masks: flagged inside the task
    task = partial(_flag_candidates, scorer, cands) if by_rows else scorer
    parts = map_shards(ctx.pool, task, columns=scorer.columns(), keys=scorer.keys(), candidates=read_cands, executor=ctx.executor, desc=desc,
                       bad_embeddings=ctx.bad_embeddings, dropped=ctx.dropped, stages=ctx.run_dir,
                       resources=task_resources(scorer.device))
    for part in parts:
        u, s, c = part["uids"], part["score"], part.get("css")
        rows_read += len(u)
        if "moment" in part:
            moment = part["moment"] if moment is None else moment + part["moment"]
            moment_rows += part["moment_rows"]
        if cands is not None and read_cands is None:
            keep = part["candidate"] if by_rows else isin_sorted(u, cands)
            u, s, c = u[keep], s[keep], (c[keep] if c is not None else None)
        uids.append(u)
        scores.append(s)
        if c is not None:
            css.append(c)
    return PassResult(
        uids=np.concatenate(uids) if uids else np.empty(0, UID_DTYPE),
        score=np.concatenate(scores) if scores else np.empty(0, np.float32),
        css=np.concatenate(css) if css else None,
        moment=moment,
        moment_rows=moment_rows,
        rows_read=rows_read,
    )
