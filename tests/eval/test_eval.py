"""clipsift evaluate: DataComp's eval_results.jsonl records on the tiny suite, resume, checks."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from clipsift.errors import ClipsiftError
from clipsift.eval import evaluate as ev
from clipsift.eval.evalsets import missing_tasks
from clipsift.eval.groups import fairness_metrics, wilds_metrics
from clipsift.eval.tasks import load_tasks
from clipsift.eval.tiny_suite import make_tiny_suite
from clipsift.eval.zeroshot import classification_metrics


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from clipsift.synth import World

    return make_tiny_suite(tmp_path_factory.mktemp("suite"), World(0), size=24)


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_suite_layout(suite):
    tasks = load_tasks("tiny")
    assert [t.key for t in tasks] == ["tiny/concept", "tiny/concept_tail", "tiny/retrieval"]
    for t in tasks:
        root = suite / t.folder
        assert (root / "test" / "nshards.txt").read_text().strip() == "1" and (root / "test" / "0.tar").exists()
    from clipsift.synth import World

    assert (suite / "wds_tiny-concept_test" / "classnames.txt").read_text().split() == list(World(0).concept_names)
    assert (suite / "wds_tiny-retrieval_test" / "dataset_type.txt").read_text().strip() == "retrieval"
    assert missing_tasks(suite, "tiny") == []
    assert make_tiny_suite(suite, __import__("clipsift.synth", fromlist=["World"]).World(0), size=24) == suite  # reused


def test_a_task_list_of_dropped_attributes_renders_their_classes_in_its_own_suite(tmp_path, suite):
    import tarfile

    from clipsift.eval.tasks import EvalTask
    from clipsift.synth import World, vocab

    count = EvalTask("tiny/count", "Count", "acc1", 10, 5)
    other = make_tiny_suite(tmp_path / "dropped", World(0), tasks=[count])
    root = other / count.folder
    assert (root / "classnames.txt").read_text().split() == list(vocab.COUNT_WORDS)
    with tarfile.open(root / "test" / "0.tar") as tar:
        labels = sorted(int(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".cls"))
    assert labels == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # balanced over the five counts
    assert not (other / "wds_tiny-concept_test").exists()
    with pytest.raises(ClipsiftError, match="another world or seed"):  # the marker names its tasks
        make_tiny_suite(suite, World(0), size=24, tasks=[count])


def test_records_resume_and_checks(tmp_path, suite, checkpoint, monkeypatch):
    out = tmp_path / "eval"
    recs = ev.evaluate(out, out, str(suite), "tiny", batch_size=16, use_model=f"clipsift-tiny {checkpoint}", num_workers=0)
    lines = read_records(out / "eval_results.jsonl")
    assert lines == recs
    tasks = load_tasks("tiny")
    assert [r["key"] for r in lines] == [t.key for t in tasks] and [r["dataset"] for r in lines] == [t.name for t in tasks]
    for rec, task in zip(lines, tasks):
        assert list(rec) == ["key", "dataset", "metrics"]
        m = rec["metrics"]
        assert m["main_metric"] == m[task.main_metric]
        if task.main_metric == "acc1":
            assert set(m) == {"acc1", "acc5", "mean_per_class_recall", "main_metric"} and 0 <= m["acc1"] <= 1
        else:
            assert m["mean_recall@1"] == pytest.approx(0.5 * (m["text_retrieval_recall@1"] + m["image_retrieval_recall@1"]))
            assert {"image_retrieval_recall@10", "text_retrieval_recall@5"} <= set(m)
    info = pickle.loads((out / "info.pkl").read_bytes())
    assert info == {"scale_config": {"model": "clipsift-tiny"}, "checkpoint": str(checkpoint)}

    # resume: drop the last record; only that task runs again and the file ends with it
    text = (out / "eval_results.jsonl").read_text().splitlines(keepends=True)
    (out / "eval_results.jsonl").write_text("".join(text[:-1]))
    calls = []
    real = ev.run_task
    monkeypatch.setattr(ev, "run_task", lambda task, *a, **k: calls.append(task.key) or real(task, *a, **k))
    ev.evaluate(out, out, str(suite), "tiny", batch_size=16, num_workers=0)
    assert calls == ["tiny/retrieval"] and len(read_records(out / "eval_results.jsonl")) == 3

    # a different training run's info.pkl in the output dir aborts
    other = tmp_path / "other"
    other.mkdir()
    (other / "info.pkl").write_bytes(pickle.dumps({"scale_config": {"model": "clipsift-tiny"}, "checkpoint": "elsewhere.pt"}))
    with pytest.raises(ClipsiftError, match="another training run"):
        ev.evaluate(other, out, str(suite), "tiny")


def test_missing_evalset_names_the_fix(tmp_path, checkpoint):
    out = tmp_path / "e"
    with pytest.raises(ClipsiftError, match="evalsets"):
        ev.evaluate(out, out, str(tmp_path / "nothing"), "datacomp38", use_model=f"clipsift-tiny {checkpoint}", tasks=["cifar10"])
    missing = dict(missing_tasks(tmp_path / "nothing", "datacomp38"))
    assert len(missing) == 40 and "nshards.txt" in missing["cifar10"]


def test_metric_rules():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0]])
    target = torch.tensor([0, 1, 2, 2])
    m = classification_metrics(logits, target, 3)
    assert m["acc5"] is None and m["acc1"] == 0.75 and m["mean_per_class_recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    meta = np.array([[0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 2, 0]])  # camelyon: hospital, slide, y
    cam = wilds_metrics("wilds/camelyon17", logits, target, meta)
    assert cam["acc_slide:0"] == 1.0 and cam["acc_slide:1"] == 0.5 and cam["count_slide:2"] == 1.0 and cam["acc_wg"] == 0.5
    fmow = wilds_metrics("wilds/fmow", logits, target, np.array([[0, 0, 0], [0, 1, 0], [2, 1, 0], [2, 1, 0]]))
    assert fmow["acc_worst_region"] == 0.5 and fmow["count_region:1"] == 0.0 and "acc_worst_year" in fmow
    geo = fairness_metrics("fairness/geode", logits, target, np.array([[0, 5], [0, 5], [1, 5], [1, 5]]))
    assert geo["acc_wg"] == 0.5 and geo["acc_avg"] == 0.75


def test_datacomp_task_reads_local_webdataset(tmp_path, suite, checkpoint):
    """A DataComp task runs from <data_dir>/wds_<key>_test exactly like the tiny ones (CIFAR-10 from a tiny task)."""
    import shutil

    data = tmp_path / "evalsets"
    shutil.copytree(suite / "wds_tiny-concept_test", data / "wds_cifar10_test")
    out = tmp_path / "dc"
    recs = ev.evaluate(out, out, str(data), "datacomp38", batch_size=16, use_model=f"clipsift-tiny {checkpoint}", num_workers=0, tasks=["cifar10"])
    assert [(r["key"], r["dataset"]) for r in recs] == [("cifar10", "CIFAR-10")]
    assert recs[0]["metrics"]["main_metric"] == recs[0]["metrics"]["acc1"]
    with pytest.raises(ClipsiftError, match="data-dir"):
        ev.evaluate(out, out, None, "datacomp38")
