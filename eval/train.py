"""``clipsift train``: DataComp's ``train.py`` on open_clip's own trainer, at every scale.

The argument list handed to ``open_clip_train.main.main`` is built exactly as DataComp derives it
(same flags, order and values), so a run here and a run of DataComp's script train the same model.
On CPU (or one GPU) the trainer runs in this process; with several GPUs the same argument list is
launched under ``torchrun``; when a launcher already set ``WORLD_SIZE`` & co., it runs in-process
as one rank of that job. Afterwards rank 0 writes ``info.pkl`` as DataComp does.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import pickle
import random
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from clipsift.errors import ClipsiftError, MissingDependencyError
from clipsift.eval.scales import get_scale_config, run_defaults
from clipsift.log import get_logger

log = get_logger("eval.train")

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_TRAILING_DIGITS = re.compile(r"\d+$")
_REMOTE = re.compile(r"^\w+://")


def register_model_configs() -> None:
    """Make the model configs shipped with clipsift (``clipsift-tiny``) known to open_clip."""
    import open_clip

    if not set(_shipped_models()) <= set(open_clip.list_models()):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


class _SeededSampleShuffle:
    """webdataset's sample shuffle, seeded like open_clip's shard shuffle (see seed_sample_shuffle)."""

    def __init__(self, bufsize: int = 1000, initial: int = 100, handler=None):
        self.bufsize, self.initial = bufsize, initial

    def __call__(self, src):
        from open_clip_train.data import pytorch_worker_seed
        from webdataset.filters import _shuffle

        return _shuffle(src, self.bufsize, self.initial, random.Random(pytorch_worker_seed()))


def seed_sample_shuffle() -> None:
    """Make a training run repeatable from its ``--seed``.

    open_clip builds its sample shuffle as ``wds.shuffle(bufsize, initial)`` with no generator, and
    webdataset then seeds one from the process id and the clock, so two runs with the same seed see
    samples in different orders and end with different weights. This gives the stage a generator
    seeded from the data-loader worker's seed, which torch derives from ``--seed`` (and which
    changes every epoch), as open_clip already does for its shard shuffle.
    """
    import webdataset

    webdataset.shuffle = _SeededSampleShuffle


def _shipped_models() -> list[str]:
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


@contextlib.contextmanager
def cpu_threads():
    """Bound torch's intra-op threads on CPU (half the cores, env CLIPSIFT_TORCH_THREADS overrides).

    Tiny models gain nothing from many threads, and spinning OpenMP threads competing with the data
    worker (or other jobs) made a 2-core training step 4-8x slower than with one thread.
    """
    import torch

    if torch.cuda.is_available():
        yield
        return
    want = int(os.environ.get("CLIPSIFT_TORCH_THREADS") or max(1, (os.cpu_count() or 1) // 2))
    old = torch.get_num_threads()
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def channels_last_on_cpu():
    """Train convolutional towers in channels-last memory order on CPU.

    oneDNN's convolutions, batch norms and pools run 1.4-1.6x faster per training step of the tiny
    ResNet tower in channels-last order than in torch's default (``benchmarks/bench_tiny_track.py``
    prints both); on CUDA the layout stays open_clip's. Only the weights' strides change, so the
    checkpoints load into any open_clip model; the sums run in another order, so a run differs from
    a default-layout run of the same seed by float rounding. ``CLIPSIFT_CHANNELS_LAST=0`` turns it off.
    """
    import torch

    if torch.cuda.is_available() or os.environ.get("CLIPSIFT_CHANNELS_LAST", "1") == "0":
        yield
        return
    import open_clip_train.main as oc_main

    make = oc_main.create_model_and_transforms

    def make_channels_last(*args, **kwargs):
        model, *rest = make(*args, **kwargs)
        return (model.to(memory_format=torch.channels_last), *rest)

    oc_main.create_model_and_transforms = make_channels_last
    try:
        yield
    finally:
        oc_main.create_model_and_transforms = make


def world_info_from_env() -> tuple[int, int, int]:
    """(local_rank, rank, world_size) from the first set variable, as open_clip/DataComp read them."""
    def first(names, default):
        for name in names:
            if name in os.environ:
                return int(os.environ[name])
        return default

    local = first(("LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"), 0)
    rank = first(("RANK", "PMI_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"), 0)
    world = first(("WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"), 1)
    return local, rank, world


# ---- data dir -> --train-data ------------------------------------------------------------------
def _prepare_filename(name: str) -> str:
    return f"pipe:aws s3 cp {name} -" if name.startswith("s3://") else name


def _list_dir(path: str) -> list[tuple[str, bool]]:
    """(entry path, is_dir) in listing order; local paths keep ``iterdir`` order like DataComp."""
    if _REMOTE.match(path):
        import fsspec

        fs, root = fsspec.core.url_to_fs(path)
        proto = path.split("://", 1)[0]
        return [(f"{proto}://{e['name']}", e["type"] == "directory") for e in fs.ls(root, detail=True)]
    return [(str(p), p.is_dir()) for p in Path(path).iterdir()]


def _read_meta(subdir: str) -> dict | None:
    meta = f"{subdir.rstrip('/')}/meta.json"
    if _REMOTE.match(meta):
        import fsspec

        fs, p = fsspec.core.url_to_fs(meta)
        if not fs.exists(p):
            return None
        with fs.open(p, "r") as fh:
            return json.load(fh)
    if not os.path.exists(meta):
        return None
    with open(meta, encoding="utf-8") as fh:
        return json.load(fh)


def resolve_train_data(data_dir: str, weights: str | None = None) -> tuple[str, str | None]:
    """DataComp's ``get_input_shards``: a data dir (or ``::`` list) to open_clip's shard string.

    Tar files are grouped by stem prefix and written as ``{0..max}`` brace ranges starting at 0
    (width of the first file listed); resharder outputs (sub-dirs with ``meta.json``) become
    ``{F(0)..F(count-1)}.tar``; other sub-dirs recurse. The weight is repeated per component.
    """
    data_dir = str(data_dir)
    if "::" in data_dir:
        parts = data_dir.split("::")
        if weights is None:
            part_weights = [None] * len(parts)
        else:
            part_weights = weights.split("::")
            if len(part_weights) != len(parts):
                raise ClipsiftError(f"--data-weights {weights!r} has {len(part_weights)} parts but the data dir has {len(parts)}; give one weight per '::' part")
        resolved = [resolve_train_data(p, w) for p, w in zip(parts, part_weights)]
        strs = "::".join(r[0] for r in resolved)
        return strs, ("::".join(r[1] for r in resolved) if weights is not None else None)
    if data_dir.endswith(".tar"):
        return _prepare_filename(data_dir), weights
    if not _REMOTE.match(data_dir) and not os.path.isdir(data_dir):
        raise ClipsiftError(f"{data_dir}: training data folder not found; pass the resharded output (clipsift reshard)")
    components: list[str] = []
    prefixes: dict[str, list[str]] = collections.defaultdict(list)
    for entry, is_dir in _list_dir(data_dir):
        stem, suffix = os.path.splitext(entry)
        if suffix == ".tar":
            m = _TRAILING_DIGITS.search(stem)
            if m is None:
                raise ClipsiftError(f"{entry}: tar name has no trailing shard number; DataComp expects names like 00000000.tar")
            prefixes[stem[: m.start()]].append(stem[m.start():])
        elif is_dir:
            meta = _read_meta(entry)
            if meta is not None:
                fmt = meta["output_shard_format"]
                count = int(meta["output_shard_count"])
                if count < 1:
                    raise ClipsiftError(f"{entry}: resharded folder holds 0 samples (meta.json output_shard_count 0); reshard a subset that selects samples of the pool")
                first = fmt.format(0).replace(".tar", "")
                last = fmt.format(count - 1).replace(".tar", "")
                components.append(_prepare_filename(f"{entry.rstrip('/')}/{{{first}..{last}}}.tar"))
            else:
                sub, _ = resolve_train_data(entry, weights)
                if sub:
                    components.extend(sub.split("::"))
    for prefix in sorted(prefixes):
        suffixes = prefixes[prefix]
        last = max(int(s) for s in suffixes)
        width = len(suffixes[0])
        components.append(_prepare_filename(f"{prefix}{{{0:0{width}d}..{last:0{width}d}}}.tar"))
    data_str = "::".join(components)
    if weights is not None:
        weights = "::".join(weights for _ in components)
    return data_str, weights


# ---- open_clip argument list -------------------------------------------------------------------
@dataclass
class TrainConfig:
    """The inputs of DataComp's ``train.py`` (its flags, with its defaults)."""

    scale: str
    data_dir: str
    output_dir: str
    exp_name: str | None = None
    data_weights: str | None = None
    workers: int | None = None
    precision: str | None = None
    num_checkpoints: int | None = None
    seed: int = 0
    accum_freq: int = 1
    log_every_n_steps: int | None = None
    resume: str = "latest"
    save_frequency: int = 0
    report_to_wandb: bool = False
    wandb_project_name: str = "datanet"
    imagenet_val: str | None = None
    blur_field: str | None = None
    grad_clip_norm: float | None = None
    train_num_samples: int | None = None  # override of the scale's samples seen (tiny track only)
    extra_args: list[str] = field(default_factory=list)

    def resolved(self, cuda: bool) -> TrainConfig:
        """Fill unset run options from the scale's defaults (precision: amp on CUDA, fp32 else)."""
        d = run_defaults(self.scale)
        out = TrainConfig(**{**self.__dict__})
        for key in ("workers", "num_checkpoints", "log_every_n_steps"):
            if getattr(out, key) is None:
                setattr(out, key, d[key])
        if out.precision is None:
            out.precision = d["precision"] or ("amp" if cuda else "fp32")
        if out.exp_name is None:
            out.exp_name = f"{self.scale}_scale"
        return out


def build_open_clip_args(cfg: TrainConfig, world_size: int = 1, train_data: str | None = None, weights: str | None = None) -> list[str]:
    """The exact list DataComp's train.py passes to open_clip's ``main`` (order included)."""
    scale = get_scale_config(cfg.scale)
    if cfg.train_num_samples is not None:
        scale["train_num_samples"] = int(cfg.train_num_samples)
    if train_data is None:
        train_data, weights = resolve_train_data(cfg.data_dir, cfg.data_weights)
        if not train_data:
            raise ClipsiftError(f"{cfg.data_dir}: no training shards (.tar) found; pass the folder written by clipsift reshard from a subset that selects samples")
    per_gpu_batch = scale["batch_size"] // (world_size * cfg.accum_freq)
    if per_gpu_batch < 1:
        raise ClipsiftError(f"scale {cfg.scale}: global batch {scale['batch_size']} cannot be split over {world_size} devices x accum {cfg.accum_freq}")
    args = [
        "--save-frequency", f"{cfg.save_frequency}",
        "--ddp-static-graph",
        "--local-loss",
        "--gather-with-grad",
        "--grad-checkpointing",
        "--train-data", f"{train_data}",
        "--train-num-samples", f"{scale['train_num_samples'] // cfg.num_checkpoints}",
        "--warmup", f"{scale['warmup']}",
        "--dataset-type", "webdataset",
        "--precision", f"{cfg.precision}",
        "--workers", f"{cfg.workers}",
        "--model", f"{scale['model']}",
        "--batch-size", f"{per_gpu_batch}",
        "--epochs", f"{cfg.num_checkpoints}",
        "--lr", f"{scale['learning_rate']}",
        "--logs", f"{cfg.output_dir}",
        "--name", f"{cfg.exp_name}",
        "--seed", f"{cfg.seed}",
        "--accum-freq", f"{cfg.accum_freq}",
        "--log-every-n-steps", f"{cfg.log_every_n_steps}",
        "--save-most-recent",
        "--resume", f"{cfg.resume}",
    ]
    args.append("--dataset-resampled")
    if cfg.report_to_wandb:
        args.extend(["--report-to", "wandb", "--wandb-project-name", f"{cfg.wandb_project_name}"])
    if cfg.imagenet_val is not None:
        args.extend(["--imagenet-val", cfg.imagenet_val])
    if cfg.blur_field is not None:
        args.extend(["--blur-field", cfg.blur_field])
    if scale["beta2"] is not None:
        args.extend(["--beta2", f"{scale['beta2']}"])
    if weights is not None:
        args.extend(["--train-data-upsampling-factors", weights])
    if cfg.grad_clip_norm is not None:
        args.extend(["--grad-clip-norm", f"{cfg.grad_clip_norm}"])
    return args + list(cfg.extra_args)


def samples_seen(cfg: TrainConfig, world_size: int = 1) -> int:
    """Samples open_clip actually draws: per epoch ceil(ceil(S/G)/workers)*workers batches of G."""
    scale = get_scale_config(cfg.scale)
    total = int(cfg.train_num_samples or scale["train_num_samples"])
    per_epoch = total // cfg.num_checkpoints
    global_batch = (scale["batch_size"] // (world_size * cfg.accum_freq)) * world_size
    workers = max(1, cfg.workers)
    batches = -(-per_epoch // global_batch)
    batches = -(-batches // workers) * workers
    return batches * global_batch * cfg.num_checkpoints


def torchrun_command(open_clip_args: list[str], nproc: int, torchrun_args: list[str] = ()) -> list[str]:
    """The launcher line for several GPUs on one node (extra torchrun flags for multi-node)."""
    return ["torchrun", f"--nproc_per_node={nproc}", *torchrun_args, "-m", "open_clip_train.main", *open_clip_args]


# ---- running -----------------------------------------------------------------------------------
def experiment_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.output_dir) / cfg.exp_name


def info_dict(cfg: TrainConfig) -> dict:
    """DataComp's info.pkl contents: pathlib objects, the scale's config and the data dir."""
    scale = get_scale_config(cfg.scale)
    if cfg.train_num_samples is not None:
        scale["train_num_samples"] = int(cfg.train_num_samples)
    data_dir = str(cfg.data_dir)
    return {
        "scale": cfg.scale,
        "checkpoint": experiment_dir(cfg) / "checkpoints" / "epoch_latest.pt",
        "scale_config": scale,
        "data_dir": data_dir if _REMOTE.match(data_dir) else Path(data_dir),  # DataComp: Path (CloudPath remote)
    }


def write_info(cfg: TrainConfig) -> Path:
    """Write info.pkl beside the checkpoints folder, after checking the final checkpoint exists."""
    info = info_dict(cfg)
    if not info["checkpoint"].exists():
        raise ClipsiftError(f"{info['checkpoint']}: training finished without a checkpoint; see {experiment_dir(cfg) / 'out.log'}")
    path = experiment_dir(cfg) / "info.pkl"
    from clipsift.io import atomic_write

    with atomic_write(path) as fh:
        pickle.dump(info, fh)
    return path


def _check_flags(cfg: TrainConfig) -> None:
    if cfg.blur_field is not None:
        raise ClipsiftError("--blur-field is passed by DataComp's train.py but no open_clip release defines it; drop the flag")
    try:
        import open_clip_train.main  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"training needs open_clip's trainer ({exc}); pip install 'open_clip_torch[training]'") from exc


def plan(cfg: TrainConfig, gpus: int | None = None) -> tuple[TrainConfig, list[str], list[str] | None, int]:
    """Resolve defaults and decide how to launch: (config, open_clip args, torchrun cmd or None, world)."""
    import torch

    cuda = torch.cuda.is_available() if gpus is None else gpus > 0
    cfg = cfg.resolved(cuda)
    _, _, env_world = world_info_from_env()
    if env_world > 1:  # already launched by torchrun/srun: this process is one rank
        return cfg, build_open_clip_args(cfg, env_world), None, env_world
    ngpu = (torch.cuda.device_count() if gpus is None else gpus) if cuda else 0
    if ngpu > 1:
        args = build_open_clip_args(cfg, ngpu)
        return cfg, args, _with_model_configs(torchrun_command(args, ngpu)), ngpu
    return cfg, build_open_clip_args(cfg, 1), None, 1


def run_training(cfg: TrainConfig, gpus: int | None = None) -> dict:
    """Train, write info.pkl; returns {"exp_dir", "args", "command", "world_size", "samples_seen"}."""
    _check_flags(cfg)
    cfg, args, command, world = plan(cfg, gpus)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    register_model_configs()
    _, rank, _ = world_info_from_env()
    if command is not None:
        log.info("launching: %s", shlex.join(command))
        proc = subprocess.run(command)
        if proc.returncode != 0:
            raise ClipsiftError(f"torchrun exited with status {proc.returncode}; see {experiment_dir(cfg) / 'out.log'}")
    else:
        from open_clip_train.main import main as open_clip_main

        log.info("training in-process (world size %d): open_clip_train.main %s", world, shlex.join(args))
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        if not root.handlers:  # else logging.info() would basicConfig a second echo of every line
            root.addHandler(logging.NullHandler())
        levels = {n: lg.level for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
        seed_sample_shuffle()
        try:
            with cpu_threads(), channels_last_on_cpu():
                status = open_clip_main(list(args))
        finally:  # open_clip's setup_logging sets every logger to its level; give them back
            root.handlers[:] = handlers
            root.setLevel(level)
            for name, lg in logging.root.manager.loggerDict.items():
                if isinstance(lg, logging.Logger):
                    lg.setLevel(levels.get(name, logging.NOTSET))
        if status == -1:
            log.warning("open_clip returned -1 (an existing out.log without --resume latest); checking for a checkpoint")
    if rank == 0:
        write_info(cfg)
    return {"exp_dir": str(experiment_dir(cfg)), "args": args, "command": command, "world_size": world, "samples_seen": samples_seen(cfg, world)}


def _with_model_configs(command: list[str]) -> list[str]:
    """torchrun children must know clipsift's model configs: run open_clip through a shim module."""
    if not any(a == "--model" and m in _shipped_models() for a, m in zip(command, command[1:])):
        return command
    i = command.index("open_clip_train.main")
    return command[:i] + ["clipsift.eval.train_main"] + command[i + 1:]


def dry_run_text(cfg: TrainConfig, gpus: int | None = None) -> str:
    """The command that would run: torchrun line, or the in-process call (shell-quoted)."""
    cfg, args, command, world = plan(cfg, gpus)
    if command is not None:
        return shlex.join(command)
    return shlex.join([sys.executable, "-m", "open_clip_train.main", *args]) + f"  # in-process, world size {world}"
