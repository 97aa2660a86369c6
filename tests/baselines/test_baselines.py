"""DataComp baselines, primitives: caption counts, WordNet offsets, score thresholds, language ID, assets."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from clipsift.baselines import assets, textstats
from clipsift.baselines.cli import check_args
from clipsift.baselines.langid import FastTextLID, english_mask, languages
from clipsift.baselines.scores import at_least, fraction_threshold
from clipsift.baselines.wordnet import WordNet
from clipsift.errors import ClipsiftError, MissingDependencyError, ParamError


def fasttext_tokenize(text: str) -> list[str]:
    """fastText's Dictionary::readWord, byte by byte (the spec's §3.2), for cross-checking."""
    tokens, word = [], b""
    for byte in text.encode("utf-8"):
        if byte in (32, 10, 13, 9, 11, 12, 0):
            if word:
                tokens.append(word)
                word = b""
            if byte == 10:
                tokens.append(b"</s>")
        else:
            word += bytes([byte])
    if word:
        tokens.append(word)
    return tokens


# ---- caption counts ------------------------------------------------------------------------------
def test_whitespace_table_is_pythons():
    assert sorted(textstats.ASCII_SPACE + textstats.UNICODE_SPACE) == [c for c in range(0x110000) if chr(c).isspace()]


@pytest.mark.parametrize(
    "text, n",
    [("", 0), ("a b", 2), ("hello\n", 2), ("\n", 1), ("a\n\nb", 4), ("a\u00a0b", 1), ("x\ry\tz\x00w\x0bv\x0cu", 6), ("\u3000x", 1), ("sunset\n", 2)],
)
def test_fasttext_token_count_examples(text, n):
    assert textstats.fasttext_token_counts(pa.array([text])).tolist() == [n]


def test_counts_match_python_on_random_unicode():
    alphabet = list("ab ,.\n\r\t\x0b\x0c\x00\x1c\x1f") + ["\xa0", "\u3000", "\u2009", "\u200b", "\x85", "é", "日", "\U0001f600", "\u1680", "\u2028"]
    rnd = random.Random(0)
    texts = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12))) for _ in range(3000)]
    arr = pa.chunked_array([pa.array(texts[:1000]), pa.array(texts[1000:])])
    assert textstats.split_word_counts(arr).tolist() == [len(t.split()) for t in texts]
    assert textstats.char_counts(arr).tolist() == [len(t) for t in texts]
    assert textstats.fasttext_token_counts(arr).tolist() == [len(fasttext_tokenize(t)) for t in texts]
    words, rows = textstats.split_tokens(pa.array(texts).slice(7))
    expected = [(i, w) for i, t in enumerate(texts[7:]) for w in t.split()]
    assert words.to_pylist() == [w for _, w in expected]
    assert rows.tolist() == [i for i, _ in expected]


def test_python_split_rules():
    # \0 and U+200B are not whitespace for str.split; NBSP and U+3000 are.
    arr = pa.array(["a\x00b c", "a\u200bb c", "a\u00a0b\u3000c", "  ", "x\x1cy\x85z"])
    assert textstats.split_word_counts(arr).tolist() == [2, 2, 3, 0, 3]


# ---- WordNet -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wordnet():
    try:
        return WordNet.load()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


def test_wordnet_known_offsets(wordnet):
    assert wordnet.first_offset("dog") == 2084071
    assert wordnet.first_offset("Dogs") == 2084071  # lower-cased, noun rule s -> ""
    assert wordnet.first_offset("dog,") is None  # punctuation stays attached
    assert wordnet.first_offset("organism") == 4475
    assert wordnet.first_offset("tench") == 1440764
    assert wordnet.first_offset("geese") == wordnet.index["n"]["goose"]  # exception list


def test_wordnet_nouns_before_verbs(wordnet):
    assert wordnet.index["v"]["run"] != wordnet.index["n"]["run"]
    assert wordnet.first_offset("run") == wordnet.index["n"]["run"]
    assert wordnet.first_offset("running") == wordnet.index["n"]["running"]


def test_wordnet_exception_list_short_circuits(wordnet):
    # "his" is listed in noun.exc (-> "his", not a noun); the noun rules would give "hi" (a noun),
    # but morphy returns the filtered exception forms only, so there is no synset at all.
    assert "hi" in wordnet.index["n"] and "his" in wordnet.exceptions["n"]
    assert wordnet.first_offset("his") is None
    # "is": noun exception empty -> falls to verbs, where verb.exc maps it to "be".
    assert wordnet.first_offset("is") == wordnet.index["v"]["be"]


def test_offset_match_ignores_part_of_speech(wordnet):
    entities = assets.load_in21k_ids()
    # adjectives / verbs with no noun sense whose (Princeton) offset equals an ImageNet-21k noun offset
    for word, pos in (("athletic", "a"), ("visual", "a"), ("install", "v")):
        assert word not in wordnet.index["n"]
        assert wordnet.first_offset(word) == wordnet.index[pos][word]
        assert wordnet.first_offset(word) in entities


def test_in21k_ids_from_timm():
    ids = assets.load_in21k_ids()
    assert len(ids) == 21843 and 2084071 in ids and 1440764 in ids


def test_missing_wordnet_dir_is_one_line(tmp_path):
    with pytest.raises(MissingDependencyError, match="apt-get install wordnet-base") as exc:
        WordNet.load(tmp_path)
    assert "\n" not in str(exc.value)


# ---- scores --------------------------------------------------------------------------------------
def test_fraction_rule_index_ties_and_nan():
    values = np.array([0.9, 0.8, 0.7, 0.7, 0.7, 0.6, np.nan, 0.5, np.nan, 0.4])
    # n = int(10 * 0.3) = 3 -> 4th largest = 0.7; >= keeps all three 0.7s: 5 rows, not 3
    t = fraction_threshold(values, 0.3)
    assert t == 0.7 and int(at_least(values, t).sum()) == 5
    # NaN sorts last: n = int(10 * 0.8) = 8 -> NaN threshold keeps nothing
    assert np.isnan(fraction_threshold(values, 0.8))
    assert int(at_least(values, fraction_threshold(values, 0.8)).sum()) == 0
    # truncation of the float product: int(100 * 0.29) == 28
    hundred = np.arange(100, 0, -1, dtype=np.float64)
    assert fraction_threshold(hundred, 0.29) == 72.0
    # Python indexing: n < 0 counts from the end; fraction 1.0 is DataComp's IndexError
    assert fraction_threshold(hundred, -0.1) == 10.0  # n = -10 -> position 90
    with pytest.raises(ParamError):
        fraction_threshold(values, 1.0)


def test_fraction_threshold_keeps_dtype():
    values = np.array([0.3, 0.2, 0.1], dtype=np.float32)
    t = fraction_threshold(values, 0.5)
    assert t.dtype == np.float32 and t == np.float32(0.2)


def test_float32_scores_compare_with_float32_threshold():
    v32 = np.array([0.28, 0.2799999], dtype=np.float32)
    # 0.28000001 rounds to float32(0.28): kept in float32 although 0.2800000012 < 0.28000001 in float64
    assert at_least(v32, 0.28000001).tolist() == [True, False]
    assert at_least(v32.astype(np.float64), 0.28000001).tolist() == [False, False]
    assert at_least(np.array([np.nan, 1.0]), 0.5).tolist() == [False, True]


@pytest.mark.parametrize(
    "args, ok",
    [
        (("no_filter",), True),
        (("basic_filter", None, 0.3), False),
        (("clip_score", 0.3, None, "l14"), True),
        (("clip_score", None, 0.3, "b32"), True),
        (("clip_score", 0.3, None, None), False),
        (("clip_score", None, None, "l14"), False),
        (("clip_score", 0.3, 0.3, "l14"), False),
        (("laion2b",), True),
        (("laion2b", None, None, "b32"), False),
        (("text_based", None, None, "l14"), False),
        (("image_based", None, None, None, "small"), True),
        (("image_based",), False),
        (("image_based", None, 0.3, "l14", "small"), False),
        (("image_based_intersect_clip_score", None, 0.3, "l14", "small"), True),
        (("image_based_intersect_clip_score", None, 0.3, "l14"), False),
        (("basic_filter", None, None, None, "small"), False),
    ],
)
def test_check_args_matches_datacomp(args, ok):
    if ok:
        check_args(*args)
    else:
        with pytest.raises(ParamError):
            check_args(*args)



def test_space_rule_on_every_code_point_up_to_u3100_and_the_rest_of_pythons_spaces():
    chars = [chr(c) for c in range(0x3100) if not 0xD800 <= c < 0xE000] + ["\U0001f600", "\uffff", "\u3000"]
    texts = [f"a{c}b{c}" for c in chars]
    assert textstats.split_word_counts(pa.array(texts)).tolist() == [len(t.split()) for t in texts]
    assert textstats.char_counts(pa.array(texts)).tolist() == [len(t) for t in texts]
    assert textstats.fasttext_token_counts(pa.array(texts)).tolist() == [len(fasttext_tokenize(t)) for t in texts]


def test_numeric_columns_without_pandas_nulls_and_slices():
    from clipsift.baselines.common import float_column, take

    class Batch:
        def __init__(self, col):
            self.col = col

        def column(self, name):
            return self.col

    cases = [
        pa.array([1, 2, None, 4, 5, 6, 7, 8, 9, None], pa.int64()).slice(3, 7),
        pa.chunked_array([pa.array([1, 2], pa.int32()), pa.array([None, 4], pa.int32())]),
        pa.array([1.5, None], pa.float32()),
        pa.chunked_array([pa.array([5, 6], pa.uint16())]),
        pa.array([], pa.int64()),
    ]
    for col in cases:
        expected = col.to_pandas().to_numpy()
        got = float_column(Batch(col), "x")
        assert got.dtype == expected.dtype and np.array_equal(got, expected, equal_nan=True)
    assert take(pa.array(["a", "b", "c"]), np.array([2, 0])).to_pylist() == ["c", "a"]

# ---- language ID ---------------------------------------------------------------------------------
class Recorder:
    def __init__(self):
        self.seen = []

    def predict(self, texts):
        self.seen.extend(texts)
        return ["en" if "english" in t else "xx" for t in texts]


def test_lf_replaced_before_language_id_cr_tab_kept():
    rec = Recorder()
    mask = english_mask(pa.array(["english\ntext", "english\rtext\t", "other", "english\ntext"]), rec)
    assert mask.tolist() == [True, True, False, True]
    assert sorted(rec.seen) == sorted(["english text", "english\rtext\t", "other"])  # distinct texts, once each


def test_real_fasttext_model_on_obvious_sentences():
    lid = FastTextLID(str(assets.bundled_lid_model()))
    texts = [
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "Le renard brun rapide saute par-dessus le chien paresseux.",
        "El rápido zorro marrón salta sobre el perro perezoso.",
    ]
    assert languages(pa.array(texts), lid).tolist() == ["en", "de", "fr", "es"]


def test_batched_fasttext_equals_the_per_string_wrapper_datacomp_calls():
    import fasttext

    path = str(assets.bundled_lid_model())
    texts = [
        "a photo of a dog on the beach", "Der Hund am Strand", "", " ", "\t", "\x00", "é", "日本語のテキスト",
        "a\rb", "\u3000x", "x\x0by\x0cz", "\U0001f600" * 3, "\x85\xa0", "ok " * 2000, "Привет мир", "hola",
    ]
    wrapper = fasttext.load_model(path)
    expected = [wrapper.predict(t)[0][0].split("__label__")[1] for t in texts]  # DataComp's call
    assert FastTextLID(path, memoize=False).predict(texts) == expected
    lid = FastTextLID(path)
    assert lid.predict(texts) == expected and lid.predict(texts[::-1]) == expected[::-1]  # memo hits


def langid_buckets(texts, parts):
    from clipsift.baselines.langid import buckets

    return buckets(texts, parts)


def test_captions_of_all_shards_are_asked_once_bucket_by_bucket():
    from clipsift.baselines.langid import english_by_bucket, group_by_bucket
    from clipsift.executor import LocalExecutor

    texts = ["english a", "b", "", "b", "english c", "english a", "日本", "english é"] * 3
    b1, b2 = langid_buckets(pa.array(texts), 5), langid_buckets(pa.array(texts[::-1]), 5)
    assert b1.tolist() == b2.tolist()[::-1] and 0 <= b1.min() and b1.max() < 5
    shards = [pa.array(["english a", "b"]), pa.array([], pa.string()), pa.array(["b", "english c", "english a", "", "日本"])]
    for parts, workers in ((1, 1), (4, 1), (3, 2)):
        grouped = [group_by_bucket(t, parts) for t in shards]
        rec = Recorder()
        flags = english_by_bucket([(g, c) for g, c, _ in grouped], rec, LocalExecutor(workers, show_progress=False))
        per_text = [f[where].tolist() for f, (_, _, where) in zip(flags, grouped)]
        assert per_text == [[True, False], [], [False, True, True, False, False]]
        if workers == 1:
            assert sorted(rec.seen) == sorted(["english a", "b", "english c", "", "日本"])  # once in the whole job
    assert english_by_bucket([], Recorder(), LocalExecutor(1)) == []


def test_lid_bin_is_sha_checked(tmp_path):
    fake = tmp_path / "lid.176.bin"
    fake.write_bytes(b"not the model")
    with pytest.raises(ClipsiftError, match="sha256") as exc:
        assets.resolve_lid_model(str(fake))
    assert "\n" not in str(exc.value)
    path, exact = assets.resolve_lid_model(None)
    assert path.name == "lid.176.ftz" and not exact
    assert assets.sha256_file(path) == assets.LID_FTZ_SHA256


def test_claimed_datacomp_centroids_are_sha_checked(tmp_path):
    from clipsift.baselines.centroids import save_centroids

    own = tmp_path / "mine.pt"
    save_centroids(own, np.eye(3, dtype=np.float32))
    arr, verified = assets.load_centroids(str(own))
    assert arr.tolist() == np.eye(3).tolist() and not verified
    claimed = tmp_path / "small_centroids_l14.pt"
    claimed.write_bytes(own.read_bytes())
    with pytest.raises(ClipsiftError, match="sha256"):
        assets.load_centroids(str(claimed))
    with pytest.raises(ClipsiftError, match="sha256"):
        assets.load_centroids(str(own), scale="medium")
