"""Training arguments: equal to what DataComp's train.py derives (spec tables), data-dir resolution,
samples seen, dry run."""

from __future__ import annotations

import json
import pickle

import pytest

from clipsift.cli import main as cli
from clipsift.eval.scales import available_scales, get_scale_config
from clipsift.eval.train import (
    TrainConfig,
    build_open_clip_args,
    info_dict,
    resolve_train_data,
    samples_seen,
    torchrun_command,
)


def datacomp_args(data, scale_model, batch, lr, warmup, samples, *, precision="amp", workers=4, ckpts=5, out="out", name="x", seed=0, accum=1, log_n=100, resume="latest", save_freq=0):
    """The list written out by hand from the spec's table (tracks.md §3), in its exact order."""
    return [
        "--save-frequency", str(save_freq), "--ddp-static-graph", "--local-loss", "--gather-with-grad", "--grad-checkpointing",
        "--train-data", data, "--train-num-samples", str(samples // ckpts), "--warmup", str(warmup),
        "--dataset-type", "webdataset", "--precision", precision, "--workers", str(workers), "--model", scale_model,
        "--batch-size", str(batch), "--epochs", str(ckpts), "--lr", lr, "--logs", out, "--name", name, "--seed", str(seed),
        "--accum-freq", str(accum), "--log-every-n-steps", str(log_n), "--save-most-recent", "--resume", resume,
        "--dataset-resampled",
    ]


def cfg(scale, **kw):
    base = dict(scale=scale, data_dir="unused", output_dir="out", exp_name="x", workers=4, precision="amp", num_checkpoints=5, log_every_n_steps=100)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize(
    "scale,world,accum,expected",
    [
        ("small", 1, 1, datacomp_args("D", "ViT-B-32", 4096, "0.0005", 500, 12_800_000)),
        ("small", 8, 1, datacomp_args("D", "ViT-B-32", 512, "0.0005", 500, 12_800_000)),
        ("small", 8, 2, datacomp_args("D", "ViT-B-32", 256, "0.0005", 500, 12_800_000, accum=2)),
        ("medium", 1, 1, datacomp_args("D", "ViT-B-32", 4096, "0.0005", 500, 128_000_000)),
        ("medium", 16, 1, datacomp_args("D", "ViT-B-32", 256, "0.0005", 500, 128_000_000)),
        ("medium", 3, 1, datacomp_args("D", "ViT-B-32", 1365, "0.0005", 500, 128_000_000)),  # floor division
    ],
)
def test_small_medium_args_equal_datacomp(scale, world, accum, expected):
    assert build_open_clip_args(cfg(scale, accum_freq=accum), world, train_data="D") == expected


def test_scale_specific_flags():
    xl = build_open_clip_args(cfg("xlarge"), 64, train_data="D")
    assert xl[-2:] == ["--beta2", "0.95"] and "--lr" in xl and xl[xl.index("--lr") + 1] == "0.001"
    assert xl[xl.index("--batch-size") + 1] == str(90112 // 64)
    debug = build_open_clip_args(cfg("debug"), 1, train_data="D")
    assert "--beta2" not in debug and debug[debug.index("--lr") + 1] == "0.0001"
    large = build_open_clip_args(cfg("large", num_checkpoints=8, seed=3, grad_clip_norm=1.0, report_to_wandb=True), 1, train_data="D", weights="1::2")
    assert large[large.index("--model") + 1] == "ViT-B-16"
    assert large[large.index("--train-num-samples") + 1] == str(1_280_000_000 // 8)
    tail = large[large.index("--dataset-resampled") + 1:]
    assert tail == ["--report-to", "wandb", "--wandb-project-name", "datanet", "--train-data-upsampling-factors", "1::2", "--grad-clip-norm", "1.0"]


def test_extra_args_come_last_so_open_clip_reads_them():
    """benchmarks/validity_tiny.py --open-clip-args relies on this: argparse keeps the last value."""
    from open_clip_train.params import parse_args

    args = build_open_clip_args(cfg("tiny", extra_args=["--lr", "2e-3", "--batch-size", "64"]), 1, train_data="D")
    assert args[-4:] == ["--lr", "2e-3", "--batch-size", "64"]
    parsed = parse_args(args)
    assert (parsed.lr, parsed.batch_size) == (2e-3, 64)
    assert parse_args(build_open_clip_args(cfg("tiny"), 1, train_data="D")).lr == get_scale_config("tiny")["learning_rate"]


def test_scale_table():
    assert available_scales() == ["debug", "large", "medium", "small", "tiny", "xlarge"]
    assert get_scale_config("small") == {"batch_size": 4096, "learning_rate": 5e-4, "train_num_samples": 12_800_000, "warmup": 500, "model": "ViT-B-32", "beta2": None}
    with pytest.raises(ValueError):
        get_scale_config("huge")


@pytest.mark.parametrize("scale,ckpts,steps", [("debug", 5, 140), ("small", 5, 3140), ("medium", 5, 31260), ("large", 5, 156260), ("xlarge", 5, 142060), ("debug", 8, 128), ("small", 8, 3136), ("medium", 8, 31264), ("large", 8, 156256), ("xlarge", 8, 142048)])
def test_samples_seen_matches_spec(scale, ckpts, steps):
    c = cfg(scale, num_checkpoints=ckpts)
    assert samples_seen(c, 1) == steps * get_scale_config(scale)["batch_size"]


def test_resolve_train_data(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in (0, 1, 3):
        (flat / f"{i:08d}.tar").write_bytes(b"")
    (flat / "00000000_stats.json").write_text("{}")
    assert resolve_train_data(str(flat)) == (f"{flat}/{{00000000..00000003}}.tar", None)
    nested = tmp_path / "nested"
    (nested / "resharded").mkdir(parents=True)
    (nested / "resharded" / "meta.json").write_text(json.dumps({"output_shard_count": 12, "output_shard_format": "{:08d}.tar"}))
    (nested / "plain" / "deeper").mkdir(parents=True)
    (nested / "plain" / "deeper" / "part-07.tar").write_bytes(b"")
    (nested / "part-2.tar").write_bytes(b"")
    data, weights = resolve_train_data(str(nested), "2")
    comps = data.split("::")
    assert f"{nested}/resharded/{{00000000..00000011}}.tar" in comps
    assert f"{nested}/plain/deeper/part-{{00..07}}.tar" in comps
    assert comps[-1] == f"{nested}/part-{{0..2}}.tar"  # tar prefixes come after sub-dirs
    assert weights == "::".join(["2"] * len(comps))
    both, w = resolve_train_data(f"{flat}::{tmp_path}/x.tar", "1::3")
    assert both == f"{flat}/{{00000000..00000003}}.tar::{tmp_path}/x.tar" and w == "1::3"
    assert resolve_train_data("s3://bucket/a/00000001.tar")[0] == "pipe:aws s3 cp s3://bucket/a/00000001.tar -"


def test_tiny_defaults_and_info(tmp_path):
    c = TrainConfig(scale="tiny", data_dir=str(tmp_path), output_dir=str(tmp_path / "o")).resolved(cuda=False)
    assert (c.precision, c.workers, c.num_checkpoints, c.exp_name) == ("fp32", 1, 1, "tiny_scale")
    assert TrainConfig(scale="small", data_dir="d", output_dir="o").resolved(cuda=True).precision == "amp"
    info = info_dict(c)
    assert info["scale"] == "tiny" and info["checkpoint"] == tmp_path / "o" / "tiny_scale" / "checkpoints" / "epoch_latest.pt"
    assert info["data_dir"] == tmp_path and info["scale_config"]["model"] == "clipsift-tiny"
    pickle.dumps(info)


def test_dry_run_prints_torchrun_command(tmp_path, capsys):
    data = tmp_path / "d"
    data.mkdir()
    (data / "00000000.tar").write_bytes(b"")
    rc = cli(["train", "--scale", "small", "--data-dir", str(data), "--output-dir", str(tmp_path / "o"), "--gpus", "8", "--dry-run"])
    assert rc == 0
    line = capsys.readouterr().out.strip()
    expected = torchrun_command(build_open_clip_args(TrainConfig(scale="small", data_dir=str(data), output_dir=str(tmp_path / "o")).resolved(True), 8), 8)
    import shlex

    assert shlex.split(line) == expected
    assert line.startswith("torchrun --nproc_per_node=8 -m open_clip_train.main --save-frequency 0")
    assert "--batch-size 512 " in line and "--train-num-samples 2560000 " in line and "--precision amp " in line


def test_blur_field_rejected(tmp_path):
    from clipsift.errors import ClipsiftError
    from clipsift.eval.train import run_training

    with pytest.raises(ClipsiftError, match="blur-field"):
        run_training(TrainConfig(scale="tiny", data_dir=str(tmp_path), output_dir=str(tmp_path), blur_field="face_bboxes"))


def test_channels_last_on_cpu_converts_and_restores(monkeypatch):
    """On CPU the trainer's models come back in channels-last order; the patch is undone after."""
    import open_clip_train.main as oc_main
    import torch

    from clipsift.eval.train import channels_last_on_cpu, register_model_configs

    register_model_configs()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    original = oc_main.create_model_and_transforms
    conv = lambda model: model.visual.conv1.weight  # noqa: E731 - the tiny ResNet's stem
    with channels_last_on_cpu():
        model, *_ = oc_main.create_model_and_transforms("clipsift-tiny")
        assert conv(model).is_contiguous(memory_format=torch.channels_last)
        assert not conv(model).is_contiguous()
    assert oc_main.create_model_and_transforms is original
    monkeypatch.setenv("CLIPSIFT_CHANNELS_LAST", "0")
    with channels_last_on_cpu():
        model, *_ = oc_main.create_model_and_transforms("clipsift-tiny")
        assert conv(model).is_contiguous()
