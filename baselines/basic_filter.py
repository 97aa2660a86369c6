"""DataComp's ``basic_filter``: English captions of more than 2 words and 5 characters, images with
a short side of at least 200 px and an aspect ratio of at most 3.

Language ID is the cost (one fastText call per caption), so it runs last and as few times as the
output allows: the cheap rules run per shard in the workers, which send back the distinct
LF-replaced captions of the rows still alive, grouped into buckets by a hash of their bytes. Each
bucket (of a block of shards) then goes to one worker, which de-duplicates it and asks fastText:
one call per caption distinct in the block, and no central de-duplication.
"""

from __future__ import annotations

from collections import Counter
from functools import partial

import numpy as np
import pyarrow.compute as pc

from clipsift.baselines.common import (
    LID_PARAM,
    BaselineFilter,
    and_mask,
    float_column,
    take,
    text_column,
)
from clipsift.baselines.langid import (
    FastTextLID,
    dictionary_indices,
    english_by_bucket,
    english_mask,
    group_by_bucket,
)
from clipsift.baselines.textstats import char_counts, split_word_counts
from clipsift.filter import RunContext, Selection, row_counters

BLOCK_CAPTIONS = 2_000_000  # per-shard distinct captions held by the main process per language-ID round
LID_BUCKETS = 32  # language-ID tasks per round (several per worker for an even finish); never changes the answer


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

    def _cheap_steps(self, batch, text):
        w = float_column(batch, "original_width")
        h = float_column(batch, "original_height")
        return [
            ("image_size", lambda idx: image_size_mask(w[idx], h[idx])),
            ("words", lambda idx: split_word_counts(take(text, idx)) > 2),
            ("chars", lambda idx: char_counts(take(text, idx)) > 5),
        ]

    def keep(self, batch):
        """The rule row by row, language ID within the shard (``select`` runs the same rule with
        the language ID batched over distinct captions across shards)."""
        dropped_by = Counter()
        text = text_column(batch)
        steps = self._cheap_steps(batch, text) + [("language", lambda idx: english_mask(take(text, idx), self.lid()))]
        return and_mask(steps, len(batch), dropped_by), dropped_by

    def cheap_rules(self, parts: int, batch):
        """Every rule but language ID, on one shard.

        Returns (uids of the rows still alive, their distinct LF-replaced captions grouped into
        ``parts`` buckets, the count per bucket, each alive row's index into those captions,
        rows dropped per rule, rows seen).
        """
        dropped_by = Counter()
        text = text_column(batch)
        idx = np.flatnonzero(and_mask(self._cheap_steps(batch, text), len(batch), dropped_by))
        enc = pc.dictionary_encode(pc.replace_substring(take(text, idx), "\n", " "))
        captions, counts, where = group_by_bucket(enc.dictionary, parts)
        return batch.uids[idx], captions, counts, where[dictionary_indices(enc)], dropped_by, len(batch)

    def select(self, ctx: RunContext) -> Selection:
        details = self.prepare(ctx)
        lid = self.lid(memoize=False)  # captions arrive distinct across the block
        if isinstance(lid, FastTextLID):
            lid.load()
        parts = LID_BUCKETS  # fixed: a filter never reads the executor's worker count
        sorter = ctx.uid_sorter(ctx.num_candidates, self.name)
        dropped_by, block, seen, identified = Counter(), [], 0, 0

        def identify():
            nonlocal identified
            flags = english_by_bucket([(b[1], b[2]) for b in block], lid, ctx.executor)
            for (uids, _, _, rows), english in zip(block, flags):
                keep = english[rows]
                sorter.add(uids[keep])
                dropped_by["language"] += int(len(keep) - keep.sum())
            identified += sum(len(b[1]) for b in block)
            block.clear()

        held = 0
        step = partial(self.cheap_rules, parts)
        for uids, captions, counts, rows, c, n in ctx.map_shards(step, columns=self.input_columns(), desc=self.name):
            dropped_by.update(c)
            seen += n
            block.append((uids, captions, counts, rows))
            held += len(captions)
            if held >= BLOCK_CAPTIONS:
                identify()
                held = 0
        identify()
        counters = row_counters(seen, sorter.count, dropped_by, language_id_captions=identified)
        return Selection(sorter=sorter, counters=counters, details=details)
