import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs ``-n logical``), split the cores between the workers: each worker,
    and every notebook kernel or torchrun process it starts (they inherit OMP_NUM_THREADS), gets
    cores / workers torch threads instead of all of them, so that two workers do not fight over two cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


@pytest.fixture(scope="session")
def vit_b16():
    """A randomly initialised open_clip ViT-B-16 (QuickGELU), built from its config: no download."""
    from deop_lite.clip import load_clip
    torch.manual_seed(0)
    return load_clip("ViT-B-16", pretrained=None)


@pytest.fixture(scope="session")
def toy_clip():
    """The shipped toy CLIP."""
    from deop_lite.clip import load_clip
    return load_clip("toy")
