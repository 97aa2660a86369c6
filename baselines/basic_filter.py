"""DataComp's ``basic_filter``: English captions of more than 2 words and 5 characters, images with
a short side of at least 200 px and an aspect ratio of at most 3."""

from __future__ import annotations

from collections import Counter

import numpy as np

from clipsift.baselines.common import LID_PARAM, BaselineFilter, and_mask, float_column, text_column
from clipsift.baselines.langid import english_mask
from clipsift.baselines.textstats import char_counts, split_word_counts
from clipsift.filter import RunContext


def image_size_mask(width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """``min(w,h) >= 200`` and ``max(w,h)/min(w,h) <= 3.0`` in float64; nulls/NaN and 0 drop."""
    w = np.asarray(width, dtype=np.float64)
    h = np.asarray(height, dtype=np.float64)
    lo, hi = np.minimum(w, h), np.maximum(w, h)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (lo >= 200) & (hi / lo <= 3.0)


class BasicFilter(BaselineFilter):
    name = "basic_filter"
    description = "DataComp basic_filter: fastText English, >2 words, >5 chars, min side >=200 px, aspect <=3."
    params = (LID_PARAM,)
    columns = ("uid", "text", "original_width", "original_height")

    def prepare(self, ctx: RunContext) -> dict:
        return self.describe_lid()

    def shard(self, batch):
        counters = Counter(input=len(batch))
        text = text_column(batch)
        w = float_column(batch, "original_width")
        h = float_column(batch, "original_height")
        steps = [
            ("image_size", lambda idx: image_size_mask(w[idx], h[idx])),
            ("words", lambda idx: split_word_counts(text.take(idx)) > 2),
            ("chars", lambda idx: char_counts(text.take(idx)) > 5),
            ("language", lambda idx: english_mask(text.take(idx), self.lid())),
        ]

        keep = and_mask(steps, len(batch), counters)
        return batch.uids[keep], counters
