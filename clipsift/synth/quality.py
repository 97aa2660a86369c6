"""Seedless quality of a subset of a synthetic pool, read from its ground truth (``truth.parquet``).

No training is involved, so these figures carry no seed noise: what share of the kept rows has a
mismatched caption, is a repeat of an item already kept, is not English; how many of the world's
concepts the subset covers and what share of it shows the rarest concepts (the tail).
The clean "oracle" subset of a pool is defined here too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipsift.errors import PoolError

TRUTH_COLUMNS = ("uid", "concept", "lang", "is_mismatched", "caption_kind", "dup_group", "is_dup_copy", "download_ok")

# the seedless columns, in display order, with their labels
QUALITY_LABELS = {
    "mismatched": "mismatched %",
    "duplicated": "repeats %",
    "non_english": "non-English %",
    "concepts": "concepts covered",
    "tail": "tail concepts %",
}


def read_truth(pool_dir) -> pa.Table:  # noqa: F821
    """The truth table of a synthetic pool folder (or a truth.parquet path)."""
    p = Path(pool_dir)
    if p.is_dir():
        p = p / "truth.parquet"
    if not p.is_file():
        raise PoolError(f"{p}: no ground truth here; pass a synthetic pool folder made by `clipsift pool make`")
    return pq.read_table(p, columns=list(TRUTH_COLUMNS))


def _records(table) -> np.ndarray:
    from clipsift.uids import hex_to_records

    return hex_to_records(table["uid"])


def oracle_mask(table) -> np.ndarray:
    """Clean rows: an English, normal caption describing its own image, not a copy, downloaded."""
    clean = pc.and_(pc.equal(table["caption_kind"], "normal"), pc.equal(table["lang"], "en"))
    clean = pc.and_(clean, pc.invert(table["is_mismatched"]))
    clean = pc.and_(clean, pc.invert(table["is_dup_copy"]))
    clean = pc.and_(clean, table["download_ok"])
    return clean.to_numpy(zero_copy_only=False)


def oracle_uids(pool_dir) -> np.ndarray:
    """uid records (unsorted) of the pool's clean ground-truth subset (see :func:`oracle_mask`)."""
    t = read_truth(pool_dir)
    return _records(t)[oracle_mask(t)]


def multiplicity(table, subset: np.ndarray) -> np.ndarray:
    """How many times each truth row's uid occurs in ``subset`` (uid records, duplicates allowed)."""
    from clipsift.uids import sort_records

    sub = sort_records(np.asarray(subset))
    rec = _records(table)
    return (np.searchsorted(sub, rec, side="right") - np.searchsorted(sub, rec, side="left")).astype(np.int64)


def subset_quality(pool_dir, subset: np.ndarray, world=None, truth=None) -> dict:
    """Seedless figures of ``subset`` (uid records) in the pool: shares in % of the kept rows.

    ``mismatched``, ``non_english``: caption faults; ``duplicated``: rows that repeat an item
    already kept (exact or near copies, and repeated uids); ``concepts``: concepts with at least
    one kept row; ``tail``: rows showing the world's tail concepts (rarest quarter by frequency).
    """
    from clipsift.synth import World

    t = truth if truth is not None else read_truth(pool_dir)
    if world is None:
        world = World.from_json(Path(pool_dir) / "world.json")
    m = multiplicity(t, subset)
    n = int(m.sum())
    if n == 0:
        return {"rows": 0, "mismatched": None, "duplicated": None, "non_english": None, "concepts": 0,
                "concepts_of": world.n_concepts, "tail": None}
    concept = t["concept"].to_numpy()
    mis = t["is_mismatched"].to_numpy(zero_copy_only=False)
    foreign = pc.not_equal(t["lang"], "en").to_numpy(zero_copy_only=False)
    group = t["dup_group"].to_numpy()
    # items: a duplicate group is one item, any other row its own item
    item = np.where(group >= 0, group, group.max(initial=-1) + 1 + np.arange(len(group)))
    kept = m > 0
    distinct = len(np.unique(item[kept]))
    tail = np.isin(concept, world.tail_concepts())
    share = lambda mask: round(100.0 * float(m[mask].sum()) / n, 2)  # noqa: E731
    return {
        "rows": n,
        "mismatched": share(mis),
        "duplicated": round(100.0 * (n - distinct) / n, 2),
        "non_english": share(foreign),
        "concepts": int(len(np.unique(concept[kept]))),
        "concepts_of": int(world.n_concepts),
        "tail": share(tail),
    }


def fmt_quality(q: dict, key: str) -> str:
    """One quality cell as text (``concepts`` as ``covered/total``)."""
    v = q.get(key)
    if v is None:
        return "—"
    if key == "concepts":
        return f"{v}/{q.get('concepts_of', '?')}"
    return f"{v:.1f}"
