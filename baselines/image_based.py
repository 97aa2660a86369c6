"""DataComp's ``image_based`` and ``image_based_intersect_clip_score`` filters.

Set-up (main process): target = the distinct centroids that ImageNet-1k L/14 embeddings are
assigned to. Per shard: (intersect only: ``score >= T``), then the caption filter (fastText English,
more than 1 fastText token on the original text, more than 5 characters), then keep a row iff its
``l14_img`` embedding is assigned to a target centroid.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np

from clipsift.baselines import assets
from clipsift.baselines.centroids import assign
from clipsift.baselines.clip_score import (
    ARCH_PARAM,
    FRACTION_PARAM,
    THRESHOLD_PARAM,
    check_score_params,
    resolve_threshold,
)
from clipsift.baselines.common import (
    LID_PARAM,
    BaselineFilter,
    and_mask,
    float_column,
    take,
    text_column,
)
from clipsift.baselines.langid import english_mask
from clipsift.baselines.scores import SCORE_COLUMNS, at_least
from clipsift.baselines.textstats import char_counts, fasttext_token_counts
from clipsift.devices import task_resources
from clipsift.errors import ParamError
from clipsift.filter import RunContext
from clipsift.io import atomic_write
from clipsift.params import Param

_CENTROIDS: dict[str, np.ndarray] = {}  # per process; filled before workers fork so they share it


def shared_centroids(path: str) -> np.ndarray:
    if path not in _CENTROIDS:
        _CENTROIDS[path] = np.load(path)
    return _CENTROIDS[path]


def caption_steps(text, lid):
    """DataComp's caption filter as ordered (name, mask-over-rows) rules, cheapest first."""
    return [
        ("tokens", lambda idx: fasttext_token_counts(take(text, idx)) > 1),
        ("chars", lambda idx: char_counts(take(text, idx)) > 5),
        ("language", lambda idx: english_mask(take(text, idx), lid)),
    ]


class ImageBasedFilter(BaselineFilter):
    name = "image_based"
    description = "DataComp image_based: caption filter, then keep images whose nearest pool centroid (inner product) is an ImageNet-1k centroid."
    params = (
        Param("centroids", str, None, "pool centroids file (DataComp's {scale}_centroids_l14.pt, or clipsift build-centroids output)"),
        Param("targets", str, None, "folder with DataComp's in1k_clip_vit_l14_{0..4}.pt, or FILE[,FILE...] of [n, 768] embeddings"),
        Param("image_based_scale", str, None, "DataComp scale whose released centroids `centroids` must be (sha256-checked)", choices=assets.SCALES),
        Param("batch_size", int, 1024, "rows per assignment block (DataComp: 1024; the same blocks give the same rounding)", min=1),
        LID_PARAM,
    )
    columns = ("uid", "text")
    embedding_keys = ("l14_img",)
    requires = ("torch",)

    def validate(self) -> None:
        if self.centroids is None or self.targets is None:
            raise ParamError(
                f"{self.name}: give centroids=PATH and targets=DIR (DataComp's {{scale}}_centroids_l14.pt and "
                "in1k_clip_vit_l14_{0..4}.pt from github.com/sagadre/datacomp_baseline_assets, or your own)"
            )

    def score_key(self) -> str | None:
        return None

    def input_columns(self):
        key = self.score_key()
        return ("uid", "text") + ((key,) if key else ())

    def prepare(self, ctx: RunContext) -> dict:
        details = self.describe_lid()
        centroids, c_verified = assets.load_centroids(self.centroids, self.image_based_scale)
        targets, t_verified = assets.load_targets(self.targets)
        if targets.shape[1] != centroids.shape[1]:
            raise ParamError(f"{self.targets}: target dim {targets.shape[1]} != centroid dim {centroids.shape[1]} of {self.centroids}")
        self.device = ctx.torch_device()
        target_ids = np.unique(assign(targets, centroids, self.device, self.batch_size))
        # named by content: a reused workdir, a concurrent run or a long-lived worker's
        # _CENTROIDS (keyed by the path) never sees another run's centroids
        digest = hashlib.blake2b(np.ascontiguousarray(centroids).tobytes(), digest_size=10).hexdigest()
        path = Path(ctx.workdir) / f"{self.name}-centroids-{digest}.npy"
        if not path.exists():
            with atomic_write(path) as fh:
                np.save(fh, centroids)
        self.centroid_file = str(path)
        _CENTROIDS[self.centroid_file] = centroids
        self.target_ids = target_ids
        self.threshold_value = None
        key = self.score_key()
        if key:
            self.threshold_value, tdetails = resolve_threshold(self, ctx, key)
            details.update(tdetails, score_column=key)
        details.update(
            num_centroids=int(centroids.shape[0]),
            centroids_datacomp=c_verified,
            num_target_embeddings=int(targets.shape[0]),
            targets_datacomp=t_verified,
            num_target_centroids=int(len(target_ids)),
            device=self.device,
        )
        return details

    def task_resources(self) -> dict | None:
        return task_resources(self.device)

    def keep(self, batch):
        dropped_by = Counter()
        text = text_column(batch)
        steps = []
        key = self.score_key()
        if key:
            score = float_column(batch, key)
            steps.append(("score", lambda idx: at_least(score[idx], self.threshold_value)))
        steps += caption_steps(text, self.lid())
        alive = and_mask(steps, len(batch), dropped_by)
        idx = np.flatnonzero(alive)
        labels = assign(batch.embeddings["l14_img"][idx], shared_centroids(self.centroid_file), self.device, self.batch_size)
        hit = np.isin(labels, self.target_ids)
        dropped_by["centroid"] += int(len(idx) - hit.sum())
        alive[idx[~hit]] = False
        return alive, dropped_by


class ImageBasedIntersectClipScoreFilter(ImageBasedFilter):
    name = "image_based_intersect_clip_score"
    description = "DataComp image_based_intersect_clip_score: CLIP score >= T (threshold or fraction), then image_based."
    params = ImageBasedFilter.params + (ARCH_PARAM, THRESHOLD_PARAM, FRACTION_PARAM)

    def validate(self) -> None:
        check_score_params(self)
        super().validate()

    def score_key(self) -> str | None:
        return SCORE_COLUMNS[self.arch]
