"""``negclip_normsim`` filter: the two-stage rule of Wang et al. 2024 (``load_uids_with_cs_new``).

Stage 1 keeps n1 = int(N_pool * fraction) rows by negCLIPLoss (or score >= threshold); stage 2 keeps,
among those, n2 = int(N_pool * fraction_normsim) by NormSim -- a fraction of the POOL, not of the
survivors. fraction_normsim == fraction (or unset) skips stage 2 without loading any target;
fraction_normsim > fraction is an error; n = 0 selects nothing. NormSim is computed on the stage-1
survivors only (same result as scoring everyone). ``preset`` fills every parameter not given from
``recipes/negclip_<preset>.toml`` (the paper's small / medium / dynamic recipes).
"""

from __future__ import annotations

import tomllib
from importlib import resources

import numpy as np

from clipsift.budget import fraction_count
from clipsift.candidates import CandidateRows
from clipsift.errors import ParamError
from clipsift.filter import Filter, RunContext, Selection, row_counters
from clipsift.filters.negclip.negclip import ARCHES, NEGCLIP_PARAMS, negclip_scorer
from clipsift.filters.negclip.negclip_pass import KeptRows, release, score_pool
from clipsift.filters.negclip.normsim import NORMSIM_PARAMS, check_normsim_params, run_normsim
from clipsift.filters.negclip.rank import select_streamed
from clipsift.params import Param

PRESETS = ("small", "medium", "dynamic")


def preset_params(name: str) -> dict:
    """The ``params`` table of the shipped recipe ``recipes/negclip_<name>.toml``."""
    if name not in PRESETS:
        raise ParamError(f"negclip_normsim: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("clipsift.filters").joinpath("recipes", f"negclip_{name}.toml").read_text(encoding="utf-8")
    steps = tomllib.loads(text)["step"]
    return dict(steps[0]["params"])


class NegClipNormSimFilter(Filter):
    name = "negclip_normsim"
    description = "negCLIPLoss top fraction, then NormSim top fraction_normsim of the pool (Wang et al. 2024); presets small/medium/dynamic."
    params = (
        Param("preset", str, None, "fill unset parameters from a paper recipe: small, medium or dynamic", choices=PRESETS),
        Param("fraction", float, None, "stage 1: keep int(N_pool*fraction) rows by negCLIPLoss", min=0.0, max=1.0),
        Param("threshold", float, None, "stage 1: keep rows with score >= threshold instead"),
        Param("fraction_normsim", float, None, "stage 2: keep int(N_pool*fraction_normsim) survivors by NormSim (fraction of the pool)", min=0.0, max=1.0),
        Param("threshold_normsim", float, None, "stage 2: keep survivors with NormSim >= threshold instead"),
        Param("stage1", str, "negclip", "stage-1 score: negclip, or clip_score (the parquet column; reference if_use_old_cs)", choices=("negclip", "clip_score")),
        Param("arch", str, "l14", "embeddings for NormSim and the clip_score column: l14 or b32", choices=ARCHES),
        Param("arch_ncl", str, None, "embeddings for negCLIPLoss (default: arch)", choices=ARCHES),
        *NEGCLIP_PARAMS,
        *NORMSIM_PARAMS,
    )

    def __init__(self, **params):
        if params.get("preset") is not None:
            params = {**preset_params(params["preset"]), **params}
        super().__init__(**params)

    def validate(self) -> None:
        owner = "negclip_normsim"
        if (self.fraction is None) == (self.threshold is None):
            raise ParamError(f"{owner}: give exactly one of fraction or threshold (or preset=)")
        if self.fraction_normsim is not None and self.threshold_normsim is not None:
            raise ParamError(f"{owner}: give at most one of fraction_normsim or threshold_normsim")
        if self.fraction is not None and self.fraction_normsim is not None and self.fraction_normsim > self.fraction:
            raise ParamError(f"{owner}: fraction_normsim={self.fraction_normsim} exceeds fraction={self.fraction}; both are fractions of the pool")
        if self.norm == "dynamic" and self.threshold_normsim is not None:
            raise ParamError(f"{owner}: norm=dynamic selects by fraction_normsim; drop threshold_normsim=")
        if self.runs_stage2():
            check_normsim_params(self, owner)

    def runs_stage2(self) -> bool:
        if self.threshold_normsim is not None:
            return True
        return self.fraction_normsim is not None and self.fraction_normsim != self.fraction

    def input_columns(self) -> tuple[str, ...]:
        return (f"clip_{self.arch}_similarity_score",) if self.stage1 == "clip_score" else ()

    def input_keys(self) -> tuple[str, ...]:
        ncl = self.arch_ncl or self.arch
        keys = () if self.stage1 == "clip_score" else (f"{ncl}_img", f"{ncl}_txt")
        return keys + ((f"{self.arch}_img",) if self.runs_stage2() and f"{self.arch}_img" not in keys else ())

    def select(self, ctx: RunContext) -> Selection:
        stage2 = self.runs_stage2()
        pool_target = stage2 and self.norm == "dynamic" and self.init_target == "pool"
        scorer = negclip_scorer(
            self, ctx, self.arch_ncl or self.arch,
            column=f"clip_{self.arch}_similarity_score" if self.stage1 == "clip_score" else None,
            moment_key=f"{self.arch}_img" if pool_target else None,
            moment_subsample=self.sigma_subsample,
        )
        res = score_pool(ctx, scorer, all_rows=self.score_all_rows, desc=self.stage1)
        n_pool = len(res)
        survivors = KeptRows(ctx, f"{self.name}-stage1", n_pool, with_scores=getattr(self, "keep_scores", False) and not stage2)
        try:
            kept1 = select_streamed(res.parts, n_pool, survivors.add, lambda: ctx.uid_sorter(0, f"{self.name}-ties"),
                                    fraction=self.fraction, threshold=self.threshold, owner=self.name)
        finally:
            release(ctx, res)
        counters = row_counters(n_pool, kept1.n, stage1_kept=kept1.n)
        details = {"device": ctx.torch_device(), "stage1": self.stage1, "score_stage1_kept": kept1.summary()}
        if not stage2 or kept1.n == 0:
            counters.update(stage2="skipped" if not stage2 else "empty")
            return survivors.selection(counters, details)
        count = None if self.fraction_normsim is None else fraction_count(n_pool, self.fraction_normsim)
        if count is not None and count > kept1.n:
            self.log.warning("stage 1 kept %d rows, fewer than fraction_normsim asks (%d); keeping all of them", kept1.n, count)
            count = kept1.n
        stage1 = survivors.selection(counters, details)
        cands = CandidateRows.from_sorted_uids(ctx, stage1.sorted_chunks(), ctx.scratch_url("candidates"), expected=kept1.n)
        uids, vals, more = run_normsim(self, ctx.with_candidates(cands), count=count, threshold=self.threshold_normsim, initial=res.moment)
        counters.update(stage2_kept=len(uids), kept=len(uids), dropped=n_pool - len(uids))
        details.update(norm=self.norm, **more)
        return Selection(uids, counters=counters, details=details, scores=None if vals is None else np.asarray(vals))
