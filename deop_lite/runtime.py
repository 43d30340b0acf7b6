"""Run mode, seeds, paths and device: the one place where deop_lite reads the environment.

``DEOP_CI=1`` switches every notebook and command to CI mode (few steps, small sets). Nothing else in
the package looks at environment variables; code asks ``runtime.CI`` instead. The variables ``torchrun``
sets for multi-GPU runs (``WORLD_SIZE``, ``LOCAL_RANK``) are read here too: ``launched_by_torchrun``.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

CI: bool = os.environ.get("DEOP_CI", "0").strip().lower() in {"1", "true", "yes"}
"""True when the package runs in CI mode (``DEOP_CI=1``)."""

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
DATA_DIR = PROJECT_ROOT / "data"
"""Shipped checkpoints and fixtures (``data/`` at the repository root)."""


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) in one call."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """CUDA when available (never in CI mode; under torchrun this process's GPU), else CPU."""
    if torch.cuda.is_available() and not CI:
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def launched_by_torchrun() -> bool:
    """True in a process started by ``torchrun`` (it sets ``WORLD_SIZE``), even with one process."""
    return "WORLD_SIZE" in os.environ


def local_rank() -> int:
    """This process's index on its machine under torchrun (its GPU), else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def run_mode() -> str:
    """``"CI"``, ``"GPU"`` or ``"CPU"``: what notebooks print in their setup cell."""
    if CI:
        return "CI"
    return "GPU" if default_device().type == "cuda" else "CPU"


def describe() -> str:
    """One line for a notebook's setup cell: run mode, device, torch version and thread count."""
    return (f"run mode: {run_mode()} | device: {default_device()} | torch {torch.__version__} "
            f"| {torch.get_num_threads()} CPU threads")
