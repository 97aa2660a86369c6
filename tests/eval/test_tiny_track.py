"""The tiny track as an instrument: the track world, the concept tasks, seedless ground-truth
quality, and ties by seed std in the demo table and the leaderboard page."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from clipsift.errors import ParamError


@pytest.fixture(scope="module")
def track_pool(tmp_path_factory):
    from clipsift.synth import make_pool

    root = tmp_path_factory.mktemp("trackworld")
    make_pool(root / "pool", 3000, seed=5, world="track", workers=1)
    return root / "pool"


def test_track_world_has_heavy_tailed_duplicates_and_long_tailed_concepts(track_pool):
    from clipsift.synth import World
    from clipsift.synth.world import TRACK_WORLD

    t = pq.read_table(track_pool / "truth.parquet").to_pandas()
    sizes = t[t.dup_group >= 0].groupby("dup_group").size()
    in_groups = sizes.sum() / len(t)
    assert abs(in_groups - 0.30) < 0.02  # 10% exact + 20% near rows in duplicate groups
    assert sizes.max() > 10 and sizes.max() <= max(10, int(0.02 * len(t)))  # a few items repeated many times
    assert np.median(sizes) <= 3  # most duplicated items appear only a few times
    w = World.from_json(track_pool / "world.json")
    assert (w.n_concepts, w.zipf, w.dup_power) == (32, 1.0, TRACK_WORLD["dup_power"])
    tail = w.tail_concepts()
    assert len(tail) == 8 and w.concept_freq[tail].max() < np.sort(w.concept_freq)[8]
    counts = t.concept.value_counts()
    assert counts.max() > 8 * counts.min()  # long-tailed in the pool itself
    # near-duplicate copies stay mild re-encodings however big their group
    assert t.variant.max() <= 8


def test_world_rejects_bad_duplicate_parameters():
    from clipsift.synth import World, make_pool

    with pytest.raises(ParamError, match="dup_power"):
        World(0, dup_power=1.0)
    with pytest.raises(ParamError, match="world="):
        make_pool("/nonexistent/never", 10, world="huge")


def test_concept_tasks_are_balanced_and_the_tail_task_shows_only_tail_concepts(tmp_path):
    from clipsift.eval.tiny_suite import make_tiny_suite
    from clipsift.synth import World
    from clipsift.synth.world import TRACK_WORLD

    w = World(0, **TRACK_WORLD)
    suite = make_tiny_suite(tmp_path / "suite", w, size=64)
    labels = {}
    for name in ("concept", "concept_tail"):
        root = suite / f"wds_tiny-{name}_test"
        assert (root / "classnames.txt").read_text().split("\n")[:-1] == w.concept_names
        templates = (root / "zeroshot_classification_templates.txt").read_text().splitlines()
        assert len(templates) == 16 and all("{c}" in t for t in templates)
        with tarfile.open(root / "test" / "0.tar") as tar:
            labels[name] = np.array([int(tar.extractfile(m).read()) for m in tar if m.name.endswith(".cls")])
    assert np.bincount(labels["concept"], minlength=32).tolist() == [2] * 32
    tail = set(w.tail_concepts().tolist())
    assert set(labels["concept_tail"].tolist()) == tail
    assert np.bincount(labels["concept_tail"]).max() == 8


def test_subset_quality_reads_the_truth(track_pool):
    from clipsift.synth.quality import oracle_mask, read_truth, subset_quality
    from clipsift.uids import hex_to_records

    t = read_truth(track_pool)
    rec = hex_to_records(t["uid"])
    whole = subset_quality(track_pool, rec)
    df = pq.read_table(track_pool / "truth.parquet").to_pandas()
    assert whole["rows"] == len(df)
    assert whole["mismatched"] == pytest.approx(100 * df.is_mismatched.mean(), abs=0.01)
    assert whole["non_english"] == pytest.approx(100 * (df.lang != "en").mean(), abs=0.01)
    assert whole["duplicated"] == pytest.approx(100 * df.is_dup_copy.mean(), abs=0.01)  # copies beyond the first
    clean = oracle_mask(t)
    q = subset_quality(track_pool, rec[clean])
    assert q["mismatched"] == q["non_english"] == q["duplicated"] == 0.0 and 0 < q["rows"] < len(df)
    # a uid listed twice is a repeat; one row of a duplicate group is not
    one = np.flatnonzero(df.dup_group.to_numpy() < 0)[:10]
    q2 = subset_quality(track_pool, np.concatenate([rec[one], rec[one[:1]]]))
    assert q2["rows"] == 11 and q2["duplicated"] == pytest.approx(100 / 11, abs=0.01)
    group = df.dup_group.to_numpy()
    members = np.flatnonzero(group == group[group >= 0][0])
    q3 = subset_quality(track_pool, rec[members])
    assert q3["duplicated"] == pytest.approx(100 * (len(members) - 1) / len(members), abs=0.01)


def _run(method, average, seed, **scores):
    return {"method": method, "average": average, "seed": seed, "dataset_size": 100, "scores": scores}


def test_demo_table_marks_ties_by_two_seed_std():
    from clipsift.eval.demo import summary_table

    runs = [_run("a", 0.40, 0, **{"tiny/retrieval": 0.30}), _run("a", 0.42, 1, **{"tiny/retrieval": 0.32}),
            _run("b", 0.39, 0), _run("b", 0.41, 1),
            _run("c", 0.20, 0), _run("c", 0.21, 1)]
    quality = {"a": {"mismatched": 1.0, "duplicated": 2.0, "non_english": 3.0, "concepts": 31, "concepts_of": 32, "tail": 5.5}}
    table = summary_table(runs, quality).splitlines()
    assert table[0].startswith("| method | seeds | size | average | concepts | tail concepts | retrieval | vs best |")
    assert table[2].startswith("| a | 2 | 100 | 0.410 ± 0.014 | — | — | 0.310 ± 0.014 | best |")
    assert table[3].startswith("| b |") and "| tied |" in table[3]
    assert table[4].startswith("| c |") and "| -0.205 |" in table[4]
    assert "| 1.0 | 2.0 | 3.0 | 31/32 | 5.5 |" in table[2]


def test_page_ties_and_quality_table(tmp_path):
    from clipsift.leaderboards.page import quality_table, ties
    from clipsift.leaderboards.store import RunGroup
    from clipsift.leaderboards.tables import Leaderboard, LeaderboardRow

    rows = [LeaderboardRow("a", "yours", average=0.41, average_std=0.014, seeds=2),
            LeaderboardRow("b", "yours", average=0.40, average_std=0.014, seeds=2),
            LeaderboardRow("c", "yours", average=0.20, average_std=0.01, seeds=2),
            LeaderboardRow("d", "yours", average=0.405)]
    assert ties(Leaderboard("tiny", "tiny", "filtering", rows)) == [["b"], ["a"], [], []]

    class FakeRun:
        def __init__(self, path):
            self.path = path

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"data_quality": {"rows": 1200, "mismatched": 0.5, "duplicated": 20.0,
                                                                   "non_english": 4.0, "concepts": 30, "concepts_of": 32, "tail": 7.25}}))
    g = RunGroup.__new__(RunGroup)
    g.runs, g.label = [FakeRun(run_dir)], "clip_score"
    html = quality_table([g])
    assert "Data quality from the ground truth" in html and "30/32" in html and "1,200" in html and "7.2" in html
    g.runs = [FakeRun(tmp_path)]
    assert quality_table([g]) == ""


def test_demo_log_redirect_keeps_the_terminal_quiet(tmp_path, capsys):
    import logging

    from clipsift.eval.demo import _log_to, _Stages
    from clipsift.log import configure_logging, get_logger

    configure_logging(0)
    st = _Stages(2, io.StringIO())
    with _log_to(tmp_path / "demo.log"):
        with st.stage("first", items=3) as s:
            get_logger("eval.demo").info("inner detail")
            s["detail"] = "ok"
    assert "inner detail" in (tmp_path / "demo.log").read_text()
    assert "inner detail" not in capsys.readouterr().err
    assert st.stream.getvalue().startswith("[1/2] first: ok (")
    assert any(getattr(h, "_clipsift", False) for h in logging.getLogger("clipsift").handlers)


def test_track_world_images_carry_the_concept_badge():
    from clipsift.synth import World
    from clipsift.synth.world import BADGE_RGB, TRACK_WORLD

    w = World(0, **TRACK_WORLD)
    assert len({tuple(p) for p in w.badges}) == 32  # one distinct colour pair per concept
    lat = w.sample_latents(6, np.random.default_rng(0))
    lat["concept"] = [0, 1, 2, 0, 1, 2]
    img = w.render(lat, size=64).astype(int)
    side = int(round(0.16 * 64))
    for i, c in enumerate(lat["concept"]):
        a, b = w.badges[c]
        assert np.abs(img[i, 3, 3] - BADGE_RGB[a]).max() <= 1
        assert np.abs(img[i, 3, 1 + side + 2] - BADGE_RGB[b]).max() <= 1
    plain = World(0).render(lat, size=64).astype(int)  # the default world: no badge
    assert World(0).badges is None and not all(np.abs(plain[i, 3, 3] - img[i, 3, 3]).max() <= 1 for i in range(6))
    with pytest.raises(ParamError, match="concept_mark"):
        World(0, concept_mark="logo")


def test_concept_and_tail_groups_are_in_the_task_list_and_the_aggregation():
    from clipsift.leaderboards.aggregate import ResultRow, aggregate_rows
    from clipsift.leaderboards.tasks import tiny_tasks

    tl = tiny_tasks()
    assert tl.group_order == ("Concepts", "Tail concepts", "Classification", "Retrieval")
    assert [t.key for t in tl.members("Concepts")] == ["tiny/concept"]
    assert [t.key for t in tl.members("Tail concepts")] == ["tiny/concept_tail"]
    values = {"tiny/concept": 0.3, "tiny/concept_tail": 0.1, "tiny/retrieval": 0.05}
    rows = [ResultRow(k, tl.task(k).name, {"acc1": v, "main_metric": v}, v) for k, v in values.items()]
    agg = aggregate_rows(rows, tl)
    lines = agg.lines()
    assert "Concepts: 0.300" in lines and "Tail concepts: 0.100" in lines
    assert "Retrieval: 0.050" in lines and f"Average: {sum(values.values()) / 3:.3f}" in lines
    assert not any(ln.startswith("Classification") for ln in lines)  # a group without tasks is not shown
    assert [g for g in agg.scores if g != "Average"] == ["Concepts", "Tail concepts", "Retrieval"]
