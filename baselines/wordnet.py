"""WordNet 3.0 first-synset offsets, as nltk 3.8.1's ``wordnet.synsets(w)[0].offset()`` gives them.

DataComp reads Princeton WordNet 3.0 as ``nltk.download("wordnet")`` installs it. Offsets are byte
positions in the ``data.*`` files, so they are only DataComp's when the files are Princeton's bytes.
Debian's ``wordnet-base`` (the offline default) is a rebuild that differs in three places: in
``data.verb`` the ``suppress 0 repress 0`` synset gained the hyponym pointer ``~ 02423762 v 0000``
that the ``restrain ... hold_back`` synset lost, and in ``data.adj`` one gloss reads
``plan: "a carefully`` where Princeton has ``plan:"a carefully``. Verb synsets between the two verb
edits therefore sit 18 bytes later in Debian, adjective synsets after the gloss 1 byte later, and
every index line and pointer that names them carries Debian's numbers.

:func:`princeton_files` undoes the three edits on Debian's files, recomputes every synset's byte
offset and rewrites every offset that refers to a verb or adjective synset (index lines, synset
headers, pointer fields). Sources and results are checked by sha256 against the files nltk
installs, so the default is exact and offline. A ``wordnet_dir`` that already holds nltk's files
(a folder, an ``nltk_data`` root, or ``wordnet.zip``) is used as it is; see ``docs/wordnet.md``.

:class:`WordNet` reproduces nltk's ``morphy`` over the ``index.*`` and ``*.exc`` files: exception
list first (no rule fallback when the word is listed), then the suffix rules, once and then
repeatedly. Parts of speech are tried in nltk's order noun, verb, adjective, adverb; the first one
with a lemma wins and its first listed offset is the answer. Lookups are memoised per word.

    python -m clipsift.baselines.wordnet DEST   # write nltk's WordNet 3.0 corpus folder, derived offline
"""

from __future__ import annotations

import hashlib
import re
import sys
import zipfile
from pathlib import Path

from clipsift.baselines.assets import resolve_wordnet_dir
from clipsift.errors import ClipsiftError, MissingDependencyError
from clipsift.log import get_logger

log = get_logger("baselines.wordnet")

POS_ORDER = ("n", "v", "a", "r")
_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
RULES = {
    "n": (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}
READ_FILES = tuple(f"index.{_FILES[p]}" for p in POS_ORDER) + tuple(f"{_FILES[p]}.exc" for p in POS_ORDER)
_LOADED: dict[str, WordNet] = {}

# sha256 of Princeton WordNet 3.0 as nltk.download("wordnet") installs it (nltk_data corpora/wordnet).
PRINCETON_SHA256 = {
    "index.noun": "a490d99d93d017bf4822fe2f0ffa51fd73911ce271dc7535fade21f8814b5a04",
    "index.verb": "c7c79b558d787f1e31c6f8b3eeadb8fcbb26a64545ecc1241e21d9b61f95ee8e",
    "index.adj": "42f58dda2c7cff66eb8fa55ba62e0a873a9b3f43c878e8201108f5dab6dcff28",
    "index.adv": "6f5465ed5758fe9c8a2f7ec17b1300f3aa875756c70ff7cba162f7e71bcf88ea",
    "data.noun": "489f145e0f68877c0be5bd0eb4117adaaac52f38f6204eb8d85dbe2158b614cc",
    "data.verb": "29cc96ed80c9f47d94fe75e332a9df80f4b1c737205f92d2f433d63c6da2ab51",
    "data.adj": "f24b635368be441501c9b8001e9271fd3b30b203f00d91e332979e6f8fe35646",
    "data.adv": "e66dbbda0e0359e41b7f225bff71dd0c263dc7c66c1b61abc9ba334973d92979",
    "noun.exc": "2b5d675c380b39ecf595af9fa9d4e7feb1d58c643b0bff08c40ed5bfe41fab7a",
    "verb.exc": "dbbcf9a601b2d77e934e413b91d90e88ec7f933a8b77cfc00602a923b891b42c",
    "adj.exc": "8824cc24bbedd797b9702316b27f07cd4c2b76b629539f0a1276f03926758016",
    "adv.exc": "e7291461b629abfe63301bbe1998cee09fd575ed7107abd7ea9763adb05bf0a8",
    "cntlist.rev": "a198580b8f705fa02797bba8b13e5cbe4a9f9f40cb1697e774c7fc6a5865b035",
    "lexnames": "4767e2a1c6e68c1a93aa6b7c4ef7ebe9a815b50d7d5aac2788696f2cf3633bf1",
}
# Debian wordnet-base 1:3.0-37 files whose bytes differ from Princeton's (the others are identical).
DEBIAN_SHA256 = {
    "index.verb": "e2ac24816c3a8289dcb72aaa9cf8db81fdf25ec34d792bfc96ac5b7a20c8b4ae",
    "index.adj": "c9865d7b4d1f805bdef82ccdcea5282436e23083e6f6f1b33e716327c4eda810",
    "data.noun": "fea17d2f9656611334eac790e5d69e47645fa180c4aa481fb4cd9b3520754ca2",
    "data.verb": "adcf43e35b581e8036d8b5a52d63d9cd3d3b4870b2720d3c03c799df44777bc2",
    "data.adj": "c89120dfc1f046ddff4a631bf9b7e9fa1a36b5e86565a23bf82dbe14f30b88a7",
    "data.adv": "444a63bf3955080ab7524f5079cfc07ff9bc682cb98bdb1db73b0fb9829f1139",
}
# The three places where Debian's rebuild differs: (data file, Debian offset of the synset line,
# ((Debian bytes, Princeton bytes), ...)), each replaced exactly once on that line.
DEBIAN_EDITS = (
    ("data.verb", 612841, ((b" 005 @ 00610167 ", b" 004 @ 00610167 "), (b" ~ 02423762 v 0000 03 ", b" 03 "))),
    ("data.verb", 2422681, ((b" 006 @ 02423762 ", b" 007 @ 02423762 "), (b" ~ 02510337 v 0000 ", b" ~ 02423762 v 0000 ~ 02510337 v 0000 "))),
    ("data.adj", 1681307, ((b'plan: "a carefully', b'plan:"a carefully'),)),
)
# nltk's reader opens lexnames; Debian does not ship it (lexnames(5WN)). nltk's bytes, spaces and all.
LEXNAMES = (
    b"00\tadj.all\t3\n01\tadj.pert\t3 \n02\tadv.all\t4\n03\tnoun.Tops\t1  \n04\tnoun.act\t1\n05\tnoun.animal\t1\n"
    b"06\tnoun.artifact\t1\n07\tnoun.attribute\t1\n08\tnoun.body\t1\n09\tnoun.cognition\t1\n10\tnoun.communication\t1\n"
    b"11\tnoun.event\t1\n12\tnoun.feeling\t1\n13\tnoun.food\t1\n14\tnoun.group\t1\n15\tnoun.location\t1\n16\tnoun.motive\t1\n"
    b"17\tnoun.object\t1\n18\tnoun.person\t1\n19\tnoun.phenomenon\t1\n20\tnoun.plant\t1\n21\tnoun.possession\t1\n"
    b"22\tnoun.process\t1\n23\tnoun.quantity\t1\n24\tnoun.relation\t1\n25\tnoun.shape\t1\n26\tnoun.state\t1\n"
    b"27\tnoun.substance\t1\n28\tnoun.time\t1\n29\tverb.body\t2\n30\tverb.change\t2\n31\tverb.cognition\t2\n"
    b"32\tverb.communication\t2\n33\tverb.competition\t2\n34\tverb.consumption\t2\n35\tverb.contact\t2\n"
    b"36\tverb.creation\t2\n37\tverb.emotion\t2\n38\tverb.motion\t2\n39\tverb.perception\t2\n40\tverb.possession\t2\n"
    b"41\tverb.social\t2\n42\tverb.stative\t2\n43\tverb.weather\t2\n44\tadj.ppl\t3\n"
)
EXPORT_FILES = tuple(PRINCETON_SHA256)
NLTK_HINT = (
    "pass wordnet_dir=DIR holding nltk's WordNet 3.0 files (python -c \"import nltk; nltk.download('wordnet')\" "
    "puts them in ~/nltk_data/corpora/wordnet)"
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- where the files are -------------------------------------------------------------------------
class WordNetSource:
    """The files of one WordNet copy: a folder, or nltk's ``wordnet.zip`` (members ``wordnet/<name>``)."""

    def __init__(self, path: Path):
        self.path = path
        self._zip = zipfile.ZipFile(path) if path.is_file() else None
        self._cache: dict[str, bytes] = {}
        self._sums: dict[str, str] = {}

    def has(self, name: str) -> bool:
        if self._zip is None:
            return (self.path / name).is_file()
        return f"wordnet/{name}" in self._zip.namelist()

    def read(self, name: str) -> bytes:
        if name not in self._cache:
            if self._zip is None:
                self._cache[name] = (self.path / name).read_bytes()
            else:
                self._cache[name] = self._zip.read(f"wordnet/{name}")
        return self._cache[name]

    def sha256(self, name: str) -> str | None:
        if not self.has(name):
            return None
        if name not in self._sums:
            self._sums[name] = _sha256(self.read(name))
        return self._sums[name]


# ---- Debian -> Princeton -------------------------------------------------------------------------
_SYNSET_START = re.compile(rb"\n(\d{8}) ")  # the offset that starts a line (a literal is faster than ^)


def _undo_edits(name: str, data: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """Princeton's bytes of one Debian ``data.<pos>`` file with its synset offsets still in Debian's
    numbering, and the map Debian offset -> Princeton offset (8-digit bytes) of every synset that moved."""
    pieces: list[bytes] = []
    moved: dict[bytes, bytes] = {}
    prev = delta = 0  # start of the part not yet copied; Princeton minus Debian position there

    def shift(end):  # synsets whose lines start in data[prev:end] move by delta (prev > 0 then)
        if delta:
            offsets = _SYNSET_START.findall(data, prev - 1, end + 8)  # newline at prev-1 .. end-2
            moved.update((o, b"%08d" % (int(o) + delta)) for o in offsets)
        pieces.append(data[prev:end])

    for file, off, pairs in DEBIAN_EDITS:
        if file != name:
            continue
        start = data.find(b"\n%08d " % off) + 1
        if start != off:
            raise ClipsiftError(f"{name}: no synset line at Debian offset {off:08d}; {NLTK_HINT}")
        end = data.index(b"\n", start) + 1
        line = data[start:end]
        for old, new in pairs:
            if line.count(old) != 1:
                raise ClipsiftError(f"{name}: synset {off:08d} lacks Debian's {old!r}; {NLTK_HINT}")
            line = line.replace(old, new)
        shift(start)
        if delta:
            moved[b"%08d" % off] = b"%08d" % (off + delta)
        pieces.append(line)
        delta += len(line) - (end - start)
        prev = end
    shift(len(data))
    return b"".join(pieces), moved


_POINTER = re.compile(rb"(?<= )(\d{8}) ([nvasr])(?= )")
_INDEX_OFFSET = re.compile(rb"(?<= )(\d{8})(?= )")


def _remap_data(data: bytes, own: dict[bytes, bytes], by_pos: dict[bytes, dict[bytes, bytes]]) -> bytes:
    """Rewrite the synset's own offset (``own`` map) and every pointer's target offset (map of the
    pointer's part of speech) on each synset line; the gloss after `` | `` is left untouched."""

    def pointer(m):
        table = by_pos.get(m.group(2))
        return table.get(m.group(1), m.group(1)) + b" " + m.group(2) if table else m.group(0)

    out = []
    for line in data.splitlines(keepends=True):
        if not line.startswith(b"  "):
            head, bar, gloss = line.partition(b" | ")
            head = own.get(head[:8], head[:8]) + _POINTER.sub(pointer, head[8:])
            line = head + bar + gloss
        out.append(line)
    return b"".join(out)


def _remap_index(data: bytes, moved: dict[bytes, bytes]) -> bytes:
    """Rewrite every synset offset of an ``index.<pos>`` file (the only 8-digit fields on its lines)."""
    if not moved:
        return data
    parts = _INDEX_OFFSET.split(data)  # text, offset, text, offset, ..., text
    get = moved.get
    parts[1::2] = [get(o, o) for o in parts[1::2]]
    return b"".join(parts)


_IDENTICAL = ("index.noun", "index.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc", "cntlist.rev")


def _require(src: WordNetSource, names) -> None:
    missing = [n for n in names if not src.has(n)]
    if missing:
        raise MissingDependencyError(f"{src.path}: WordNet 3.0 files missing ({', '.join(missing)}); {NLTK_HINT}")


def _check(src: WordNetSource, name: str, expected: str, whose: str) -> bytes:
    _require(src, (name,))
    data = src.read(name)
    got = src.sha256(name)
    if got != expected:
        raise ClipsiftError(
            f"{src.path}/{name}: sha256 {got[:16]}... is not {whose} ({expected[:16]}...), so clipsift cannot "
            f"derive Princeton's offsets from it; {NLTK_HINT}"
        )
    return data


def princeton_files(src: WordNetSource, names=READ_FILES) -> dict[str, bytes]:
    """Princeton WordNet 3.0's bytes of ``names``, derived from Debian wordnet-base 1:3.0-37's files.

    Every source is checked by sha256 first and every result after (both one-line errors).
    """
    deb = "Debian wordnet-base 1:3.0-37's"
    moved: dict[str, dict[bytes, bytes]] = {}
    undone: dict[str, bytes] = {}
    for data_name in ("data.verb", "data.adj"):
        undone[data_name], moved[data_name] = _undo_edits(data_name, _check(src, data_name, DEBIAN_SHA256[data_name], deb))
    by_pos = {b"v": moved["data.verb"], b"a": moved["data.adj"], b"s": moved["data.adj"]}
    out = {}
    for name in names:
        if name in _IDENTICAL:
            data = _check(src, name, PRINCETON_SHA256[name], f"{deb} (identical to Princeton's)")
        elif name == "lexnames":
            data = LEXNAMES
        elif name.startswith("index."):
            data = _remap_index(_check(src, name, DEBIAN_SHA256[name], deb), moved[f"data.{name[6:]}"])
        elif name.startswith("data."):
            base = undone.get(name) or _check(src, name, DEBIAN_SHA256[name], deb)
            data = _remap_data(base, moved.get(name, {}), by_pos)
        else:
            raise ValueError(f"not a WordNet file clipsift derives: {name}")
        if name in _IDENTICAL or name == "lexnames":
            out[name] = data  # already checked against Princeton's sha256
            continue
        got = _sha256(data)
        if got != PRINCETON_SHA256[name]:  # cannot happen for verified sources; guards the derivation itself
            raise ClipsiftError(f"{src.path}/{name}: derived sha256 {got[:16]}... is not Princeton's; {NLTK_HINT}")
        out[name] = data
    return out


def open_wordnet(path: str | Path | None = None, names=READ_FILES) -> tuple[Path, str, dict[str, bytes]]:
    """(resolved location, provenance, {file name: Princeton bytes}) of the WordNet to use.

    Provenance is ``nltk`` (the files are Princeton's, used as they are), ``debian-derived``
    (Debian's files corrected to Princeton's bytes) or ``unverified`` (a ``wordnet_dir`` whose
    files are neither; used as it is, with a warning). The default folder must be one of the first two.
    """
    root = resolve_wordnet_dir(None if path is None else str(path))
    src = WordNetSource(root)
    sums = {n: src.sha256(n) for n in ("index.verb", "index.adj")}
    if all(sums[n] == DEBIAN_SHA256[n] for n in sums):
        return root, "debian-derived", princeton_files(src, names)
    _require(src, names)
    files = {n: src.read(n) for n in names}
    differ = [n for n in names if src.sha256(n) != PRINCETON_SHA256.get(n)]
    if not differ:
        return root, "nltk", files
    if path is None:
        raise ClipsiftError(
            f"{root}/{differ[0]}: sha256 {src.sha256(differ[0])[:16]}... is neither Princeton WordNet 3.0's "
            f"(as nltk installs it) nor Debian wordnet-base 1:3.0-37's, which clipsift corrects; {NLTK_HINT}"
        )
    log.warning(
        "%s: %s differ from Princeton WordNet 3.0 as nltk installs it; used as they are, so text_based may "
        "differ from DataComp's", root, ", ".join(differ),
    )
    return root, "unverified", files


def write_nltk_corpus(dest: str | Path, wordnet_dir: str | Path | None = None) -> Path:
    """Write nltk's ``corpora/wordnet`` folder (index.*, data.*, *.exc, lexnames, cntlist.rev), every
    file sha256-equal to what ``nltk.download("wordnet")`` installs, from Debian's files; offline."""
    from clipsift.io import atomic_dir

    root, kind, files = open_wordnet(wordnet_dir, names=tuple(n for n in EXPORT_FILES if n != "lexnames"))
    if kind == "unverified":
        raise ClipsiftError(f"{root}: not Princeton's or Debian's WordNet 3.0 files; {NLTK_HINT}")
    files["lexnames"] = LEXNAMES
    with atomic_dir(dest) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return Path(dest)


# ---- lookups -------------------------------------------------------------------------------------
def _parse_index(data: bytes) -> dict[str, int]:
    """lemma -> first synset offset of one ``index.<pos>`` file (header lines start with a space)."""
    out: dict[str, int] = {}
    for line in data.decode("utf-8").splitlines():
        if line.startswith(" "):
            continue
        parts = line.split()
        out[parts[0]] = int(parts[6 + int(parts[3])])
    return out


def _parse_exc(data: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in data.decode("utf-8").splitlines():
        terms = line.split()
        if terms:
            out[terms[0]] = terms[1:]
    return out


class WordNet:
    """First-synset offsets over WordNet's index and exception files, memoised per word.

    ``root`` is the folder (or ``wordnet.zip``) read; ``provenance`` says whether its files are nltk's
    Princeton WordNet 3.0 (``nltk``), Debian's corrected to it (``debian-derived``) or neither.
    """

    def __init__(self, root: str | Path | None = None):
        self.root, self.provenance, files = open_wordnet(root)
        self.index = {p: _parse_index(files[f"index.{_FILES[p]}"]) for p in POS_ORDER}
        self.exceptions = {p: _parse_exc(files[f"{_FILES[p]}.exc"]) for p in POS_ORDER}
        self._memo: dict[str, int | None] = {}

    @classmethod
    def load(cls, root: str | Path | None = None) -> WordNet:
        """One instance per location and process (checking, deriving and parsing take ~0.4 s)."""
        key = str(resolve_wordnet_dir(None if root is None else str(root)))
        if key not in _LOADED:
            _LOADED[key] = cls(None if root is None else key)
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


def main(argv=None) -> int:
    """``python -m clipsift.baselines.wordnet DEST [WORDNET_DIR]``: write nltk's WordNet 3.0 folder."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2 or args[0].startswith("-"):
        print(main.__doc__, file=sys.stderr)
        return 2
    try:
        dest = write_nltk_corpus(args[0], args[1] if len(args) > 1 else None)
    except ClipsiftError as exc:
        print(f"clipsift: error: {exc}", file=sys.stderr)
        return 1
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
