"""WILDS and group-fairness tasks: zero-shot classification plus per-group metrics.

As DataComp's ``wilds_eval.py``/``fairness_eval.py`` (wilds 2.0 evaluators): predictions from the
standard classification pass, then the shards' ``npy`` metadata read in the same order. Groups are
numbered by their integer metadata value (``slide:3``); a field has ``max + 1`` groups; worst-group
values skip empty groups. FairFace and UTKFace report no main metric in DataComp (their evaluator
has no ``acc1``) and their per-objective metrics are not reproduced here: they return ``{}``.
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np

from clipsift.eval import zeroshot
from clipsift.log import get_logger

log = get_logger("eval.groups")

# metadata column order of each task's npy, as the evaluators declare it
FIELDS = {
    "wilds/iwildcam": ("location", "sequence", "year", "month", "day", "hour", "minute", "second", "y"),
    "wilds/camelyon17": ("hospital", "slide", "y"),
    "wilds/fmow": ("region", "year", "y"),
    "fairness/dollar_street": ("income_ds", "income_meta", "region"),
    "fairness/geode": ("region", "country"),
}


def read_metadata(root: str) -> np.ndarray:
    """Concatenated ``npy`` metadata of ``test/{0..n-1}.tar`` in shard and member order."""
    n = int(open(os.path.join(root, "test", "nshards.txt")).read().strip())
    rows = []
    for i in range(n):
        with tarfile.open(os.path.join(root, "test", f"{i}.tar")) as tar:
            for info in tar:
                if info.isfile() and info.name.lower().endswith(".npy"):
                    rows.append(np.load(io.BytesIO(tar.extractfile(info).read())))
    return np.stack(rows).astype(np.int64) if rows else np.zeros((0, 0), np.int64)


def group_metrics(name: str, field: str, hits: np.ndarray, groups: np.ndarray) -> dict:
    """wilds' ``standard_group_eval`` without the average: ``{name}_{field}:{g}``, counts, ``{name}_wg``."""
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    out, valid = {}, []
    for g in range(n_groups):
        sel = groups == g
        count = float(sel.sum())
        acc = float(hits[sel].mean()) if count else 0.0
        out[f"{name}_{field}:{g}"] = acc
        out[f"count_{field}:{g}"] = count
        if count:
            valid.append(acc)
    out[f"{name}_wg"] = min(valid) if valid else None
    return out


def wilds_metrics(key: str, logits, target, meta: np.ndarray) -> dict:
    """The wilds 2.0 evaluator metrics of DataComp's three WILDS tasks."""
    from sklearn.metrics import f1_score, recall_score

    pred = logits.argmax(1).cpu().numpy()
    y = target.cpu().numpy()
    hits = (pred == y).astype(np.float64)
    col = {f: i for i, f in enumerate(FIELDS[key])}
    if key == "wilds/iwildcam":
        labels = np.unique(y)
        return {
            "acc_avg": float(hits.mean()),
            "recall-macro_all": float(recall_score(y, pred, average="macro", labels=labels, zero_division=0)),
            "F1-macro_all": float(f1_score(y, pred, average="macro", labels=labels, zero_division=0)),
        }
    if key == "wilds/camelyon17":
        return {"acc_avg": float(hits.mean()), **group_metrics("acc", "slide", hits, meta[:, col["slide"]])}
    # fmow: by year (worst renamed acc_worst_year), then by region
    res = {"acc_avg": float(hits.mean()), **group_metrics("acc", "year", hits, meta[:, col["year"]])}
    res["acc_worst_year"] = res.pop("acc_wg")
    region = group_metrics("acc", "region", hits, meta[:, col["region"]])
    res["acc_worst_region"] = region.pop("acc_wg")
    res.update(region)
    return res


def fairness_metrics(key: str, logits, target, meta: np.ndarray) -> dict:
    """Dollar Street (top-5 by income group) and GeoDE (accuracy by region)."""
    y = target.cpu().numpy()
    col = {f: i for i, f in enumerate(FIELDS[key])}
    if key == "fairness/dollar_street":
        top5 = logits.topk(5, dim=1)[1].cpu().numpy()
        hits = (top5 == y[:, None]).any(1).astype(np.float64)
        res = {"acc_top5_avg": float(hits.mean()), **group_metrics("acc_top5", "income_ds", hits, meta[:, col["income_ds"]])}
        return res
    hits = (logits.argmax(1).cpu().numpy() == y).astype(np.float64)
    return {"acc_avg": float(hits.mean()), **group_metrics("acc", "region", hits, meta[:, col["region"]])}


def evaluate_group_task(task, lm, data_root, batch_size=64, num_workers=4) -> dict:
    """Classification metrics plus the task's group metrics; FairFace/UTKFace give ``{}``."""
    if task.key not in FIELDS:
        log.warning("%s: per-objective fairness metrics are not implemented; recording no metrics (main metric null, as in DataComp)", task.key)
        return {}
    # one ordered pass (no worker interleaving) so predictions line up with the metadata rows
    logits, target, dataset = zeroshot.classification_logits(task, lm, data_root, batch_size, 0)
    metrics = zeroshot.classification_metrics(logits, target, len(dataset.classes))
    meta = read_metadata(zeroshot._wds_root(task, data_root))
    if len(meta) != len(target):
        log.warning("%s: %d metadata rows for %d predictions; group metrics use the common prefix", task.key, len(meta), len(target))
        k = min(len(meta), len(target))
        meta, logits, target = meta[:k], logits[:k], target[:k]
    extra = wilds_metrics(task.key, logits, target, meta) if task.key.startswith("wilds/") else fairness_metrics(task.key, logits, target, meta)
    metrics.update(extra)
    return metrics
