"""DataComp's ``text_based`` filter: English captions with a word whose first WordNet synset is an
ImageNet-21k class.

Words are ``text.split()`` tokens as they are (``dog,`` is not ``dog``); the offset is compared
without its part of speech, so verbs and adjectives whose offset equals an ImageNet-21k noun
offset count, as in DataComp. Each distinct word is looked up once per process.

Offsets are Princeton WordNet 3.0's (what ``nltk.download("wordnet")`` installs, which DataComp
reads): by default Debian's ``wordnet-base`` files corrected to Princeton's bytes and sha256-checked
(see :mod:`clipsift.baselines.wordnet` and docs/wordnet.md); a ``wordnet_dir`` holding nltk's files
is used as it is.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow.compute as pc

from clipsift.baselines import assets
from clipsift.baselines.common import LID_PARAM, BaselineFilter, and_mask, take, text_column
from clipsift.baselines.langid import dictionary_indices, english_mask
from clipsift.baselines.textstats import any_per_row, split_tokens
from clipsift.baselines.wordnet import WordNet
from clipsift.filter import RunContext
from clipsift.params import Param

_ENTITIES: dict[str | None, frozenset[int]] = {}
_HITS: dict[tuple, dict[str, bool]] = {}


def entity_set(path: str | None) -> frozenset[int]:
    if path not in _ENTITIES:
        _ENTITIES[path] = assets.load_in21k_ids(path)
    return _ENTITIES[path]


def entity_hits(words, wordnet_dir: str | None, in21k_ids: str | None) -> np.ndarray:
    """Per word: is the offset of its first synset in the ImageNet-21k set? (memoised per word)"""
    wn = WordNet.load(wordnet_dir)
    entities = entity_set(in21k_ids)
    memo = _HITS.setdefault((str(wn.root), in21k_ids), {})
    enc = pc.dictionary_encode(words)
    distinct = enc.dictionary.to_pylist()
    flags = np.empty(len(distinct), dtype=bool)
    for i, w in enumerate(distinct):
        hit = memo.get(w)
        if hit is None:
            hit = memo[w] = wn.first_offset(w) in entities
        flags[i] = hit
    return flags[dictionary_indices(enc)] if len(distinct) else np.zeros(len(words), dtype=bool)


class TextBasedFilter(BaselineFilter):
    name = "text_based"
    description = "DataComp text_based: fastText English and a caption word whose first WordNet synset is an ImageNet-21k class."
    params = (
        LID_PARAM,
        Param(
            "wordnet_dir", str, None,
            "Princeton WordNet 3.0 as nltk installs it (folder, nltk_data root or wordnet.zip), used as is; "
            "default /usr/share/wordnet (Debian wordnet-base) corrected to Princeton's offsets, sha256-checked",
        ),
        Param("in21k_ids", str, None, "ImageNet-21k synset list; default timm's imagenet21k_goog_synsets.txt (sha256-checked)"),
    )
    columns = ("uid", "text")

    def prepare(self, ctx: RunContext) -> dict:
        wn = WordNet.load(self.wordnet_dir)  # fail early, and forked workers inherit the parsed index
        entities = entity_set(self.in21k_ids)
        return {**self.describe_lid(), "wordnet_dir": str(wn.root), "wordnet": wn.provenance, "entities": len(entities)}

    def _entity_rows(self, text, idx):
        words, rows = split_tokens(take(text, idx))
        return any_per_row(entity_hits(words, self.wordnet_dir, self.in21k_ids), rows, len(idx))

    def keep(self, batch):
        dropped_by = Counter()
        text = text_column(batch)
        steps = [
            ("entity", lambda idx: self._entity_rows(text, idx)),
            ("language", lambda idx: english_mask(take(text, idx), self.lid())),
        ]
        return and_mask(steps, len(batch), dropped_by), dropped_by
