"""DataComp's ``laion2b`` reproduction: gcld3 says English and the B/32 CLIP score is >= 0.28."""

from __future__ import annotations

from collections import Counter

from clipsift.baselines.common import BaselineFilter, and_mask, float_column, take, text_column
from clipsift.baselines.langid import Gcld3LID, english_mask
from clipsift.baselines.scores import SCORE_COLUMNS, at_least
from clipsift.filter import RunContext

LAION_THRESHOLD = 0.28  # a Python float: compared in the score column's dtype, as in DataComp


class Laion2bFilter(BaselineFilter):
    name = "laion2b"
    description = "DataComp laion2b: gcld3 English and clip_b32_similarity_score >= 0.28 (needs the laion2b extra)."
    columns = ("uid", "text", SCORE_COLUMNS["b32"])

    def lid(self):
        return self.language_id if self.language_id is not None else Gcld3LID()

    def prepare(self, ctx: RunContext) -> dict:
        self.lid()  # one line naming the install when gcld3 is missing
        return {"language_id": "gcld3" if self.language_id is None else type(self.language_id).__name__, "threshold": LAION_THRESHOLD}

    def keep(self, batch):
        dropped_by = Counter()
        text = text_column(batch)
        score = float_column(batch, SCORE_COLUMNS["b32"])
        steps = [
            ("score", lambda idx: at_least(score[idx], LAION_THRESHOLD)),
            ("language", lambda idx: english_mask(take(text, idx), self.lid())),
        ]
        return and_mask(steps, len(batch), dropped_by), dropped_by
