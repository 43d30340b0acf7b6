"""Settings for every test run, of the unit tests (tests/) and of the notebooks (notebooks/, nbval) alike: here at
the root so that ``pytest notebooks -n 2`` gets them too, not only ``make test``."""
import os

import matplotlib
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
