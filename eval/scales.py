"""Training scales: DataComp's table (``scale_configs.py``) plus ``tiny``, a CPU scale.

The five DataComp entries are copied value for value because the training arguments, the
``info.pkl`` and the leaderboard comparisons all depend on them. ``tiny`` keeps the same keys so
every scale runs through one code path; its model is a small open_clip config shipped in
``model_configs/`` and its run defaults (``RUN_DEFAULTS``) suit a 2-core CPU.
"""

from __future__ import annotations

import copy

SCALE_CONFIGS: dict[str, dict] = {
    "debug": {"batch_size": 1024, "learning_rate": 1e-4, "train_num_samples": 128_000, "warmup": 500, "model": "ViT-B-32", "beta2": None},
    "small": {"batch_size": 4096, "learning_rate": 5e-4, "train_num_samples": 12_800_000, "warmup": 500, "model": "ViT-B-32", "beta2": None},
    "medium": {"batch_size": 4096, "learning_rate": 5e-4, "train_num_samples": 128_000_000, "warmup": 500, "model": "ViT-B-32", "beta2": None},
    "large": {"batch_size": 8192, "learning_rate": 5e-4, "train_num_samples": 1_280_000_000, "warmup": 500, "model": "ViT-B-16", "beta2": None},
    "xlarge": {"batch_size": 90112, "learning_rate": 1e-3, "train_num_samples": 12_800_000_000, "warmup": 10000, "model": "ViT-L-14", "beta2": 0.95},
    "tiny": {"batch_size": 128, "learning_rate": 1e-3, "train_num_samples": 32768, "warmup": 20, "model": "clipsift-tiny", "beta2": None},
}

DATACOMP_SCALES = ("debug", "small", "medium", "large", "xlarge")

# train.py's defaults, overridden per scale where a CPU run needs it; precision None = "amp" on
# CUDA, "fp32" elsewhere (open_clip's amp autocasts to fp16, which CPUs run slowly or not at all).
TRAIN_DEFAULTS = {"workers": 4, "precision": None, "num_checkpoints": 5, "log_every_n_steps": 100}
RUN_DEFAULTS: dict[str, dict] = {"tiny": {"workers": 1, "num_checkpoints": 1, "log_every_n_steps": 10}}

# The model each scale evaluates with; image size decides the tiny suite's rendering size.
TINY_MODEL = "clipsift-tiny"


def available_scales() -> list[str]:
    """Sorted scale names, as DataComp's ``available_scales()`` (plus ``tiny``)."""
    return sorted(SCALE_CONFIGS)


def get_scale_config(scale: str) -> dict:
    """A copy of the scale's config; unknown names raise ``ValueError`` like DataComp."""
    if scale not in SCALE_CONFIGS:
        raise ValueError(f"Unknown scale: {scale}. Please use one of {available_scales()}")
    return copy.deepcopy(SCALE_CONFIGS[scale])


def run_defaults(scale: str) -> dict:
    """train.py's defaults with the scale's overrides (workers, precision, checkpoints, logging)."""
    return {**TRAIN_DEFAULTS, **RUN_DEFAULTS.get(scale, {})}
