"""Language identification behind one small interface, so filters can take a fake in tests.

A language identifier maps a list of captions to a list of language codes. DataComp replaces each
``"\\n"`` (only LF) by a space before asking the model; :func:`english_mask` does that, asks the
model once per DISTINCT caption, and maps the answers back to rows.

* :class:`FastTextLID` — fastText ``lid.176`` (``.bin`` = DataComp's model, ``.ftz`` = the bundled
  quantised variant), loaded through ``fasttext-predict``. Its ``predict(list)`` is broken, so
  strings are predicted one at a time (k=1, threshold 0, as DataComp).
* :class:`Gcld3LID` — Google's CLD3 (``gcld3``), used only by ``laion2b``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
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
    """fastText language ID, exactly as DataComp calls it (top-1 label, ``__label__`` stripped)."""

    def __init__(self, path: str):
        self.path = str(path)

    def _model(self):
        model = _MODELS.get(self.path)
        if model is None:
            if importlib.util.find_spec("fasttext") is None:
                raise MissingDependencyError("fastText is not installed; pip install fasttext-predict")
            import fasttext

            fasttext.FastText.eprint = lambda *a, **k: None
            model = _MODELS[self.path] = fasttext.load_model(self.path)
        return model

    def predict(self, texts: Sequence[str]) -> list[str]:
        """Top-1 label per text; answers are memoised per process across shards (bounded)."""
        memo = _MEMO.setdefault(self.path, {})
        if len(memo) > _MEMO_MAX:
            memo.clear()
        native = self._model().f  # the wrapper's predict(t) is this call on t + "\n", plus checks
        out = []
        for t in texts:
            label = memo.get(t)
            if label is None:
                label = memo[t] = native.predict(t + "\n", 1, 0.0, "strict")[0][1].split("__label__")[1]
            out.append(label)
        return out

    def __getstate__(self):
        return {"path": self.path}


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
    return codes[enc.indices.to_numpy(zero_copy_only=False)]


def english_mask(texts, lid: LanguageIdentifier) -> np.ndarray:
    """True where the language of the LF-replaced caption is ``en``."""
    return languages(texts, lid) == "en"
