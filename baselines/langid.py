"""Language identification behind one small interface, so filters can take a fake in tests.

A language identifier maps a list of captions to a list of language codes. DataComp replaces each
``"\\n"`` (only LF) by a space before asking the model; :func:`english_mask` does that, asks the
model once per DISTINCT caption, and maps the answers back to rows. :func:`english_by_bucket`
does the same for the captions of many shards at once, in parallel, asking once per caption
distinct in the whole job.

* :class:`FastTextLID` — fastText ``lid.176`` (``.bin`` = DataComp's model, ``.ftz`` = the bundled
  quantised variant), loaded through ``fasttext-predict``. Its Python ``predict(list)`` is broken
  (it unpacks labels and probabilities, the native call returns labels only), so the native
  ``multilinePredict`` is called directly: one C++ call per batch, each line predicted on its own
  exactly as ``predict(line)`` (k=1, threshold 0, as DataComp).
* :class:`Gcld3LID` — Google's CLD3 (``gcld3``), used only by ``laion2b``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import partial
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipsift.baselines.textstats import string_buffers
from clipsift.errors import MissingDependencyError

_MODELS: dict[str, object] = {}  # per-process cache: a model is loaded once, not once per shard
_MEMO: dict[str, dict[str, str]] = {}  # model path -> caption -> label
_MEMO_MAX = 2_000_000


class LanguageIdentifier(Protocol):
    """``predict(texts)`` returns one language code (e.g. ``"en"``) per text; texts hold no LF."""

    def predict(self, texts: Sequence[str]) -> list[str]: ...


class FastTextLID:
    """fastText language ID, exactly as DataComp calls it (top-1 label, ``__label__`` stripped).

    ``memoize`` keeps a per-process caption -> label memo across calls (shards); turn it off when
    the texts are already distinct across the whole job (see :func:`english_by_bucket`).
    """

    def __init__(self, path: str, memoize: bool = True):
        self.path = str(path)
        self.memoize = memoize

    def _model(self):
        model = _MODELS.get(self.path)
        if model is None:
            if importlib.util.find_spec("fasttext") is None:
                raise MissingDependencyError("fastText is not installed; pip install fasttext-predict")
            import fasttext

            fasttext.FastText.eprint = lambda *a, **k: None
            model = _MODELS[self.path] = fasttext.load_model(self.path)
        return model

    def load(self) -> None:
        """Load the model now; processes forked afterwards share it instead of each reading it."""
        self._model()

    def _labels(self, texts: Sequence[str]) -> list[str]:
        # the wrapper's predict(t) is the native predict on t + "\n" (plus checks); multilinePredict
        # runs exactly that per line and returns only the labels
        labels = self._model().f.multilinePredict([t + "\n" for t in texts], 1, 0.0, "strict")
        return [lab[0].split("__label__")[1] for lab in labels]

    def predict(self, texts: Sequence[str]) -> list[str]:
        """Top-1 label per text; with ``memoize``, answers are kept per process (bounded)."""
        if not self.memoize:
            return self._labels(texts)
        memo = _MEMO.setdefault(self.path, {})
        if len(memo) > _MEMO_MAX:
            memo.clear()
        out = list(map(memo.get, texts))
        miss = [t for t, label in zip(texts, out) if label is None]
        if miss:
            memo.update(zip(miss, self._labels(miss)))
            out = list(map(memo.__getitem__, texts))
        return out

    def __getstate__(self):
        return {"path": self.path, "memoize": self.memoize}


class Gcld3LID:
    """CLD3 with DataComp's settings: ``min_num_bytes=0, max_num_bytes=1000``, no reliability check."""

    def __init__(self):
        if importlib.util.find_spec("gcld3") is None:
            raise MissingDependencyError(
                "laion2b needs gcld3: apt-get install protobuf-compiler libprotobuf-dev && pip install 'clipsift[laion2b]'"
            )

    def predict(self, texts: Sequence[str]) -> list[str]:
        model = _MODELS.get("gcld3")
        if model is None:
            import gcld3

            model = _MODELS["gcld3"] = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
        return [model.FindLanguage(text=t).language for t in texts]


def _as_string_array(texts) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not isinstance(texts, pa.Array):
        texts = pa.array(list(texts), type=pa.string())
    return texts


def dictionary_indices(enc: pa.DictionaryArray) -> np.ndarray:
    """The int32 indices of a null-free ``dictionary_encode`` result, read from their buffer
    (pyarrow's ``to_numpy`` imports pandas, 0.3 s in every worker process)."""
    ind = enc.indices
    return np.frombuffer(ind.buffers()[1], dtype=np.int32)[ind.offset : ind.offset + len(ind)]


def languages(texts, lid: LanguageIdentifier) -> np.ndarray:
    """Language code per row (object array), asking ``lid`` once per distinct LF-replaced caption."""
    arr = _as_string_array(texts)
    if len(arr) == 0:
        return np.empty(0, dtype=object)
    enc = pc.dictionary_encode(pc.replace_substring(arr, "\n", " "))
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    distinct = enc.dictionary.to_pylist()
    codes = np.asarray(lid.predict(distinct), dtype=object)
    return codes[dictionary_indices(enc)]


def english_mask(texts, lid: LanguageIdentifier) -> np.ndarray:
    """True where the language of the LF-replaced caption is ``en``."""
    return languages(texts, lid) == "en"


def buckets(texts: pa.Array, parts: int) -> np.ndarray:
    """A bucket in ``[0, parts)`` per string, from its length and 8 of its bytes spread over it:
    equal strings share a bucket, so captions can be de-duplicated bucket by bucket, each bucket in
    its own worker. Work per string, not per byte."""
    offsets, data = string_buffers(texts)
    n = len(offsets) - 1
    if parts <= 1 or not len(data):
        return np.zeros(n, dtype=np.int64)
    length = np.diff(offsets)
    h = length.astype(np.uint64)
    nonempty = length > 0
    for k in range(8):
        pos = offsets[:-1] + (length * k) // 8
        byte = np.where(nonempty, data[np.minimum(pos, len(data) - 1)], 0).astype(np.uint64)
        h = h * np.uint64(1000003) + byte  # wraps mod 2**64
    return (h % np.uint64(parts)).astype(np.int64)


def group_by_bucket(texts: pa.Array, parts: int) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(``texts`` reordered bucket by bucket, number of texts per bucket, new position of each text)."""
    b = buckets(texts, parts)
    order = np.argsort(b, kind="stable")
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))
    grouped = texts.take(pa.Array.from_buffers(pa.int64(), len(order), [None, pa.py_buffer(order)]))
    return grouped, np.bincount(b, minlength=max(parts, 1)), where


def _english_bucket(lid: LanguageIdentifier, texts: pa.Array) -> np.ndarray:
    enc = pc.dictionary_encode(texts)
    english = np.asarray(lid.predict(enc.dictionary.to_pylist()), dtype=object) == "en"
    return english[dictionary_indices(enc)] if len(texts) else np.zeros(0, dtype=bool)


def english_by_bucket(grouped: Sequence[tuple[pa.Array, np.ndarray]], lid: LanguageIdentifier, executor) -> list[np.ndarray]:
    """English flag of every caption of every shard (LF already replaced), each caption asked once.

    ``grouped`` holds per shard the output of :func:`group_by_bucket` (captions ordered by bucket,
    counts per bucket). Bucket ``b`` of all shards goes to one task on ``executor``, which
    de-duplicates it and asks ``lid`` about its distinct captions: as equal captions share a
    bucket, that is once per caption in the whole job, and the main process only concatenates.
    Returns one bool array per shard, aligned with its grouped captions.
    """
    if not grouped:
        return []
    counts = np.stack([c for _, c in grouped])  # (shards, buckets)
    starts = np.cumsum(counts, axis=1) - counts
    texts = [t.cast(pa.large_string()) for t, _ in grouped]  # a bucket of many shards may pass 2 GiB
    tasks = [pa.concat_arrays([t.slice(starts[s, b], counts[s, b]) for s, t in enumerate(texts)]) for b in range(counts.shape[1])]
    flags = list(executor.map(partial(_english_bucket, lid), tasks, desc="language ID", unit="bucket"))
    bucket_starts = np.cumsum(counts, axis=0) - counts  # where each shard's part begins in each bucket
    return [
        np.concatenate([flags[b][bucket_starts[s, b] : bucket_starts[s, b] + counts[s, b]] for b in range(counts.shape[1])])
        for s in range(len(grouped))
    ]
