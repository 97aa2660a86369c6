"""ClipCov on a pool (spec §5.2): partition, group rows by class on disk, per-class work, merge.

Per-class work (cap splits, each class's sequence prefix, fixed-mode picks, uid lookups) runs as
executor tasks, one per class or batch of small classes, each reading only its classes from the
grouped store on shared storage; the spec makes class sequences independent, so only the heap merge
(P4, with its on-demand resumptions) and the dense reference mode stay in the driver. A task holds
its batch's rows, so peak memory is set by the largest class, not by the pool. Everything lands in
a run folder keyed by the inputs and parameters, so a re-run with the same ``--workdir`` resumes:
the grouped rows and each finished class's sequence prefix are reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from clipsift.clustering import map_groups, store_row_bytes
from clipsift.errors import ClipsiftError, ParamError
from clipsift.filters.clipcov.fixed import class_budgets, fixed_class
from clipsift.filters.clipcov.numeric import unit_canonical
from clipsift.filters.clipcov.partition import (
    check_class_file_dims,
    count_rows,
    file_digest,
    ingest_shard,
    kmeans_centres,
    kmeans_sample_step,
    load_class_embeddings,
    prepare_label_file,
    sample_shard,
    split_class,
)
from clipsift.filters.clipcov.quantities import ClassProblem, EmbeddingKernel, embedding_problem
from clipsift.filters.clipcov.reference import reference_select, refreshes_expected
from clipsift.filters.clipcov.sequence import ClassSequence, merge, prefix_length
from clipsift.grouped import GroupedStore
from clipsift.io import atomic_path
from clipsift.log import get_logger, progress

log = get_logger("filters.clipcov")


@dataclass
class Settings:
    """Everything the selection depends on, besides the pool and the partition."""

    mode: str
    arch: str
    B: int
    tau: float
    cap: int | None
    fast: bool
    block: int
    device: str
    redundancy_scale: float


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_npz(path: Path, **arrays) -> None:
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


# ---- partition and grouping (P0–P2) -------------------------------------------------------------
@dataclass
class Partition:
    kind: str
    num_classes: int
    centres_file: str | None  # canonical vectors rows are labelled against (zeroshot, kmeans)
    label_file: str | None  # sorted uid → label lookup (labels)
    label_vectors: np.ndarray | None  # e_c; None means e_c = m_c^T from the class's captions
    info: dict


def build_partition(filt, ctx, run_dir: Path) -> Partition:
    """Class vectors or label lookup, per the ``partition`` parameter (spec §2 i–iii)."""
    kind, arch = filt.partition, filt.embeddings
    run_dir.mkdir(parents=True, exist_ok=True)
    if kind == "zeroshot" or (kind == "labels" and filt.class_embeddings):
        E, names, meta = load_class_embeddings(filt.class_embeddings)
        check_class_file_dims(E, arch, filt.class_embeddings)
        info = {"class_embeddings": str(filt.class_embeddings), "digest": file_digest(filt.class_embeddings), **meta}
    if kind == "zeroshot":
        centres = run_dir / "centres.npy"
        np.save(centres, E)
        return Partition(kind, len(E), str(centres), None, E, info)
    if kind == "labels":
        label_file, k = prepare_label_file(filt.labels, run_dir)
        vectors = None
        if filt.class_embeddings:
            if len(E) < k:
                raise ParamError(f"{filt.class_embeddings}: {len(E)} class embeddings but labels go up to {k - 1}; give one per label")
            k, vectors = len(E), E
        else:
            info = {}
        return Partition(kind, k, None, label_file, vectors, {**info, "labels": str(filt.labels), "labels_digest": file_digest(filt.labels)})
    # kmeans: sample, train, make canonical (spec §2 ii)
    k = filt.clusters
    centres = run_dir / "centres.npy"
    n = ctx.num_candidates
    step = kmeans_sample_step(n, k)
    if not centres.is_file():
        if ctx.candidates is None:
            starts = tuple(s.offset for s in ctx.pool.shards)
        else:
            counts = list(ctx.map_shards(count_rows, desc="clipcov: count"))
            starts = tuple(int(v) for v in np.concatenate([[0], np.cumsum(counts)[:-1]]))
        parts = ctx.map_shards(partial(_sample_by_rank, arch, step, starts), keys=(f"{arch}_img",), desc="clipcov: k-means sample")
        sample = np.concatenate(list(parts))
        log.info("k-means: %d clusters on %d sampled rows (every %d-th), %d iterations", k, len(sample), step, filt.kmeans_iters)
        cent = kmeans_centres(sample, k, filt.kmeans_iters, ctx.torch_device())
        with atomic_path(centres, suffix=".npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, cent)
    return Partition(kind, k, str(centres), None, None, {"clusters": k, "iterations": filt.kmeans_iters, "sample_step": step})


def _sample_by_rank(arch, step, starts, batch):
    return sample_shard(arch, step, starts[batch.shard.rank], batch)


def group_rows(ctx, part: Partition, arch: str, check_scores: bool, path: Path) -> GroupedStore:
    """P2: class-contiguous canonical fp16 rows, global indices and uids (reused when complete)."""
    try:
        store = GroupedStore.open(path)
        log.info("clipcov: reusing grouped rows at %s", path)
        return store
    except ClipsiftError:  # not built yet, or an interrupted build: build it
        pass
    col = f"clip_{arch}_similarity_score"
    columns = (col,) if check_scores and col in ctx.pool.schema.names else ()
    if check_scores and not columns:
        log.warning("clipcov: pool has no %s column; skipping the row-alignment check", col)
    fn = partial(ingest_shard, arch, part.centres_file, part.label_file, bool(columns))
    return GroupedStore.build(
        ctx, fn, columns=columns, keys=(f"{arch}_img", f"{arch}_txt"), num_groups=part.num_classes, path=path, desc="clipcov: group by class"
    )


# ---- units: classes, or sub-classes under a cap (§5.4) --------------------------------------------
def make_units(ctx, store: GroupedStore, store_path: Path, cap: int | None, device: str, path: Path) -> list[tuple[int, np.ndarray | None]]:
    """(class, local rows or None for the whole class) per unit, persisted for resumption; classes
    above ``cap`` are split by executor tasks, one per class (or batch of classes)."""
    if cap is None:
        return [(c, None) for c in range(store.num_groups) if store.sizes[c] > 0]
    if path.is_file():
        with np.load(path) as z:
            cls, starts, lens, rows = z["cls"], z["starts"], z["lens"], z["rows"]
        return [(int(c), None if st < 0 else rows[st : st + ln]) for c, st, ln in zip(cls, starts, lens, strict=True)]
    big = np.flatnonzero(store.sizes > cap)
    splits = dict(zip(big.tolist(), map_groups(ctx, partial(_split_task, cap, device), store_path, big, store.sizes,
                                               row_bytes=store_row_bytes(store, ["img"]), desc="clipcov: split classes",
                                               device=device), strict=True))
    units = []
    for c in np.flatnonzero(store.sizes).tolist():
        if c in splits:
            units.extend((c, part) for part in splits[c])
        else:
            units.append((c, None))
    starts, lens, flat, pos = [], [], [], 0
    for _, rows in units:
        starts.append(-1 if rows is None else pos)
        lens.append(0 if rows is None else len(rows))
        if rows is not None:
            flat.append(rows)
            pos += len(rows)
    _save_npz(
        path,
        cls=np.asarray([c for c, _ in units], dtype=np.int64),
        starts=np.asarray(starts, dtype=np.int64),
        lens=np.asarray(lens, dtype=np.int64),
        rows=np.concatenate(flat) if flat else np.empty(0, np.int64),
    )
    return units


def _split_task(cap: int, device: str, store, c: int, _arg=None) -> list[np.ndarray]:
    """One class's task: its sub-classes of at most ``cap`` rows (local row indices)."""
    return split_class(read_group(store, c, ["img"])["img"], cap, device)


def unit_sizes(store: GroupedStore, units) -> np.ndarray:
    """Rows of each unit."""
    return np.asarray([store.sizes[c] if local is None else len(local) for c, local in units], dtype=np.int64)


def map_units(ctx, fn, loader: UnitLoader, units, unit_ids, *, args=None, desc: str, reads=("img", "txt", "gidx")):
    """Yield ``fn(loader, i, unit, arg)`` for the given unit indices, in order, run by the executor as
    tasks over batches of units (each task rebuilds a loader from the store path: tasks never carry
    the driver's store). ``args``: optional per-unit values aligned with ``unit_ids``; ``reads``: the
    arrays ``fn`` reads, which size the batches."""
    unit_ids = np.asarray(unit_ids, np.int64)
    per_unit = [units[i] for i in unit_ids.tolist()]
    items = list(zip(per_unit, [None] * len(per_unit) if args is None else args, strict=True))
    task = partial(_unit_task, fn, loader.part, loader.s)
    row_bytes = store_row_bytes(loader.store, reads)
    yield from map_groups(ctx, task, loader.store_path, unit_ids, unit_sizes(loader.store, units), args=items,
                          row_bytes=row_bytes, desc=desc, device=loader.s.device)


def _unit_task(fn, part: Partition, s: Settings, store, i: int, item):
    unit, arg = item
    return fn(UnitLoader(store, part, s), i, unit, arg)


def read_group(store: GroupedStore, c: int, names=None) -> dict[str, np.ndarray]:
    """One group's arrays copied into memory (tasks drop their store, and its maps, when done)."""
    return {name: np.array(a) for name, a in store.read(c, names).items()}


class UnitLoader:
    """Builds a unit's :class:`ClassProblem` from the grouped store (one class resident)."""

    def __init__(self, store: GroupedStore, part: Partition, s: Settings, store_path: Path | None = None):
        self.store, self.part, self.s, self.store_path = store, part, s, store_path
        self._parent_vec: dict[int, np.ndarray] = {}

    def rows(self, unit, names=None) -> dict[str, np.ndarray]:
        c, local = unit
        data = read_group(self.store, c, names)
        return data if local is None else {k: v[local] for k, v in data.items()}

    def label_vector(self, c: int) -> np.ndarray:
        if self.part.label_vectors is not None:
            return self.part.label_vectors[c]
        if c not in self._parent_vec:  # e_c = canonical unit(Σ t_j) over the (parent) class
            txt = read_group(self.store, c, ["txt"])["txt"]
            self._parent_vec = {c: unit_canonical(txt.astype(np.float64).sum(axis=0)[None])[0]}
        return self._parent_vec[c]

    def problem(self, unit, dense: bool = False) -> ClassProblem:
        d = self.rows(unit)
        s = self.s
        return embedding_problem(
            d["gidx"], d["img"], d["txt"], self.label_vector(unit[0]), tau=s.tau, device=s.device, block=s.block, fast=s.fast, dense=dense
        )

    def resume_problem(self, unit, u, r, lsim) -> ClassProblem:
        """A unit ready to continue its sequence: scores, r and l from disk, no coverage recompute."""
        d = self.rows(unit)
        s = self.s
        kern = EmbeddingKernel(d["img"], d["txt"], s.tau, s.device, s.block, s.fast)
        return ClassProblem(d["gidx"], np.asarray(u), np.asarray(r), np.asarray(lsim), kern)


# ---- the three modes -----------------------------------------------------------------------------
@dataclass
class Outcome:
    """Picks in order (global indices, keys, unit) and per-unit pick/refresh counts."""

    order: np.ndarray
    keys: np.ndarray
    unit_of_pick: np.ndarray
    unit_counts: np.ndarray
    unit_refreshes: np.ndarray
    resumed: int = 0


def run_reference(loader: UnitLoader, units, k: int, B: int) -> Outcome:
    largest = max((loader.store.sizes[c] if loc is None else len(loc) for c, loc in units), default=0)
    if largest > 20_000:
        log.warning("clipcov reference mode holds dense n_c x n_c matrices; the largest class has %d rows (use mode=scalable)", largest)
    problems = [loader.problem(u, dense=True) for u in progress(units, desc="clipcov: classes (dense)", unit="class")]
    res = reference_select(problems, k, B)
    owner = np.concatenate([np.full(p.n, i) for i, p in enumerate(problems)]) if problems else np.empty(0, np.int64)
    g_all = np.concatenate([p.gidx for p in problems]) if problems else np.empty(0, np.int64)
    srt = np.argsort(g_all)
    unit_of = owner[srt][np.searchsorted(g_all[srt], res.order)]
    return Outcome(res.order, res.keys, unit_of, res.counts, res.refreshes)


def run_scalable(ctx, loader: UnitLoader, units, k: int, B: int, fraction: float, seq_dir: Path) -> Outcome:
    """P3 per unit (persisted prefix + state), then the P4 heap merge with on-demand resumption."""
    seq_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(len(units)) if not (seq_dir / f"u{i:06d}.npz").is_file()]
    if len(todo) < len(units):
        log.info("clipcov: %d of %d class sequences reused from %s", len(units) - len(todo), len(units), seq_dir)
    for _ in map_units(ctx, partial(_prefix_task, B, fraction, str(seq_dir)), loader, units, todo, desc="clipcov: classes"):
        pass
    heads, refresh_lists = [], []
    for i in range(len(units)):
        with np.load(seq_dir / f"u{i:06d}.npz") as z:
            heads.append((z["keys"], z["gidx"], bool(z["exhausted"])))
            refresh_lists.append(z["refresh_counts"])
    resumed = set()

    def resume(i, m):
        f = seq_dir / f"u{i:06d}.npz"
        with np.load(f) as z:
            state = {name: z[name] for name in z.files}
        prob = loader.resume_problem(units[i], state["u"], state["r"], state["lsim"])
        seq = ClassSequence(prob, B, state)
        keys, loc = seq.extend(m)
        keys_all = np.concatenate([state["keys"], keys])
        gidx_all = np.concatenate([state["gidx"], prob.gidx[loc]])
        _save_npz(f, keys=keys_all, gidx=gidx_all, exhausted=seq.exhausted, r=state["r"], lsim=state["lsim"], **_state(seq))
        refresh_lists[i] = np.asarray(seq.refresh_counts)
        resumed.add(i)
        log.info("clipcov: class unit %d resumed for %d more picks", i, m)
        return keys, prob.gidx[loc], seq.exhausted

    order, keys, unit_of = merge(heads, k, resume)
    counts = np.bincount(unit_of, minlength=len(units))
    refreshes = np.array([int(np.count_nonzero(np.asarray(rl) <= counts[i])) for i, rl in enumerate(refresh_lists)], dtype=np.int64)
    return Outcome(order, keys, unit_of, counts, refreshes, len(resumed))


def _prefix_task(B: int, fraction: float, seq_dir: str, loader: UnitLoader, i: int, unit, _arg=None) -> None:
    """One unit's task (P3): its sequence prefix and state, saved to the run folder for the merge."""
    prob = loader.problem(unit)
    seq = ClassSequence(prob, B)
    keys, loc = seq.extend(prefix_length(prob.n, fraction, B))
    _save_npz(Path(seq_dir) / f"u{i:06d}.npz", keys=keys, gidx=prob.gidx[loc], exhausted=seq.exhausted, r=prob.r, lsim=prob.lsim, **_state(seq))


def _state(seq: ClassSequence) -> dict:
    st = seq.state()
    return {k: np.asarray(v) for k, v in st.items()}


def run_fixed(ctx, loader: UnitLoader, units, k: int, redundancy_scale: float) -> Outcome:
    kc = class_budgets(unit_sizes(loader.store, units).tolist(), k)
    todo = np.flatnonzero(kc)
    order, keys, unit_of = [], [], []
    picks = map_units(ctx, partial(_fixed_task, redundancy_scale), loader, units, todo, args=kc[todo].tolist(),
                      desc="clipcov: classes (fixed)")
    for i, (gidx, gains) in zip(todo.tolist(), picks, strict=True):
        order.append(gidx)
        keys.append(gains)
        unit_of.append(np.full(len(gidx), i))
    cat = lambda xs, dt: np.concatenate(xs) if xs else np.empty(0, dt)  # noqa: E731
    return Outcome(cat(order, np.int64), cat(keys, np.float64), cat(unit_of, np.int64), kc, kc.copy())


def _fixed_task(redundancy_scale: float, loader: UnitLoader, i: int, unit, budget) -> tuple[np.ndarray, np.ndarray]:
    """One unit's task in fixed mode: global indices of its ``budget`` picks and their gains."""
    prob = loader.problem(unit)
    loc, gains = fixed_class(prob, int(budget), redundancy_scale)
    return prob.gidx[loc], gains


def uids_of(ctx, loader: UnitLoader, units, out: Outcome) -> np.ndarray:
    """uid records of the picks, in pick order (each unit's lookup is a task)."""
    from clipsift.uids import UID_DTYPE

    uids = np.empty(len(out.order), dtype=UID_DTYPE)
    by_unit = np.argsort(out.unit_of_pick, kind="stable")
    picked, counts = np.unique(out.unit_of_pick[by_unit], return_counts=True)
    where = np.split(by_unit, np.cumsum(counts)[:-1]) if len(picked) else []
    found = map_units(ctx, _uids_task, loader, units, picked, args=[out.order[w] for w in where], desc="clipcov: uids",
                      reads=("gidx", "uid"))
    for w, u in zip(where, found, strict=True):
        uids[w] = u
    return uids


def _uids_task(loader: UnitLoader, i: int, unit, order) -> np.ndarray:
    """uid records of one unit's picks (global indices ``order``)."""
    d = loader.rows(unit, ["gidx", "uid"])
    return d["uid"][np.searchsorted(d["gidx"], order)]


__all__ = [
    "Settings",
    "Partition",
    "build_partition",
    "group_rows",
    "make_units",
    "UnitLoader",
    "Outcome",
    "run_reference",
    "run_scalable",
    "run_fixed",
    "uids_of",
    "map_units",
    "refreshes_expected",
]
