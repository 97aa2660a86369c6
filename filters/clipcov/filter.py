"""The ``clipcov`` filter plugin: ClipCov (Joshi et al., AISTATS 2024) on a DataComp pool.

Three modes (spec ../shared/specs/clipcov.md): ``reference`` (the notebook's dense batched greedy),
``scalable`` (same pick order, per-class blocked products, classes grouped on disk, resumable) and
``fixed`` (exact greedy on the set function with per-class budgets).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipsift.budget import budget_params, keep_count, require_one
from clipsift.errors import ParamError
from clipsift.filter import Filter, RunContext, Selection
from clipsift.filters.clipcov.partition import file_digest
from clipsift.filters.clipcov.pipeline import (
    Settings,
    UnitLoader,
    _digest,
    build_partition,
    group_rows,
    make_units,
    run_fixed,
    run_reference,
    run_scalable,
    uids_of,
)
from clipsift.io import atomic_path
from clipsift.params import Param
from clipsift.stagecache import candidates_digest
from clipsift.uids import records_to_hex

PARITY_NOTE = "exact: fp64 products of canonical fp16 vectors (spec N1-N6); bit-reproducible on any device"
FAST_NOTE = "fast: fp32/TF32 products, NOT parity-exact (near-ties can flip against the reference)"


class ClipCovFilter(Filter):
    name = "clipcov"
    description = "ClipCov: keep pairs that preserve the per-class image-caption cross-covariance (reference, scalable or fixed)."
    params = (
        Param("mode", str, "scalable", "reference (dense, small pools), scalable (same order, any size) or fixed (exact greedy, per-class budgets)", choices=("reference", "scalable", "fixed")),
        Param("partition", str, "zeroshot", "pseudo-classes: zeroshot (class_embeddings file), kmeans, or labels (a parquet of uid,label)", choices=("zeroshot", "kmeans", "labels")),
        Param("class_embeddings", str, None, "npz from `clipsift clipcov class-embeddings` (same model as the pool's embeddings)"),
        Param("labels", str, None, "parquet with uid and integer label for partition=labels"),
        Param("embeddings", str, "b32", "embedding set used throughout", choices=("b32", "l14")),
        *budget_params("candidate rows"),
        Param("batch", int, 200, "B: a class refreshes its scores at class counts B-1, 2B-1, ...", min=1),
        Param("threshold", float, 0.0, "tau: cross similarities <= tau count as 0"),
        Param("cap", int, None, "split classes larger than this by k-means (deviation from the reference; off by default)", min=1),
        Param("clusters", int, 1000, "K for partition=kmeans", min=1, max=2**31 - 1),
        Param("kmeans_iters", int, 20, "Lloyd iterations for partition=kmeans and cap splits", min=1, max=2**31 - 1),
        Param("fast", bool, False, "fp32/TF32 products: faster, NOT parity-exact"),
        Param("redundancy_scale", float, 1.0, "fixed mode: weight of the redundancy term"),
        Param("block", int, None, "rows per block in the per-class products, memory ~ 3*block^2*8 bytes (default 4096 on CPU, 16384 on CUDA)", min=1),
        Param("check_scores", bool, True, "check image.text against clip_<emb>_similarity_score (row alignment)"),
        Param("order_out", str, None, "also write the picks in order to this parquet (rank, uid, global_index, key, class)"),
    )
    columns = ("uid",)

    def validate(self) -> None:
        require_one(self, "fraction", "count")
        if self.partition == "zeroshot" and not self.class_embeddings:
            raise ParamError("clipcov: partition=zeroshot needs class_embeddings=FILE (make it with `clipsift clipcov class-embeddings`), or use partition=kmeans")
        if self.partition == "labels" and not self.labels:
            raise ParamError("clipcov: partition=labels needs labels=FILE (parquet with uid and label)")
        if self.redundancy_scale != 1.0 and self.mode != "fixed":
            raise ParamError("clipcov: redundancy_scale applies to mode=fixed only")

    def input_keys(self) -> tuple[str, ...]:
        return (f"{self.embeddings}_img", f"{self.embeddings}_txt")

    def _run_dir(self, ctx: RunContext):
        pool_fp = ctx.pool.fingerprint()["digest"]
        cand = candidates_digest(ctx.candidates)[:16]  # a uid array or per-shard masks: the same digest
        files = [file_digest(f) if f and Path(f).is_file() else f for f in (self.class_embeddings, self.labels)]
        # rows left out for bad embeddings (--bad-embeddings drop) change the grouped rows: part of the key
        policy = getattr(ctx, "bad_embeddings", "error")
        extra = [] if policy == "error" else [f"bad_embeddings={policy}"]
        return ctx.scratch_dir("clipcov") / _digest([pool_fp, cand, self.embeddings, self.partition, self.clusters, self.kmeans_iters, *files, *extra])

    def select(self, ctx: RunContext) -> Selection:
        run_dir = self._run_dir(ctx)
        part = build_partition(self, ctx, run_dir)
        store_path = run_dir / "grouped"
        store = group_rows(ctx, part, self.embeddings, self.check_scores, store_path)
        device = ctx.torch_device()
        n = store.num_rows
        shortfall: dict = {}
        k = keep_count(n, self.fraction, self.count, owner="clipcov", details=shortfall)
        block = self.block or (4096 if device == "cpu" else 16384)
        s = Settings(self.mode, self.embeddings, self.batch, self.threshold, self.cap, self.fast, block, device, self.redundancy_scale)
        units = make_units(ctx, store, store_path, self.cap, device, run_dir / f"units-{self.cap}.npz")
        loader = UnitLoader(store, part, s, store_path)
        if self.fast:
            self.log.warning("clipcov: %s", FAST_NOTE)
        if self.mode == "reference":
            out = run_reference(loader, units, k, self.batch)
        elif self.mode == "scalable":
            f = k / n if n else 0.0
            seq_dir = run_dir / ("seq-" + _digest([self.batch, self.threshold, self.cap, self.fast, f]))
            out = run_scalable(ctx, loader, units, k, self.batch, f, seq_dir)
        else:
            out = run_fixed(ctx, loader, units, k, self.redundancy_scale)
        uids = uids_of(ctx, loader, units, out)
        unit_class = np.asarray([c for c, _ in units], dtype=np.int64)
        K = part.num_classes
        per_class = np.bincount(unit_class, weights=out.unit_counts, minlength=K).astype(np.int64)
        refreshes = np.bincount(unit_class, weights=out.unit_refreshes, minlength=K).astype(np.int64)
        sizes = store.sizes
        unit_sizes = np.asarray([sizes[c] if loc is None else len(loc) for c, loc in units], dtype=np.int64)
        if self.order_out:
            self._write_order(uids, out, unit_class)
        details = {
            "mode": self.mode,
            "partition": {"kind": part.kind, "num_classes": K, "empty_classes": int(np.count_nonzero(sizes == 0)), **part.info},
            "numeric": FAST_NOTE if self.fast else PARITY_NOTE,
            "budget": k,
            "class_sizes": sizes.tolist(),
            "picks_per_class": per_class.tolist(),
            "refreshes_per_class": refreshes.tolist() if self.mode != "fixed" else "every pick (exact gains)",
            "sum_nc2": int((unit_sizes.astype(np.float64) ** 2).sum()),
            "largest_class": int(unit_sizes.max(initial=0)),
            "units": len(units),
            "deviation": ("cap splits large classes (spec 5.4)" if self.cap else None),
            "resumed_classes": out.resumed,
            "device": device,
            "run_dir": str(run_dir),
        }
        if self.order_out:
            details["order_file"] = self.order_out
        details.update(shortfall)
        counters = {"input": n, "kept": len(uids), "dropped": n - len(uids), "classes_nonempty": int(np.count_nonzero(sizes)), "refreshes": int(refreshes.sum())}
        return Selection(uids, counters=counters, details=details)

    def _write_order(self, uids, out, unit_class) -> None:
        table = pa.table(
            {
                "rank": np.arange(len(uids), dtype=np.int64),
                "uid": records_to_hex(uids).astype(str),
                "global_index": out.order,
                "key": out.keys,
                "class": unit_class[out.unit_of_pick] if len(out.unit_of_pick) else np.empty(0, np.int64),
            }
        )
        with atomic_path(self.order_out, suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
