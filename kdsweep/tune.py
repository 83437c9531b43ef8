"""The only module that imports Ray: student groups as Ray Tune trials.

One trial = one student group (`kdsweep.engine.run_group`) in a long-lived process. Trials report once per epoch.
Resume does not depend on Tune's experiment snapshot (taken only every ~10 s, see ray-2.60.md pitfall 1): every
trial resumes its students from kdsweep's own checksummed checkpoints, so Tune's `FailureConfig` retries and a new
`kdsweep run` after a crash both continue where the work stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import ray
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kdsweep.engine import EpochReport, GroupSpec, run_group
from kdsweep.errors import UserError
from kdsweep.storage import Store

# Environment for every Ray worker: absolute paths are used throughout, but keep trials in the launch directory
# anyway (pitfall 3); no usage-stats phone-home from laptops or clusters without internet.
WORKER_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


_STARTED_HERE: list[bool] = []  # non-empty while a session started by `connect` is up


@dataclass(frozen=True)
class Resources:
    cpu: float
    gpu: float


def connect(address: str | None, resources: Resources) -> str:
    """Start an embedded local Ray (default) or join a cluster; returns a description for the manifest."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": WORKER_ENV}
    if ray.is_initialized():  # a session the caller started (a notebook, the test suite): use it, leave it running
        _STARTED_HERE.clear()
        check_resources(resources)
        return "existing Ray session"
    _STARTED_HERE.append(True)
    if address:
        try:
            ray.init(address=address, runtime_env=runtime_env, logging_level="WARNING", log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UserError(f"cannot connect to the Ray cluster at {address}: {_first_line(err)}") from None
        where = f"Ray cluster at {address}"
    else:
        # Loopback only: the embedded Ray serves nobody but this process.
        ray.init(address="local", include_dashboard=False, runtime_env=runtime_env, logging_level="WARNING",
                 num_gpus=None if resources.gpu else 0)
        where = "embedded local Ray"
    check_resources(resources)
    return where


def check_resources(resources: Resources) -> None:
    """Fail now when no node can ever host one trial (Ray would wait forever, warning every minute)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fits = [n for n in nodes if n["Resources"].get("CPU", 0) >= resources.cpu
            and n["Resources"].get("GPU", 0) >= resources.gpu]
    if fits:
        return
    best_cpu = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    best_gpu = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
    raise UserError(
        f"no Ray node can run a trial that asks for resources.cpu={resources.cpu:g} and "
        f"resources.gpu={resources.gpu:g}: the largest node offers {best_cpu:g} CPUs and {best_gpu:g} GPUs "
        f"({len(nodes)} node{'s' if len(nodes) != 1 else ''}). Lower `resources` in the space "
        f"(e.g. --set resources.gpu=0 on a CPU-only machine) or add such nodes to the cluster."
    )


def node_count() -> int:
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def verify_shared_storage(store: Store) -> None:
    """On a multi-node cluster every node must see the experiment folder (trials write their results there).

    URIs (s3://, gs://) are shared by construction. A local path is probed: the driver writes a marker file and a
    tiny task pinned to each node looks for it; a node that cannot see it means the path is local to some node
    (e.g. the head's disk) and the sweep is refused before any training starts.
    """
    if store.local_path() is None:
        return
    marker = f".shared-probe-{os.getpid()}-{time.time_ns()}"
    store.write_bytes(marker, b"kdsweep shared storage probe\n")
    try:
        probe = ray.remote(num_cpus=0)(_sees_file)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        checks = [
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                store.location(marker))
            for n in nodes
        ]
        blind = [n["NodeManagerAddress"] for n, seen in zip(nodes, ray.get(checks, timeout=120)) if not seen]
    finally:
        store.delete(marker)
    if blind:
        raise UserError(
            f"storage {store.root} is not shared: the Ray node(s) at {', '.join(blind)} cannot see it, so their "
            f"trials' results would be lost. On a multi-node cluster pass --storage (or set `storage:` in the space) "
            f"to a folder mounted on every node (e.g. NFS: /mnt/shared/kdsweep) or to an s3:// or gs:// URI."
        )


def _sees_file(path: str) -> bool:
    return os.path.exists(path)


def shutdown() -> None:
    """Shut down the Ray session `connect` started (never one the caller started)."""
    if _STARTED_HERE and ray.is_initialized():
        ray.shutdown()
    _STARTED_HERE.clear()


def _group_trainable(config: dict, specs: dict) -> None:
    spec = GroupSpec.from_dict(specs[config["group_id"]])
    started = time.time()
    reported = []

    def report(epoch: EpochReport) -> None:
        reported.append(epoch.epoch)
        accs = [s["test_acc"] for s in epoch.students if s["test_acc"] is not None]
        tune.report({
            "epoch": epoch.epoch, "students": len(epoch.students), "remaining": epoch.remaining,
            "mean_acc": sum(accs) / len(accs) if accs else float("nan"),
            "max_acc": max(accs) if accs else float("nan"), "epoch_s": epoch.seconds,
        })

    records = run_group(spec, on_epoch=report)
    if not reported:
        # Every trial reports at least once, also when all its students had finished before (a resumed sweep).
        tune.report({"epoch": max(r["epochs_done"] for r in records), "students": 0, "remaining": 0,
                     "mean_acc": float("nan"), "max_acc": float("nan"), "epoch_s": time.time() - started})


class _EpochCallback(tune.Callback):
    def __init__(self, on_result: Callable[[dict], None]):
        self.on_result = on_result

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.on_result(result)


def run_groups(groups: list[GroupSpec], *, resources: Resources, storage_path: str, name: str,
               max_failures: int, on_result: Callable[[dict], None]) -> list[tuple[str, str]]:
    """Run every group as a Tune trial; returns (group_id, error) for the trials that failed for good."""
    specs = {g.group_id: g.to_dict() for g in groups}
    trainable = tune.with_resources(
        tune.with_parameters(_group_trainable, specs=specs),
        {"cpu": resources.cpu, "gpu": resources.gpu},
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"group_id": tune.grid_search(list(specs))},
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=False,
                                    trial_dirname_creator=lambda trial: trial.config["group_id"]),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, verbose=1,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=[_EpochCallback(on_result)],
        ),
    )
    results = tuner.fit()
    failed = []
    for result in results:
        if result.error is not None:
            failed.append((result.config.get("group_id", "?"), _first_line(result.error)))
    return failed


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
