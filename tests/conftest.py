"""Shared fixtures. Tests run on a 2-core machine: one torch thread per process keeps concurrent processes
(pytest itself, Ray workers, subprocess CLIs) from oversubscribing the cores, which slows OpenMP down by 10x."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

torch.set_num_threads(1)
