"""Shared fixtures. Tests run on a 2-core machine: one torch thread per process keeps concurrent processes
(pytest itself, Ray workers, subprocess CLIs) from oversubscribing the cores, which slows OpenMP down by 10x."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the in-process sweep tests (ray-2.60.md pitfall 7), shut down cleanly at the end."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", "OMP_NUM_THREADS": "1"}},
             logging_level="WARNING")
    yield ray
    ray.shutdown()
