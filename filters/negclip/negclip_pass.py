"""Stage-1 pass: score every shard in the executor's map step; the (uid, score) of the candidates
stay per shard on shared storage and the selection streams over them (:mod:`clipsift.filters.negclip.rank`).

With candidates (a chained run, the reference's ``given_uids``) batches still contain every row of
the shard by default and only the output is restricted, as in the reference; ``all_rows=False``
batches the candidate rows alone. The pass can also accumulate sum f f^T of an image key over every
row read, the "whole pool" target of NormSim_2-D (optionally from a seeded row subsample).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from clipsift.candidates import CandidateRows, sorted_chunks_of
from clipsift.devices import task_resources
from clipsift.executor import map_shards
from clipsift.filters.negclip.loss import shard_scores
from clipsift.filters.negclip.normsim_pass import shard_moment
from clipsift.shuffle import PartFolder
from clipsift.stagecache import candidates_digest
from clipsift.uids import UID_DTYPE


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


def _score_part(scorer: NegClipScorer, candidates, folder: PartFolder, batch) -> dict:
    """Map step: score every row read (the normaliser's batches span the whole shard), keep the
    candidates' (uid, score) as this shard's part on shared storage; return only counts and the
    moment. ``candidates``: per-shard masks (CandidateRows), or None when the rows read are the
    candidates."""
    out = scorer(batch)
    keep = None if candidates is None else candidates.mask(batch.shard)[batch.rows]
    rows = np.empty(len(out["uids"]), dtype=SCORED_DTYPE)
    rows["f0"], rows["f1"], rows["score"] = out["uids"]["f0"], out["uids"]["f1"], out["score"]
    if keep is not None:
        rows = rows[keep]
    name = f"{batch.shard.rank:06d}"
    folder.write(name, np.zeros(len(rows), np.uint8), rows)
    res = {"name": name, "rows": len(rows), "rows_read": len(out["uids"])}
    if "moment" in out:
        res["moment"], res["moment_rows"] = out["moment"], out["moment_rows"]
    return res


SCORED_DTYPE = np.dtype([("f0", "<u8"), ("f1", "<u8"), ("score", "<f4")])


@dataclass
class ScoredRows:
    """The candidates' scores, one part per shard on shared storage (no process holds them all)."""

    folder: PartFolder
    names: tuple[str, ...]
    num_rows: int
    rows_read: int
    moment: np.ndarray | None
    moment_rows: int

    def __len__(self) -> int:
        return self.num_rows

    def parts(self):
        """Each shard's (uid, score) records, in shard order."""
        for name in self.names:
            yield self.folder.read_range([name], 0, 1, SCORED_DTYPE)[0]

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(uids, scores) of every candidate in memory, shard order (for score mixing, in memory by design)."""
        recs = [r for r in self.parts()]
        recs = np.concatenate(recs) if recs else np.empty(0, SCORED_DTYPE)
        uids = np.empty(len(recs), UID_DTYPE)
        uids["f0"], uids["f1"] = recs["f0"], recs["f1"]
        return uids, np.ascontiguousarray(recs["score"])

    def close(self) -> None:
        self.folder.remove()


def score_pool(ctx, scorer: NegClipScorer, all_rows: bool = True, desc: str = "negclip") -> ScoredRows:
    """Run ``scorer`` on every shard; keep the scores of ``ctx.candidates``' rows (all rows when
    None) as per-shard parts in the run's scratch space. With ``all_rows`` (the reference) every
    shard row is scored and the candidates are picked out in the task, by per-shard masks."""
    cands = ctx.candidates
    read_cands = None if (cands is None or all_rows) else cands
    masks = None
    if cands is not None and read_cands is None:
        masks = cands if hasattr(cands, "mask") else CandidateRows.from_sorted_uids(
            ctx, sorted_chunks_of(cands), ctx.scratch_url("candidates"), expected=len(cands))
    key = (scorer, candidates_digest(cands), all_rows)
    folder = PartFolder(ctx.step_url(f"scores-{desc}", key), 1)
    parts = map_shards(ctx.pool, partial(_score_part, scorer, masks, folder), columns=scorer.columns(), keys=scorer.keys(),
                       candidates=read_cands, executor=ctx.executor, desc=desc, bad_embeddings=ctx.bad_embeddings,
                       dropped=ctx.dropped, stages=ctx.run_dir, resources=task_resources(scorer.device))
    names, moment, moment_rows, rows, rows_read = [], None, 0, 0, 0
    try:
        parts = list(parts)
    finally:
        if masks is not None and masks is not cands:  # made here from a uid array
            masks.release(ctx)
    for part in parts:
        rows_read += part["rows_read"]
        if "moment" in part:
            moment = part["moment"] if moment is None else moment + part["moment"]
            moment_rows += part["moment_rows"]
        if part["rows"]:
            names.append(part["name"])
            rows += part["rows"]
    return ScoredRows(folder, tuple(names), rows, rows_read, moment, moment_rows)


def release(ctx, scored: ScoredRows) -> None:
    """Delete the score parts once selected, unless they live in a run folder (a rerun reuses them)."""
    if ctx.run_dir is None:
        scored.close()


class KeptRows:
    """Where a streamed selection's rows go: the uid sorter on shared storage, or, when a caller
    needs the kept scores too (score mixing, in memory by design), arrays."""

    def __init__(self, ctx, name: str, expected: int, with_scores: bool = False):
        self.sorter = None if with_scores else ctx.uid_sorter(expected, name)
        self.uids, self.scores = [], []

    def add(self, uids: np.ndarray, scores: np.ndarray) -> None:
        if self.sorter is not None:
            self.sorter.add(uids)
        else:
            self.uids.append(uids)
            self.scores.append(np.asarray(scores))

    def selection(self, counters: dict, details: dict):
        from clipsift.filter import Selection

        if self.sorter is not None:
            return Selection(sorter=self.sorter, counters=counters, details=details)
        uids = np.concatenate(self.uids) if self.uids else np.empty(0, UID_DTYPE)
        scores = np.concatenate(self.scores) if self.scores else np.empty(0, np.float32)
        return Selection(uids, counters=counters, details=details, scores=scores)
