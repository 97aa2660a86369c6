"""Language identification behind one small interface, so filters can take a fake in tests.

A language identifier maps a list of captions to a list of language codes. DataComp replaces each
``"\\n"`` (only LF) by a space before asking the model; :func:`english_mask` does that, asks the
model once per DISTINCT caption, and maps the answers back to rows. :func:`english_of_distinct`
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
    the texts are already distinct across the whole job (see :func:`english_of_distinct`).
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


def _english_chunk(lid: LanguageIdentifier, texts: pa.Array) -> np.ndarray:
    return np.asarray(lid.predict(texts.to_pylist()), dtype=object) == "en"


def english_of_distinct(dictionaries: Sequence[pa.Array], lid: LanguageIdentifier, executor) -> list[np.ndarray]:
    """English flag of every entry of every (per-shard) caption list, LF already replaced.

    The lists are concatenated and de-duplicated first, so each caption is asked once in the whole
    job rather than once per worker; the distinct captions are then split into chunks that run in
    parallel on ``executor`` (its ``map``). Returns one bool array per input list.
    """
    sizes = [len(d) for d in dictionaries]
    if not sum(sizes):
        return [np.zeros(n, dtype=bool) for n in sizes]
    enc = pc.dictionary_encode(pa.concat_arrays([d.cast(pa.large_string()) for d in dictionaries]))
    distinct = enc.dictionary
    n = len(distinct)
    parts = 1 if executor.workers <= 1 else min(n, 4 * executor.workers)  # a few per worker, to balance
    bounds = np.linspace(0, n, parts + 1).astype(np.int64)
    # concat_arrays compacts each slice: a pickled slice would carry the whole buffer
    chunks = [pa.concat_arrays([distinct.slice(a, b - a)]) for a, b in zip(bounds[:-1], bounds[1:])]
    flags = np.concatenate(list(executor.map(partial(_english_chunk, lid), chunks, desc="language ID", unit="chunk")))
    return np.split(flags[dictionary_indices(enc)], np.cumsum(sizes)[:-1])
