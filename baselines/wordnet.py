"""WordNet 3.0 first-synset offsets, as nltk 3.8.1's ``wordnet.synsets(w)[0].offset()`` gives them.

Reads the same ``index.*`` and ``*.exc`` files nltk's reader reads (Debian ``wordnet-base``) and
reproduces nltk's ``morphy``: exception list first (no rule fallback when the word is listed),
then the suffix rules, once and then repeatedly. Parts of speech are tried in nltk's order
noun, verb, adjective, adverb; the first one with a lemma wins and its first listed offset is the
answer. Lookups are memoised per distinct word.
"""

from __future__ import annotations

from pathlib import Path

from clipsift.baselines.assets import resolve_wordnet_dir

POS_ORDER = ("n", "v", "a", "r")
_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
RULES = {
    "n": (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}
_LOADED: dict[str, WordNet] = {}


def _read_index(path: Path) -> dict[str, int]:
    """lemma -> first synset offset of one ``index.<pos>`` file (header lines start with a space)."""
    out: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(" "):
                continue
            parts = line.split()
            p_cnt = int(parts[3])
            out[parts[0]] = int(parts[4 + p_cnt + 2])
    return out


def _read_exc(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            terms = line.split()
            if terms:
                out[terms[0]] = terms[1:]
    return out


class WordNet:
    """First-synset offsets over WordNet's index and exception files, memoised per word."""

    def __init__(self, root: str | Path | None = None):
        self.root = resolve_wordnet_dir(None if root is None else str(root))
        self.index = {p: _read_index(self.root / f"index.{_FILES[p]}") for p in POS_ORDER}
        self.exceptions = {p: _read_exc(self.root / f"{_FILES[p]}.exc") for p in POS_ORDER}
        self._memo: dict[str, int | None] = {}

    @classmethod
    def load(cls, root: str | Path | None = None) -> WordNet:
        """One instance per directory and process (index files take ~0.3 s to parse)."""
        key = str(resolve_wordnet_dir(None if root is None else str(root)))
        if key not in _LOADED:
            _LOADED[key] = cls(key)
        return _LOADED[key]

    def morphy(self, form: str, pos: str) -> list[str]:
        """nltk's ``_morphy(form, pos)``: base forms of ``form`` that WordNet lists under ``pos``."""
        index = self.index[pos]

        def keep(forms):
            seen, out = set(), []
            for f in forms:
                if f in index and f not in seen:
                    seen.add(f)
                    out.append(f)
            return out

        def rules(forms):
            return [f[: -len(old)] + new for f in forms for old, new in RULES[pos] if f.endswith(old)]

        exc = self.exceptions[pos]
        if form in exc:
            return keep([form] + exc[form])
        forms = rules([form])
        found = keep([form] + forms)
        if found:
            return found
        while forms:
            forms = rules(forms)
            found = keep(forms)
            if found:
                return found
        return []

    def first_offset(self, word: str) -> int | None:
        """Offset of ``wordnet.synsets(word)[0]`` (any part of speech), None when there is none."""
        try:
            return self._memo[word]
        except KeyError:
            pass
        lemma = word.lower()
        result = None
        for pos in POS_ORDER:
            forms = self.morphy(lemma, pos)
            if forms:
                result = self.index[pos][forms[0]]
                break
        self._memo[word] = result
        return result
