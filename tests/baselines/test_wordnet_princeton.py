"""text_based reads Princeton WordNet 3.0 (nltk's files), derived offline from Debian's rebuild."""

from __future__ import annotations

import hashlib
import logging
import shutil
import zipfile

import numpy as np
import pyarrow as pa
import pytest

from clipsift.baselines import assets
from clipsift.baselines import wordnet as wnmod
from clipsift.baselines.text_based import entity_hits
from clipsift.baselines.wordnet import (
    WordNet,
    WordNetSource,
    open_wordnet,
    princeton_files,
    write_nltk_corpus,
)
from clipsift.errors import ClipsiftError

# Kept by DataComp (nltk's Princeton files), dropped when Debian's offsets are read as they are ...
DATACOMP_KEEPS = ("install", "installed", "athletic", "femoral", "gentlemanly", "visual", "premarital")
# ... and the reverse.
DATACOMP_DROPS = ("aromatic", "cerebral", "cogent", "cognitive", "incognito", "passionate", "mossy", "planetary")


def sha16(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@pytest.fixture(scope="module")
def debian():
    try:
        root = assets.resolve_wordnet_dir(None)
    except ClipsiftError as exc:
        pytest.skip(str(exc))
    return root


@pytest.fixture(scope="module")
def nltk_dir(debian, tmp_path_factory):
    """nltk's corpora/wordnet folder, written from Debian's files."""
    return write_nltk_corpus(tmp_path_factory.mktemp("nltk_data") / "corpora" / "wordnet")


def test_derived_index_files_are_princetons(debian):
    src = WordNetSource(debian)
    assert sha16(src.read("index.verb")) == "e2ac24816c3a8289" and sha16(src.read("index.adj")) == "c9865d7b4d1f805b"
    files = princeton_files(src, ("index.noun", "index.verb", "index.adj", "index.adv"))
    assert sha16(files["index.verb"]) == "c7c79b558d787f1e"
    assert sha16(files["index.adj"]) == "42f58dda2c7cff66"
    assert sha16(files["index.noun"]) == "a490d99d93d017bf" and sha16(files["index.adv"]) == "6f5465ed5758fe9c"


def test_default_is_princeton_and_flips_as_datacomp(debian):
    wn = WordNet.load()
    assert wn.provenance == "debian-derived"
    entities = assets.load_in21k_ids()
    assert wn.first_offset("install") == 1569566 and wn.first_offset("installed") == 1569566  # Debian: 1569584
    assert wn.first_offset("cerebral") == 1927455  # Debian: 1927456 (an ImageNet-21k id)
    assert wn.first_offset("dog") == 2084071  # nouns do not move
    for word in DATACOMP_KEEPS:
        assert wn.first_offset(word) in entities, word
    for word in DATACOMP_DROPS:
        assert wn.first_offset(word) not in entities, word
    words = pa.array(list(DATACOMP_KEEPS + DATACOMP_DROPS) + ["dog", "dog,"])
    hits = entity_hits(words, None, None)  # the filter's own path
    assert hits.tolist() == [True] * len(DATACOMP_KEEPS) + [False] * len(DATACOMP_DROPS) + [True, False]


def test_written_corpus_is_byte_equal_to_nltks(nltk_dir):
    names = sorted(p.name for p in nltk_dir.iterdir())
    assert names == sorted(wnmod.EXPORT_FILES)
    for path in nltk_dir.iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == wnmod.PRINCETON_SHA256[path.name], path.name
    # offsets are byte positions: every index offset of a verb/adjective starts its synset line
    data = (nltk_dir / "data.verb").read_bytes()
    for off in (1569566, 2422663, 2423762):
        assert data[off - 1 : off] == b"\n" and data[off : off + 8] == b"%08d" % off


def test_nltk_layouts_are_used_as_they_are(nltk_dir, tmp_path):
    zpath = tmp_path / "wordnet.zip"  # nltk's own zip: members wordnet/<name>
    with zipfile.ZipFile(zpath, "w") as zf:
        for name in wnmod.READ_FILES:
            zf.write(nltk_dir / name, f"wordnet/{name}")
    for where in (nltk_dir, nltk_dir.parent.parent, zpath):  # folder, nltk_data root, zip
        root, provenance, _ = open_wordnet(where)
        assert provenance == "nltk", where
        wn = WordNet(where)
        assert [wn.first_offset(w) for w in ("install", "cerebral", "dog")] == [1569566, 1927455, 2084071]
    assert assets.resolve_wordnet_dir(str(nltk_dir.parent.parent)) == nltk_dir


def test_other_wordnet_dir_is_used_unchanged_with_a_warning(nltk_dir, tmp_path, caplog):
    own = tmp_path / "own"
    shutil.copytree(nltk_dir, own)
    index = (own / "index.adj").read_bytes()
    line_start = index.index(b"\nvisual a ") + 1
    line = index[line_start : index.index(b"\n", line_start)]
    (own / "index.adj").write_bytes(index.replace(line, line.replace(b"%08d" % 2869563, b"%08d" % 1234567)))
    with caplog.at_level(logging.WARNING, logger="clipsift"):
        wn = WordNet(own)
    assert wn.provenance == "unverified" and "index.adj" in caplog.text
    assert wn.first_offset("visual") == 1234567  # not corrected, not replaced
    assert wn.first_offset("install") == 1569566


def test_unknown_debian_files_fail_in_one_line(debian, tmp_path, monkeypatch):
    fake = tmp_path / "wordnet"
    shutil.copytree(debian, fake)
    monkeypatch.setattr(assets, "DEFAULT_WORDNET_DIR", str(fake))
    # Debian's index files but another data.verb: the offsets cannot be trusted to correct
    (fake / "data.verb").write_bytes((debian / "data.verb").read_bytes().replace(b"suppress 0 repress 0", b"suppress 0 repress 1"))
    with pytest.raises(ClipsiftError, match=r"data\.verb: sha256 .* nltk\.download\('wordnet'\)") as exc:
        open_wordnet(None)
    assert "\n" not in str(exc.value)
    # neither Debian's nor Princeton's index files in the default folder
    (fake / "index.verb").write_bytes((debian / "index.verb").read_bytes() + b"zzz v 1 0 1 0 00000001  \n")
    with pytest.raises(ClipsiftError, match=r"index\.verb: sha256 .* neither .* wordnet_dir=DIR") as exc:
        open_wordnet(None)
    assert "\n" not in str(exc.value)


def test_derivation_checks_each_edit(debian):
    # the three edits are located by content on Debian's lines; a missing one is an error, not a guess
    data = (debian / "data.adj").read_bytes()
    fixed, moved = wnmod._undo_edits("data.adj", data)
    assert len(fixed) == len(data) - 1 and moved[b"%08d" % 2869564] == b"%08d" % 2869563
    assert all(int(new) == int(old) - 1 for old, new in moved.items())
    broken = data.replace(b'plan: "a carefully', b'plan; "a carefully')
    with pytest.raises(ClipsiftError, match="lacks Debian's"):
        wnmod._undo_edits("data.adj", broken)
    verb, moved_v = wnmod._undo_edits("data.verb", (debian / "data.verb").read_bytes())
    shifts = np.array([int(old) - int(new) for old, new in moved_v.items()])
    assert (shifts == 18).all() and min(map(int, moved_v)) > 612841 and max(map(int, moved_v)) == 2422681


def test_debian_index_without_data_files_is_one_line(debian, tmp_path):
    part = tmp_path / "part"
    part.mkdir()
    for name in wnmod.READ_FILES:  # Debian's index and exception files, but no data.verb / data.adj
        shutil.copy(debian / name, part / name)
    with pytest.raises(ClipsiftError, match=r"files missing \(data\.verb\).*nltk\.download") as exc:
        WordNet(part)
    assert "\n" not in str(exc.value)
