"""DataComp's ``clip_score`` filter: ``score >= T`` on the B/32 or L/14 CLIP-score column, with T
given (``threshold``) or derived from ``fraction`` by DataComp's index rule (ties kept, NaN last)."""

from __future__ import annotations

from clipsift.baselines.common import BaselineFilter, float_column
from clipsift.baselines.scores import SCORE_COLUMNS, at_least
from clipsift.errors import ParamError
from clipsift.filter import RunContext
from clipsift.kth import fraction_cut
from clipsift.params import Param

ARCH_PARAM = Param("arch", str, None, "which CLIP score: b32 (clip_b32_similarity_score) or l14", choices=("b32", "l14"))
THRESHOLD_PARAM = Param("threshold", float, None, "keep score >= threshold (compared in the column's dtype)")
FRACTION_PARAM = Param("fraction", float, None, "threshold = the (int(N*fraction)+1)-th largest score; ties kept")


def check_score_params(owner) -> None:
    """DataComp's check_args for names containing ``clip_score``."""
    if owner.fraction is None and owner.threshold is None:
        raise ParamError(f"{owner.name}: give fraction or threshold (DataComp: --fraction or --threshold)")
    if owner.fraction is not None and owner.threshold is not None:
        raise ParamError(f"{owner.name}: give either fraction or threshold, not both")
    if owner.arch is None:
        raise ParamError(f"{owner.name}: give arch=b32 or arch=l14")


def resolve_threshold(owner, ctx: RunContext, key: str) -> tuple[object, dict]:
    """T for ``owner.threshold``/``owner.fraction`` over the candidate rows (the whole pool in DataComp)."""
    if owner.fraction is None:
        return owner.threshold, {"threshold": owner.threshold}
    # exact distributed selection: no process holds every score (clipsift.kth)
    return fraction_cut(ctx, _FractionReader(key), owner.fraction, (key,), f"{owner.name}: threshold")


class _FractionReader:
    def __init__(self, key):
        self.key = key

    def __call__(self, batch):
        return float_column(batch, self.key)


class ClipScoreFilter(BaselineFilter):
    name = "clip_score"
    description = "DataComp clip_score: CLIP score >= threshold, or the top fraction by DataComp's index rule."
    params = (ARCH_PARAM, THRESHOLD_PARAM, FRACTION_PARAM)

    def validate(self) -> None:
        check_score_params(self)

    @property
    def key(self) -> str:
        return SCORE_COLUMNS[self.arch]

    def input_columns(self):
        return ("uid", self.key)

    def prepare(self, ctx: RunContext) -> dict:
        """The threshold: given, or DataComp's fraction cut over the candidates (a global step)."""
        self.threshold_value, details = resolve_threshold(self, ctx, self.key)
        return {"score_column": self.key, **details}

    def keep(self, batch):
        mask = at_least(float_column(batch, self.key), self.threshold_value)
        return mask, {"score": int(len(mask) - mask.sum())}
