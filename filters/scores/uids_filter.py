"""``uids`` filter: a released uid list (a subset someone published) as a step of a recipe.

``mode=keep`` keeps the candidates whose uid is in the list (intersect it with other steps with a
chain or an ``intersect`` combination; ``union`` adds it); ``mode=drop`` removes them (e.g. a
decontamination list). With ``repeats=true`` a uid listed m times is written m times, as the
resharder copies it. The list is joined to the pool by uid in bounded memory; its uids that are
not candidates are counted in the manifest.
"""

from __future__ import annotations

import numpy as np

from clipsift.errors import ParamError
from clipsift.filter import Filter, RunContext, Selection
from clipsift.filters.scores.join import uid_list_join
from clipsift.params import Param


def select_listed(uids: np.ndarray, counts: np.ndarray, mode: str, repeats: bool) -> np.ndarray:
    """Per bucket (pure): the candidate uids the list selects."""
    if mode == "drop":
        return uids[counts == 0]
    if repeats:
        return np.repeat(uids, counts)
    return uids[counts > 0]


class UidsFilter(Filter):
    name = "uids"
    description = "Keep (or drop) the candidates listed in a uid file: .npy subset, raw records, parquet uid column or text."
    params = (
        Param("uids", str, None, "uid list: DataComp .npy (u8,u8) or raw 16-byte records, a parquet (file/folder) with uid, or .txt hex lines"),
        Param("mode", str, "keep", "keep the listed candidates, or drop them", choices=("keep", "drop")),
        Param("repeats", bool, False, "mode=keep: a uid listed m times is written m times"),
    )
    columns = ("uid",)

    def validate(self) -> None:
        if not self.uids:
            raise ParamError("uids: give uids=PATH (a .npy subset, a parquet with a uid column, or a text file of uids)")
        if self.repeats and self.mode == "drop":
            raise ParamError("uids: repeats=true only applies with mode=keep")

    def select(self, ctx: RunContext) -> Selection:
        buckets, stats, close = uid_list_join(ctx, self.uids, unsorted_ok=True)
        sorter = ctx.uid_sorter(ctx.num_candidates, self.name)
        seen = listed = 0
        try:
            for uids, counts in buckets:
                seen += len(uids)
                listed += int(np.count_nonzero(counts))
                sorter.add(select_listed(uids, counts, self.mode, self.repeats))
        except BaseException:
            sorter.close()
            raise
        finally:
            close()
        kept = sorter.count
        counters = {"input": seen, "listed_candidates": listed, "kept": kept, "dropped": seen - (listed if self.mode == "keep" else seen - listed), **stats}
        return Selection(sorter=sorter, counters=counters, details={"uids": str(self.uids), "mode": self.mode, "repeats": self.repeats})
