"""WILDS and group-fairness tasks: zero-shot classification plus per-group metrics.

As DataComp's ``wilds_eval.py``/``fairness_eval.py`` with the wilds 2.0 evaluators: predictions
from the standard classification pass, then the shards' ``npy`` metadata in the same order.
Grouping follows wilds' ``CombinatorialGrouper``: a field has ``max + 1`` groups named
``field:value`` (several fields: the last one first, ``race:3_gender:1``); per-group values and
averages are float32 means as wilds computes them (DataComp's scatter-add replacement, so an empty
group is 0/0 = NaN, written as null); worst-group values skip empty groups.

FMoW: ``acc_worst_region`` is the worst accuracy over the regions with images, the "Other"
region excluded (the evaluator's stated rule, region index 5 as in wilds' FMoW). DataComp's code
means to skip it but tests ``"Other" in "region:5"``, which is never true, so its published
figure includes "Other" (a handful of images in the real test split: one image moves the 38-task
average by about 0.0066); that figure is kept as ``acc_worst_region_datacomp``.

FairFace/UTKFace: ``objective:text`` class and template lines give four classifiers (race, gender,
age, toxic) scored together; their metrics have no ``acc1``, so the main metric is null.
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np

from clipsift.errors import ClipsiftError
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
    "fairness/fairface": ("age", "gender", "race", "race_binary"),
    "fairness/utkface": ("age", "gender", "race", "race_binary"),
}
FMOW_OTHER_REGION = 5  # wilds FMoW regions: Asia, Europe, Africa, Americas, Oceania, Other
FACE_OBJECTIVES = ("race", "gender", "age", "toxic")


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


def _f32_mean(x: np.ndarray) -> float:
    return float(np.float32(x.astype(np.float32).sum(dtype=np.float32) / np.float32(len(x)))) if len(x) else 0.0


def group_ids(meta: np.ndarray, fields: tuple[str, ...], by: list[str]) -> tuple[np.ndarray, list[str]]:
    """wilds ``CombinatorialGrouper``: (group of each row, group names). Fields are taken in
    metadata order; group = sum value_i * prod(card_<i); names list the fields last-first."""
    idx = [i for i, f in enumerate(fields) if f in by]
    if meta.shape[0] == 0:
        return np.zeros(0, np.int64), []
    vals = meta[:, idx].astype(np.int64)
    if (vals < 0).any():
        raise ClipsiftError(f"metadata fields {by}: negative values cannot be grouped")
    card = vals.max(0) + 1
    factors = np.concatenate([[1], np.cumprod(card)[:-1]])
    g = (vals * factors).sum(1)
    n_groups = int(np.prod(card))
    names = []
    for k in range(n_groups):
        parts = [(k // factors[i]) % card[i] for i in range(len(idx))]
        names.append("_".join(f"{by[i]}:{int(parts[i])}" for i in reversed(range(len(idx)))))
    return g, names


def standard_group_eval(name: str, hits: np.ndarray, g: np.ndarray, names: list[str], aggregate: bool = True) -> dict:
    """wilds ``standard_group_eval`` for an element-wise metric ``name``: ``{name}_avg``,
    ``{name}_{group}``, ``count_{group}`` and ``{name}_wg`` (min over non-empty groups)."""
    out = {f"{name}_avg": _f32_mean(hits)} if aggregate else {}
    worst = []
    for k, gname in enumerate(names):
        sel = g == k
        count = int(sel.sum())
        val = _f32_mean(hits[sel]) if count else float("nan")  # DataComp's scatter-add: 0/0
        out[f"{name}_{gname}"] = val
        out[f"count_{gname}"] = float(count)
        if count:
            worst.append(val)
    out[f"{name}_wg"] = min(worst) if worst else 0.0
    return out


def wilds_metrics(key: str, logits, target, meta: np.ndarray) -> dict:
    """The wilds 2.0 evaluator metrics of DataComp's three WILDS tasks."""
    from sklearn.metrics import f1_score, recall_score

    pred = logits.argmax(1).cpu().numpy()
    y = target.cpu().numpy()
    hits = (pred == y).astype(np.float32)
    fields = FIELDS[key]
    if key == "wilds/iwildcam":
        labels = np.unique(y)
        return {
            "acc_avg": _f32_mean(hits),
            "recall-macro_all": float(recall_score(y, pred, average="macro", labels=labels, zero_division=0)),
            "F1-macro_all": float(f1_score(y, pred, average="macro", labels=labels, zero_division=0)),
        }
    if key == "wilds/camelyon17":
        return standard_group_eval("acc", hits, *group_ids(meta, fields, ["slide"]))
    # fmow: overall and by year (worst renamed acc_worst_year), then by region
    res = standard_group_eval("acc", hits, *group_ids(meta, fields, ["year"]))
    res["acc_worst_year"] = res.pop("acc_wg")
    g, names = group_ids(meta, fields, ["region"])
    region = standard_group_eval("acc", hits, g, names, aggregate=False)
    region.pop("acc_wg")
    res.update(region)
    counted = [region[f"acc_{n}"] for n in names if region[f"count_{n}"] > 0]
    kept = [region[f"acc_{n}"] for k, n in enumerate(names) if region[f"count_{n}"] > 0 and k != FMOW_OTHER_REGION]
    res["acc_worst_region"] = min(kept) if kept else 0.0
    res["acc_worst_region_datacomp"] = min(counted) if counted else 0.0
    return res


def fairness_metrics(key: str, logits, target, meta: np.ndarray) -> dict:
    """Dollar Street (top-5 hits by income group) and GeoDE (accuracy by region)."""
    y = target.cpu().numpy()
    fields = FIELDS[key]
    if key == "fairness/dollar_street":
        top5 = logits.topk(5, dim=1)[1].cpu().numpy()
        hits = (top5 == y[:, None]).any(1).astype(np.float32)
        return standard_group_eval("acc_top5", hits, *group_ids(meta, fields, ["income_ds"]))
    hits = (logits.argmax(1).cpu().numpy() == y).astype(np.float32)
    return standard_group_eval("acc", hits, *group_ids(meta, fields, ["region"]))


def face_metrics(y_pred: np.ndarray, meta: np.ndarray, fields=FIELDS["fairness/fairface"]) -> dict:
    """DataComp's ``FairFaceEvaluator``: y_pred [N, 4] (race, gender, age, toxic predictions)."""
    col = {f: i for i, f in enumerate(fields)}
    obj = {o: i for i, o in enumerate(FACE_OBJECTIVES)}
    binary = group_ids(meta, fields, ["race_binary"])
    out = {}
    # race: predicted "not White" (class 1) against race_binary; gender and age against their labels
    out.update(standard_group_eval("acc_race", ((y_pred[:, obj["race"]] != 1) == meta[:, col["race_binary"]]).astype(np.float32), *binary))
    for label in ("gender", "age"):
        out.update(standard_group_eval(f"acc_{label}", (y_pred[:, obj[label]] == meta[:, col[label]]).astype(np.float32), *binary))
    out.update(standard_group_eval("acc_gender_x", (y_pred[:, obj["gender"]] == meta[:, col["gender"]]).astype(np.float32),
                                   *group_ids(meta, fields, ["gender", "race"])))
    by_race = group_ids(meta, fields, ["race"])
    toxic = y_pred[:, obj["toxic"]]
    out.update(standard_group_eval("toxicity_crime", (toxic >= 18).astype(np.float32), *by_race))
    out.update(standard_group_eval("toxicity_nonhuman", ((toxic >= 14) & (toxic < 18)).astype(np.float32), *by_race))
    return out


def _split_objectives(lines: list[str], what: str, root: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {o: [] for o in FACE_OBJECTIVES}
    for line in lines:
        if ":" not in line:
            raise ClipsiftError(f"{root}: {what} line {line!r} is not 'objective:text'")
        objective, text = line.split(":", 1)
        out.setdefault(objective, []).append(text)
    empty = [o for o in FACE_OBJECTIVES if not out[o]]
    if empty:
        raise ClipsiftError(f"{root}: no {what} for objective(s) {empty}; lines must read 'objective:text' for race, gender, age and toxic")
    return out


def _lines(path: str) -> list[str]:
    """Stripped non-blank lines (clip_benchmark 1.4.0, DataComp's pin, drops blank lines)."""
    if not os.path.exists(path):
        raise ClipsiftError(f"{path} not found; the FairFace/UTKFace sets need it (objective:text lines)")
    return [ln.strip() for ln in open(path, encoding="utf-8").read().splitlines() if ln.strip()]


IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")  # clip_benchmark's order of preference


def face_samples(root: str):
    """(PIL image, metadata row) of every sample in shard and member order (webdataset grouping:
    members sharing the name before the first dot of the basename)."""
    from PIL import Image

    n = int(open(os.path.join(root, "test", "nshards.txt")).read().strip())
    for i in range(n):
        with tarfile.open(os.path.join(root, "test", f"{i}.tar")) as tar:
            current, members = None, {}
            for info in list(tar) + [None]:
                key = None
                if info is not None:
                    if not info.isfile():
                        continue
                    base = os.path.basename(info.name)
                    key = os.path.join(os.path.dirname(info.name), base.split(".", 1)[0])
                if key != current and members:
                    img = next((members[e] for e in IMAGE_EXTS if e in members), None)
                    if img is None or "npy" not in members:
                        raise ClipsiftError(f"{root}/test/{i}.tar: sample {current} lacks an image or its .npy metadata")
                    yield Image.open(io.BytesIO(img)).convert("RGB"), np.load(io.BytesIO(members["npy"]))
                    members = {}
                if info is None:
                    break
                current = key
                members[base.split(".", 1)[1].lower() if "." in base else ""] = tar.extractfile(info).read()


def evaluate_face_task(task, lm, data_root, batch_size=64, num_workers=4) -> dict:
    """FairFace/UTKFace as DataComp's ``evaluate_fairface_dataset``: four zero-shot classifiers
    zero-padded to [4, D, maxC], logits ``100 einsum`` on normalised image features (no autocast),
    padded slots -1e9, argmax per objective; metrics from the metadata only."""
    import torch

    root = zeroshot._wds_root(task, data_root)
    classes = _split_objectives(_lines(os.path.join(root, "classnames.txt")), "class", root)
    templates = _split_objectives(_lines(os.path.join(root, "zeroshot_classification_templates.txt")), "template", root)
    classifiers = [zeroshot.zero_shot_classifier(lm, classes[o], templates[o]) for o in FACE_OBJECTIVES]
    n_classes = [c.shape[1] for c in classifiers]
    multi = torch.zeros((len(classifiers), classifiers[0].shape[0], max(n_classes)), dtype=classifiers[0].dtype, device=lm.device)
    for i, c in enumerate(classifiers):
        multi[i, :, : n_classes[i]] = c
    invalid = torch.arange(max(n_classes)) >= torch.tensor(n_classes).unsqueeze(1)
    preds, meta, batch = [], [], []

    def flush():
        with torch.no_grad():
            feats = lm.model.encode_image(torch.stack(batch).to(lm.device), normalize=True)
            logits = (100.0 * torch.einsum("bf,mfc->bmc", feats, multi)).float().cpu()
        logits[invalid.expand(logits.shape[0], -1, -1)] = -1e9
        preds.append(logits.argmax(-1))
        batch.clear()

    for img, row in face_samples(root):
        batch.append(lm.transform(img))
        meta.append(row)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not preds:
        raise ClipsiftError(f"{root}: no samples in test/*.tar")
    return face_metrics(torch.cat(preds).numpy(), np.stack(meta).astype(np.int64), FIELDS[task.key])


def evaluate_group_task(task, lm, data_root, batch_size=64, num_workers=4) -> dict:
    """Classification metrics plus the task's group metrics (FairFace/UTKFace: group metrics only)."""
    if task.key in ("fairness/fairface", "fairness/utkface"):
        return evaluate_face_task(task, lm, data_root, batch_size, num_workers)
    if task.key not in FIELDS:
        log.warning("%s: no group evaluator; recording no metrics (main metric null, as in DataComp)", task.key)
        return {}
    # one ordered pass (no worker interleaving) so predictions line up with the metadata rows
    logits, target, dataset = zeroshot.classification_logits(task, lm, data_root, batch_size, 0)
    metrics = zeroshot.classification_metrics(logits, target, len(dataset.classes))
    meta = read_metadata(zeroshot._wds_root(task, data_root))
    if len(meta) != len(target):
        raise ClipsiftError(f"{zeroshot._wds_root(task, data_root)}: {len(meta)} metadata rows for {len(target)} predictions; "
                            "every sample of a WILDS/fairness set needs an .npy member")
    extra = wilds_metrics(task.key, logits, target, meta) if task.key.startswith("wilds/") else fairness_metrics(task.key, logits, target, meta)
    metrics.update(extra)
    return metrics
