"""Stand-in DataComp evaluation sets: all 40 entries in DataComp's layouts, and a full offline
``datacomp38`` evaluation on a tiny model (keys and metric names as specs/tracks.md §4)."""

from __future__ import annotations

import io
import json
import math
import re
import tarfile

import numpy as np
import pytest
import torch

from clipsift.errors import ClipsiftError
from clipsift.eval import evaluate as ev
from clipsift.eval.evalsets import missing_tasks
from clipsift.eval.groups import face_metrics, group_ids, wilds_metrics
from clipsift.eval.standin import HF_NAMES, hf_cache_dir, load_hf, make_standin
from clipsift.eval.tasks import load_tasks

pytest.importorskip("datasets")
N = 6


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    from clipsift.synth import World

    return make_standin(tmp_path_factory.mktemp("standin"), seed=3, n=N, max_classes=8, world=World(3, n_concepts=40))


def members(tar_path):
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_all_40_entries_in_datacomp_layout(standin):
    tasks = load_tasks("datacomp38")
    assert len(tasks) == 40 and missing_tasks(standin, "datacomp38") == []
    for t in tasks:
        if t.key in HF_NAMES:
            assert (hf_cache_dir(standin / "hf_cache", HF_NAMES[t.key]) / "dataset_info.json").exists()
            assert not (standin / t.folder).exists()
            continue
        root = standin / t.folder
        classes = (root / "classnames.txt").read_text().splitlines()
        templates = (root / "zeroshot_classification_templates.txt").read_text().splitlines()
        n_shards = int((root / "test" / "nshards.txt").read_text())
        assert n_shards == 2 and templates and all("{c}" in x for x in templates)
        files = {}
        for i in range(n_shards):
            files.update(members(root / "test" / f"{i}.tar"))
        keys = sorted({name.split(".")[0] for name in files})
        assert len(keys) == N
        exts = {name.split(".", 1)[1] for name in files}
        grouped = t.key.startswith(("wilds/", "fairness/"))
        assert exts == ({"png", "cls", "npy"} if grouped else {"png", "cls"}), t.key
        labels = [int(files[f"{k}.cls"]) for k in keys]
        if t.key in ("fairness/fairface", "fairness/utkface"):
            assert {c.split(":", 1)[0] for c in classes} == {"race", "gender", "age", "toxic"}
            assert {x.split(":", 1)[0] for x in templates} == {"race", "gender", "age", "toxic"}
            assert sum(c.startswith("toxic:") for c in classes) >= 19  # crime classes start at 18
        else:
            assert all(0 <= y < len(classes) for y in labels)
            if t.num_classes is not None and t.num_classes <= 5:
                assert len(classes) == t.num_classes  # keeps the acc5-is-None rule of < 5 classes
        if grouped:
            meta = np.stack([np.load(io.BytesIO(files[f"{k}.npy"])) for k in keys])
            assert meta.dtype == np.int64
            width = {"wilds/iwildcam": 9, "wilds/camelyon17": 3, "wilds/fmow": 3, "fairness/dollar_street": 3,
                     "fairness/geode": 2, "fairness/fairface": 4, "fairness/utkface": 4}[t.key]
            assert meta.shape == (N, width)
            if t.key == "wilds/fmow":
                assert meta[:, 0].max() <= 5 and (meta[:, 0] == 5).any() and set(meta[:, 1]) <= {14, 15}
                assert (meta[:, 2] == labels).all()
            if t.key == "wilds/camelyon17":
                assert (meta[:, 0] == 2).all() and meta[:, 1].min() >= 20
            if t.key == "fairness/dollar_street":
                assert meta[:, 0].max() <= 3
            if t.key.endswith("face"):
                assert (meta[:, 3] == (meta[:, 2] != 1)).all()
    # reused as is; other parameters need --overwrite
    assert make_standin(standin, seed=3, n=N, max_classes=8, world=__import__("clipsift.synth", fromlist=["World"]).World(3, n_concepts=40)) == standin
    with pytest.raises(ClipsiftError, match="overwrite"):
        make_standin(standin, seed=4, n=N)


def test_hf_sets_open_offline_with_real_columns(standin, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    flickr = load_hf("flickr_1k_test_image_text_retrieval", standin)
    assert {"image", "caption", "sentids", "img_id", "filename"} <= set(flickr.column_names)
    assert len(flickr) >= 10 and len(flickr[0]["caption"]) == 5 and flickr[0]["image"].size == (64, 64)
    wino = load_hf("winogavil", standin)
    assert {"cue", "candidates", "associations", "candidate_images"} <= set(wino.column_names)
    sizes = [len(ex["candidates"]) for ex in wino]
    assert set(sizes) == {5, 6} | ({10, 12} if N >= 4 else set())
    for ex in wino:
        assert len(ex["candidate_images"]) == len(ex["candidates"]) and set(ex["associations"]) <= set(ex["candidates"])
    with pytest.raises(ClipsiftError, match="offline"):
        load_hf("winogavil", standin / "nowhere")


# metric names of each task family (specs/tracks.md §4)
CLASSIFICATION = {"acc1", "acc5", "mean_per_class_recall"}
RETRIEVAL = {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)} | {"mean_recall@1"}
WINO = {"avg_jaccard_score", "jaccard_score_5", "jaccard_score_6", "jaccard_score_10", "jaccard_score_12",
        "jaccard_score_5-6", "jaccard_score_10-12"}


def expected_keys(key: str, metrics: dict) -> set:
    if key.startswith("retrieval/"):
        return RETRIEVAL
    if key == "misc/winogavil":
        return WINO
    if key == "wilds/iwildcam":
        return CLASSIFICATION | {"acc_avg", "recall-macro_all", "F1-macro_all"}
    if key.endswith("face"):
        names = {k for k in metrics if not k.startswith("count_")}
        assert {"acc_race_avg", "acc_race_wg", "acc_gender_avg", "acc_age_wg", "acc_gender_x_wg",
                "toxicity_crime_wg", "toxicity_nonhuman_avg"} <= names
        return set(metrics) - {"main_metric"}
    if key.startswith(("wilds/", "fairness/")):
        return set(metrics) - {"main_metric"}
    return CLASSIFICATION


def test_full_datacomp38_on_cpu(tmp_path, standin, checkpoint, monkeypatch, capsys):
    out = tmp_path / "eval"
    recs = ev.evaluate(out, out, str(standin), "datacomp38", batch_size=4, use_model=f"clipsift-tiny {checkpoint}", num_workers=0)
    lines = [json.loads(x) for x in (out / "eval_results.jsonl").read_text().splitlines()]
    tasks = load_tasks("datacomp38")
    assert lines == recs and len(lines) == 40
    assert [r["key"] for r in lines] == [t.key for t in tasks] and [r["dataset"] for r in lines] == [t.name for t in tasks]
    for rec, t in zip(lines, tasks):
        assert list(rec) == ["key", "dataset", "metrics"]
        m = rec["metrics"]
        assert set(m) - {"main_metric"} == expected_keys(t.key, m), t.key
        if t.key.endswith("face"):
            assert m["main_metric"] is None and "acc1" not in m
            continue
        assert m["main_metric"] == m[t.main_metric] and 0 <= m["main_metric"] <= 1, t.key
        if t.key.startswith(("wilds/", "fairness/")) or t.key in HF_NAMES:
            continue
        assert (m["acc5"] is None) == (t.num_classes < 5), t.key
    by = {r["key"]: r["metrics"] for r in lines}
    assert by["retrieval/mscoco_2014_5k_test_image_text_retrieval"]["mean_recall@1"] == pytest.approx(
        0.5 * (by["retrieval/mscoco_2014_5k_test_image_text_retrieval"]["text_retrieval_recall@1"]
               + by["retrieval/mscoco_2014_5k_test_image_text_retrieval"]["image_retrieval_recall@1"]))
    fmow = by["wilds/fmow"]
    assert {"acc_worst_year", "acc_region:5", "count_region:5", "acc_worst_region_datacomp"} <= set(fmow)
    assert fmow["acc_worst_region_datacomp"] <= fmow["acc_worst_region"]
    assert by["wilds/camelyon17"]["count_slide:0"] == 0 and by["wilds/camelyon17"]["acc_slide:0"] is None  # empty: null

    # resume: only the dropped last line is evaluated again
    text = (out / "eval_results.jsonl").read_text().splitlines(keepends=True)
    (out / "eval_results.jsonl").write_text("".join(text[:-1]))
    calls = []
    real = ev.run_task
    monkeypatch.setattr(ev, "run_task", lambda task, *a, **k: calls.append(task.key) or real(task, *a, **k))
    ev.evaluate(out, out, str(standin), "datacomp38", batch_size=4, num_workers=0)
    assert calls == ["fairness/utkface"] and len((out / "eval_results.jsonl").read_text().splitlines()) == 40

    # `clipsift leaderboard aggregate` prints DataComp's five groups (38 non-null main metrics)
    from clipsift.cli import main

    capsys.readouterr()
    assert main(["leaderboard", "aggregate", str(out / "eval_results.jsonl")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in printed] == ["ImageNet", "ImageNet dist. shifts", "VTAB", "Retrieval", "Average"]
    mains = [r["metrics"]["main_metric"] for r in lines if r["metrics"]["main_metric"] is not None]
    assert len(mains) == 38 and printed[-1] == f"Average: {np.mean(mains):.3f}"


def test_group_rules_match_wilds():
    # CombinatorialGrouper: fields in metadata order, names last field first
    meta = np.array([[0, 1, 2, 1], [5, 0, 1, 0], [3, 1, 0, 1]])
    g, names = group_ids(meta, ("age", "gender", "race", "race_binary"), ["gender", "race"])
    assert names[:3] == ["race:0_gender:0", "race:0_gender:1", "race:1_gender:0"] and len(names) == 6
    assert list(g) == [1 + 2 * 2, 0 + 2 * 1, 1 + 2 * 0]
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0]])
    target = torch.tensor([0, 1, 2, 2])
    # FMoW: "Other" (5) excluded from acc_worst_region; DataComp's figure includes it
    fmow = wilds_metrics("wilds/fmow", logits, target, np.array([[0, 14, 0], [0, 14, 1], [5, 15, 2], [1, 15, 2]]))
    assert fmow["acc_region:5"] == 0.0 and fmow["count_region:2"] == 0.0 and math.isnan(fmow["acc_region:2"])
    assert fmow["acc_worst_region"] == 1.0 and fmow["acc_worst_region_datacomp"] == 0.0 and fmow["acc_worst_year"] == 0.5
    # float32 group means as wilds: 2/3 is the float32 value
    cam = wilds_metrics("wilds/camelyon17", torch.tensor([[1.0, 0.0]] * 3), torch.tensor([0, 0, 1]), np.array([[2, 0, 0]] * 3))
    assert cam["acc_avg"] == float(np.float32(2 / 3)) and cam["acc_wg"] == cam["acc_slide:0"]
    # FairFace: race hit = (pred != White) == race_binary; toxic >= 18 crime, 14..17 non-human
    y_pred = np.array([[1, 0, 3, 18], [4, 1, 2, 15], [0, 1, 0, 2]])
    face_meta = np.array([[3, 0, 1, 0], [2, 1, 4, 1], [0, 0, 0, 1]])
    m = face_metrics(y_pred, face_meta)
    assert m["acc_race_avg"] == 1.0 and m["acc_gender_avg"] == float(np.float32(2 / 3)) and m["acc_age_avg"] == 1.0
    assert m["toxicity_crime_race:1"] == 1.0 and m["toxicity_nonhuman_race:4"] == 1.0 and m["toxicity_crime_avg"] == float(np.float32(1 / 3))
    assert math.isnan(m["toxicity_crime_race:2"]) and m["count_race:2"] == 0.0
    assert re.fullmatch(r"acc_gender_x_race:\d_gender:\d", next(k for k in m if k.startswith("acc_gender_x_race")))


def test_standin_cli_subset_of_tasks(tmp_path, capsys):
    from clipsift.cli import main

    out = tmp_path / "sets"
    assert main(["evalsets", "standin", "--data-dir", str(out), "--task", "cifar10", "--task", "misc/winogavil", "--n", "2"]) == 0
    assert sorted(dict(missing_tasks(out, "datacomp38"))) == sorted(t.key for t in load_tasks("datacomp38") if t.key not in ("cifar10", "misc/winogavil"))
    assert json.loads((out / "standin.json").read_text())["tasks"] == ["cifar10", "misc/winogavil"]
    assert main(["evalsets", "standin", "--data-dir", str(out), "--n", "2", "--seed", "5"]) == 1  # other parameters
    assert "--overwrite" in capsys.readouterr().err


def test_hf_offline_block_restores_state(monkeypatch):
    import datasets
    import huggingface_hub.constants as hub

    from clipsift.eval.zeroshot import hf_offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    with hf_offline():
        assert datasets.config.HF_HUB_OFFLINE and hub.HF_HUB_OFFLINE and __import__("os").environ["HF_HUB_OFFLINE"] == "1"
    assert not datasets.config.HF_HUB_OFFLINE and not hub.HF_HUB_OFFLINE and "HF_HUB_OFFLINE" not in __import__("os").environ
