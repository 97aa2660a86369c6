"""Compute devices: one place that turns ``--device`` into a torch device name or one error line.

``auto`` means the first CUDA GPU when one is visible, else the CPU. ``cuda`` and ``cuda:N`` need a
visible GPU (and N below the GPU count); ``mps`` needs Apple's Metal backend. Anything else is an
error that names the value and the choices, raised before any work starts.
"""

from __future__ import annotations

import re

from clipsift.errors import ParamError

CHOICES = "auto, cpu, cuda, cuda:N or mps"
_SYNTAX = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def _torch():
    try:
        import torch
    except ImportError:  # torch is a dependency; a broken install means no GPU either
        return None
    return torch


def _cuda_count() -> int:
    torch = _torch()
    if torch is None:
        return 0
    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver reports through exceptions; it means no usable GPU
        return 0


def normalize_device(device: str | None, flag: str = "--device") -> str:
    """Check the spelling only (no torch import): returns the lower-case name."""
    name = (device if device is not None else "auto").strip().lower()
    if not _SYNTAX.match(name):
        raise ParamError(f"{flag} {device or repr(device)}: unknown device; use {CHOICES}")
    return name


def resolve_device(device: str | None, flag: str = "--device") -> str:
    """``auto`` -> ``cuda`` or ``cpu``; ``cuda``/``cuda:N``/``mps`` checked against the hardware."""
    name = normalize_device(device, flag)
    if name == "cpu":
        return name
    if name == "auto":
        return "cuda" if _cuda_count() > 0 else "cpu"
    if name == "mps":
        torch = _torch()
        backend = getattr(getattr(torch, "backends", None), "mps", None)
        if backend is None or not backend.is_available():
            raise ParamError(f"{flag} mps: Apple's Metal backend is not available here; use {flag} cpu or auto")
        return name
    count = _cuda_count()
    if count == 0:
        raise ParamError(
            f"{flag} {name}: no CUDA GPU is visible (torch.cuda.is_available() is False; check the driver and "
            f"CUDA_VISIBLE_DEVICES); use {flag} cpu or auto"
        )
    if ":" in name and int(name.split(":", 1)[1]) >= count:
        raise ParamError(f"{flag} {name}: only {count} GPU(s) visible (cuda:0 to cuda:{count - 1}); pick one of those")
    return name


def check_device(device: str | None, flag: str = "--device") -> str:
    """For the command line: refuse a bad device before any work, without importing torch for
    ``auto`` and ``cpu`` (most filters never need it). Returns the normalised name."""
    name = normalize_device(device, flag)
    if name not in ("auto", "cpu"):
        resolve_device(name, flag)
    return name


def task_resources(device: str) -> dict | None:
    """What a task on ``device`` declares to the executor: one GPU for CUDA work (Ray schedules it
    on a GPU node and sets CUDA_VISIBLE_DEVICES, so ``cuda`` in the task is that GPU), else nothing
    beyond the default CPU."""
    return {"num_gpus": 1} if device.startswith("cuda") else None
