"""End to end on CPU: synthetic pool with images -> subset -> reshard -> tiny training -> tiny suite
evaluation (clipsift track run), then resume."""

from __future__ import annotations

import json
import pickle
import tarfile
from pathlib import Path

import pytest

from clipsift.cli import main as cli


@pytest.fixture(scope="module")
def world_pool(tmp_path_factory):
    from clipsift.synth import make_pool

    root = tmp_path_factory.mktemp("track")
    make_pool(root / "pool", 400, seed=3, images=True, shard_rows=150, workers=1)
    return root


def test_track_run_end_to_end(world_pool, capsys):
    from clipsift.eval.tiny_suite import make_tiny_suite

    root = world_pool
    pool = root / "pool"
    suite = make_tiny_suite(root / "suite", pool, size=16)
    subset = root / "half.npy"
    assert cli(["filter", "random", "--pool", str(pool / "metadata"), "--out", str(subset), "--set", "fraction=0.5", "--workers", "1"]) == 0
    run = root / "run"
    argv = ["track", "run", "--subset", str(subset), "--shards", str(pool / "shards"), "--out", str(run),
            "--scale", "tiny", "--train-num-samples", "128", "--eval-data-dir", str(suite), "--seed", "1"]
    assert cli(argv) == 0
    capsys.readouterr()

    # resharded data: every surviving subset uid once, keys <uid>-0
    meta = json.loads((run / "shards" / "meta.json").read_text())
    keys = []
    for sid in range(meta["output_shard_count"]):
        with tarfile.open(run / "shards" / f"{sid:08d}.tar") as tar:
            keys += sorted({m.name.split(".")[0] for m in tar})
    assert all(k.endswith("-0") for k in keys) and len(keys) == meta["output_count"] > 100
    # DataComp training layout and info.pkl
    exp = run / "tiny_scale"
    assert (exp / "checkpoints" / "epoch_latest.pt").exists() and (exp / "checkpoints" / "epoch_1.pt").exists()
    assert (exp / "params.txt").exists() and "Train Epoch: 0" in (exp / "out.log").read_text()
    info = pickle.loads((exp / "info.pkl").read_bytes())
    assert info["scale"] == "tiny" and info["checkpoint"] == exp / "checkpoints" / "epoch_latest.pt"
    assert info["data_dir"] == run / "shards" and info["scale_config"]["train_num_samples"] == 128
    # evaluation records and run.json at the top level
    recs = [json.loads(x) for x in (run / "eval_results.jsonl").read_text().splitlines()]
    assert [r["key"] for r in recs] == ["tiny/concept", "tiny/concept_tail", "tiny/retrieval"]
    rj = json.loads((run / "run.json").read_text())
    for k in ("method", "scale", "seed", "suite", "dataset_size", "samples_seen", "subset", "train_args", "created"):
        assert k in rj
    assert (rj["method"], rj["scale"], rj["seed"], rj["suite"]) == ("random", "tiny", 1, "tiny")
    assert rj["dataset_size"] == 200 and rj["samples_seen"] == 128
    assert rj["subset"]["manifest"]["filter"] == "random" and rj["subset"]["path"] == str(subset.resolve())
    args = rj["train_args"]
    assert args[args.index("--model") + 1] == "clipsift-tiny" and args[args.index("--batch-size") + 1] == "128"
    n = meta["output_shard_count"]
    assert args[args.index("--train-data") + 1] == f"{run / 'shards'}/{{00000000..{n - 1:08d}}}.tar"

    # rerun: nothing is trained or evaluated again
    ckpt_mtime = (exp / "checkpoints" / "epoch_latest.pt").stat().st_mtime
    assert cli(argv) == 0
    assert (exp / "checkpoints" / "epoch_latest.pt").stat().st_mtime == ckpt_mtime
    assert len((run / "eval_results.jsonl").read_text().splitlines()) == 3

    # another subset into the same folder is refused
    other = root / "other.npy"
    assert cli(["filter", "random", "--pool", str(pool / "metadata"), "--out", str(other), "--set", "fraction=0.2", "--workers", "1"]) == 0
    assert cli(argv[:3] + [str(other)] + argv[4:]) == 1
    assert "another subset" in capsys.readouterr().err


def test_track_resumes_after_interrupted_evaluation(world_pool):
    """An interrupted run (training done, results half written) finishes without retraining."""
    run = world_pool / "run"
    if not (run / "run.json").exists():
        pytest.skip("needs the end-to-end run")
    lines = (run / "eval_results.jsonl").read_text().splitlines(keepends=True)
    (run / "eval_results.jsonl").write_text("".join(lines[:1]))
    (run / "run.json").unlink()
    state = json.loads((run / "track_state.json").read_text())
    state.pop("complete")
    (run / "track_state.json").write_text(json.dumps(state))
    argv = ["track", "run", "--subset", str(world_pool / "half.npy"), "--shards", str(world_pool / "pool" / "shards"),
            "--out", str(run), "--scale", "tiny", "--train-num-samples", "128", "--eval-data-dir", str(world_pool / "suite"), "--seed", "1"]
    out_log = (run / "tiny_scale" / "out.log").read_text()
    assert cli(argv) == 0
    assert (run / "tiny_scale" / "out.log").read_text() == out_log
    assert [json.loads(x)["key"] for x in (run / "eval_results.jsonl").read_text().splitlines()][1:] == ["tiny/concept_tail", "tiny/retrieval"]
    assert json.loads((run / "run.json").read_text())["tasks"] == 3
    assert Path(run / "shards" / "meta.json").exists()


def test_tiny_training_is_repeatable_from_its_seed(world_pool):
    """Same data and --seed give bit-identical weights (open_clip's sample shuffle is seeded)."""
    import torch

    shards = world_pool / "run" / "shards"
    if not shards.is_dir():
        pytest.skip("needs the resharded data of test_track_run_end_to_end")
    weights = []
    for seed, name in ((1, "a"), (1, "b"), (2, "c")):
        out = world_pool / f"repeat_{name}"
        argv = ["-q", "train", "--scale", "tiny", "--data-dir", str(shards), "--output-dir", str(out),
                "--train-num-samples", "128", "--seed", str(seed), "--exp-name", "t"]
        assert cli(argv) == 0
        ckpt = torch.load(out / "t" / "checkpoints" / "epoch_latest.pt", map_location="cpu", weights_only=False)
        weights.append(ckpt["state_dict"])
    same = [all(torch.equal(w[k], weights[0][k]) for k in weights[0]) for w in weights[1:]]
    assert same == [True, False]
