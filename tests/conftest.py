"""Shared fixtures. Tests run on a 2-core machine: one torch thread per process keeps concurrent processes
(pytest itself, Ray workers, subprocess CLIs) from oversubscribing the cores, which slows OpenMP down by 10x."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Marks every process this test run starts, Ray's included (they inherit the environment, also once reparented
# after a kill), so that the leftover check below never blames another run's Ray on this shared machine.
RUN_MARK = f"KDSWEEP_TEST_RUN={os.getpid()}-{os.urandom(4).hex()}"
os.environ["KDSWEEP_TEST_RUN"] = RUN_MARK.split("=", 1)[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_worker_niceness", "0")  # as kdsweep's embedded Ray (tune.connect): trials at nice 0

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the in-process sweep tests (docs/ray-notes.md pitfall 7), shut down cleanly at the end."""
    import ray

    from kdsweep.tune import loopback_only

    with loopback_only():  # as kdsweep's embedded Ray: no port beyond 127.0.0.1
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
                 runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", "OMP_NUM_THREADS": "1"}},
                 logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _plugin_registrations_end_with_their_test():
    """A plug-in a test registers (methods, datasets) is gone after it, so that listings and "known: ..." messages
    in later tests of the same worker do not depend on which tests ran before."""
    from kdsweep.data.registry import _DATASETS
    from kdsweep.methods.registry import _METHODS

    saved = [(registry, dict(registry.all())) for registry in (_METHODS, _DATASETS)]
    yield
    for registry, classes in saved:
        registry._classes.clear()
        registry._classes.update(classes)


# Every Ray process this suite starts must be gone when it ends (never `ray stop`: tests stop what they started).
_RAY_DAEMONS = (b"raylet", b"gcs_server", b"ray::", b"default_worker.py", b"dashboard/agent.py", b"log_monitor.py")


def _ray_processes() -> dict[int, str]:
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read()
            if not any(name in cmdline for name in _RAY_DAEMONS):
                continue
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                ours = RUN_MARK.encode() in f.read().split(b"\0")
        except OSError:
            continue
        if ours:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")[:120]
    return found


def pytest_sessionstart(session):
    session.config._ray_before = _ray_processes()


def pytest_sessionfinish(session, exitstatus):
    import time

    before = session.config._ray_before
    deadline = time.time() + 20  # Ray's processes exit a few seconds after their session is shut down
    while (left := {p: c for p, c in _ray_processes().items() if p not in before}) and time.time() < deadline:
        time.sleep(0.5)
    if left:
        lines = "\n".join(f"  {pid}: {cmd}" for pid, cmd in sorted(left.items()))
        print(f"\nRay processes started by the tests are still running:\n{lines}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
