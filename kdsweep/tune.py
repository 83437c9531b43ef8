"""The only module that imports Ray: student groups as Ray Tune trials.

One trial = one student group (`kdsweep.engine.run_group`) in a long-lived process. Trials report once per epoch.

Checkpoints: the students' weights live in kdsweep's own checksummed checkpoints under the experiment
(`runs/<run_id>/checkpoints/`), written by the group whatever runs it. Whenever some of them are new, the trial
reports a Tune checkpoint that points at them (`kdsweep-group.json`: per student its epochs done, file and
sha256), so Tune's records know each trial's resume point. When Tune retries a crashed trial
(`FailureConfig`), the trainable gets that pointer back from `tune.get_checkpoint()`, says so, and the group
checks every student resumes at least that far. A new `kdsweep run` after the driver itself died starts a new
Tuner (a restored one would replay Tune's experiment snapshot, taken only every few seconds - docs/ray-notes.md
pitfall 1) and the groups find the same checkpoints on their own, so both routes continue where the work stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from ray._private import ray_constants
from ray.exceptions import AuthenticationError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kdsweep.cluster import SHARED_STORAGE_HINT, WORKER_ENV, job_runtime_env, missing_token
from kdsweep.engine import EpochReport, GroupSpec, run_group
from kdsweep.errors import UserError
from kdsweep.reaper import watch_driver
from kdsweep.storage import Store

# On a cluster, how long to wait for the autoscaler to add a node that can host one trial (a GPU worker type that
# scales from zero takes minutes to boot); 0 fails at once, as the embedded local Ray always does.
NODE_WAIT_S = float(os.environ.get("KDSWEEP_NODE_WAIT_S", 15 * 60))
NODE_POLL_S = 5.0


_STARTED_HERE: list[bool] = []  # non-empty while a session started by `connect` is up
_VERBOSE: list[bool] = [False]  # `connect(verbose=...)`: Tune's own output, and Ray Train's per-checkpoint lines


@dataclass(frozen=True)
class Resources:
    cpu: float
    gpu: float


def connect(address: str | None, resources: Resources, verbose: bool = False) -> str:
    """Start an embedded local Ray (default) or join a cluster; returns a description for the manifest. Unless
    `verbose`, Ray and Tune print only what concerns the user: kdsweep shows the progress itself."""
    _VERBOSE[:] = [verbose]
    _drop_tunes_resume_hint()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    # Tune's boxed trial tables, its experiment banner and TensorBoard hint (verbose), or nothing (legacy output at
    # verbosity 0); its warning that snapshots every 5 s "may become a bottleneck" is about kdsweep's own setting.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1" if verbose else "0")
    if not verbose:
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        # "Token authentication is enabled for this Ray cluster": on every start, about Ray's default.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # Ray starts its workers at nice 15, so on a machine where anything else runs (a shared workstation, another
    # job) the trials - all of kdsweep's training - get a sliver of the CPU (measured: 4% of a core beside two
    # busy loops on 2 cores). The embedded Ray's raylet reads this at start (docs/ray-notes.md, pitfall 9).
    os.environ.setdefault("RAY_worker_niceness", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": _env_not_set_by_job(WORKER_ENV)}
    if ray.is_initialized():  # a session the caller started (a notebook, the test suite): use it, leave it running
        _STARTED_HERE.clear()
        check_resources(resources)
        return "existing Ray session"
    _STARTED_HERE.append(True)
    if address:
        try:
            ray.init(address=address, runtime_env=runtime_env, logging_level="WARNING", log_to_driver=True)
        except AuthenticationError:
            raise UserError(missing_token(address)) from None
        except (ConnectionError, RuntimeError, ValueError) as err:
            # Ray sends a token to an address given explicitly only in token mode (it then finds the token itself).
            hint = ("" if os.environ.get("RAY_AUTH_MODE") == "token" else
                    " If the cluster uses token authentication, set RAY_AUTH_MODE=token and give this machine its "
                    "token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).")
            raise UserError(f"cannot connect to the Ray cluster at {address}: {_first_line(err).rstrip('.')}.{hint}"
                            ) from None
        where = f"Ray cluster at {address}"
    else:
        watch_driver()
        with loopback_only():
            ray.init(address="local", include_dashboard=False, runtime_env=runtime_env, logging_level="WARNING",
                     num_gpus=None if resources.gpu else 0)
        where = "embedded local Ray"
    check_resources(resources, wait_s=NODE_WAIT_S if address else 0.0)
    return where


@contextlib.contextmanager
def loopback_only():
    """Inside it, a local Ray that `ray.init` starts binds every port of every process to 127.0.0.1.

    Ray 2.60 turns a node address of 127.0.0.1 (`_node_ip_address`, `ray start --node-ip-address`) into the
    machine's own address, and its servers then listen on that address or on all interfaces - except where Ray
    treats the machine as one that cannot join a cluster, as on macOS and Windows (docs/ray-notes.md, pitfall 10).
    The environment variable reaches the processes `ray.init` starts (and theirs); Ray has already read it in this
    one, so its constant is set too. Both are restored after, so that a `ray start` this process runs later (a test
    cluster) can still add nodes.
    """
    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR  # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    saved = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]


def _drop_tunes_resume_hint() -> None:
    """On Ctrl-C Tune logs "Resume experiment with: Tuner.restore(...)": wrong for kdsweep, which resumes with the
    same command (a restored Tuner would replay a stale snapshot, docs/ray-notes.md pitfall 1) and says so itself."""
    tune_logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _NoResumeHint) for f in tune_logger.filters):
        tune_logger.addFilter(_NoResumeHint())


class _NoResumeHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


def _env_not_set_by_job(env: dict[str, str]) -> dict[str, str]:
    """`env` less the variables the Ray job that runs this driver already sets (`kdsweep submit` sets them all):
    Ray refuses to start a driver whose ray.init names an environment variable the job's runtime env names too."""
    taken = job_runtime_env().get("env_vars") or {}
    return {k: v for k, v in env.items() if k not in taken}


def check_resources(resources: Resources, wait_s: float = 0.0) -> None:
    """Fail when no node can host one trial (Ray would wait forever, warning every minute). With `wait_s`, first ask
    the autoscaler for such a node and wait that long for it (an autoscaling cluster starts with no GPU worker)."""
    if _fitting_node(resources) or (wait_s > 0 and _wait_for_node(resources, wait_s)):
        return
    waited = f" after waiting {wait_s / 60:g} min for the autoscaler" if wait_s > 0 else ""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    best_cpu = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    best_gpu = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
    raise UserError(
        f"no Ray node can run a trial that asks for resources.cpu={resources.cpu:g} and "
        f"resources.gpu={resources.gpu:g}: the largest node offers {best_cpu:g} CPUs and {best_gpu:g} GPUs "
        f"({len(nodes)} node{'s' if len(nodes) != 1 else ''}){waited}. Lower `resources` in the space "
        f"(e.g. --set resources.gpu=0 on a CPU-only machine) or add such nodes to the cluster."
    )


def _fitting_node(resources: Resources) -> bool:
    return any(n["Resources"].get("CPU", 0) >= resources.cpu and n["Resources"].get("GPU", 0) >= resources.gpu
               for n in ray.nodes() if n.get("Alive"))


def _wait_for_node(resources: Resources, wait_s: float) -> bool:
    from ray.autoscaler.sdk import request_resources  # marked experimental, unchanged since Ray 1.x

    bundle = {k: v for k, v in (("CPU", resources.cpu), ("GPU", resources.gpu)) if v}
    print(f"kdsweep: no node can host a trial yet ({resources.cpu:g} CPU, {resources.gpu:g} GPU); asked the "
          f"autoscaler for one and waiting up to {wait_s / 60:g} min (KDSWEEP_NODE_WAIT_S changes this)", flush=True)
    request_resources(bundles=[bundle])
    # The request outlives this process: withdraw it also when `kdsweep stop` (SIGTERM) ends the wait.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main else None
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            time.sleep(min(NODE_POLL_S, wait_s))
            if _fitting_node(resources):
                return True
        return False
    finally:
        request_resources(bundles=[])  # from here on the trials' own demand drives the autoscaler
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def node_count() -> int:
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def verify_shared_storage(store: Store) -> None:
    """On a multi-node cluster every node must see the experiment folder (trials write their results there).

    URIs (s3://, gs://) are shared by construction. A local path is probed: the driver writes a marker file and a
    tiny task pinned to each node looks for it; a node that cannot see it means the path is local to some node
    (e.g. the head's disk) and the sweep is refused before any training starts.
    """
    local = _local_dir(store)
    if local is None:
        return
    marker = f".shared-probe-{os.getpid()}-{time.time_ns()}"
    store.write_bytes(marker, b"kdsweep shared storage probe\n")
    try:
        probe = ray.remote(num_cpus=0)(_sees_file)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        checks = [
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                str(local / marker))
            for n in nodes
        ]
        blind = [_node_name(n) for n, seen in zip(nodes, ray.get(checks, timeout=120)) if not seen]
    finally:
        store.delete(marker)
    if blind:
        raise UserError(
            f"storage {store.root} is not shared: the Ray node(s) {', '.join(blind)} cannot see it, so their "
            f"trials' results would be lost. On a multi-node cluster {SHARED_STORAGE_HINT}."
        )


def _local_dir(store: Store) -> Path | None:
    """The experiment folder as a path on the nodes' file systems (a file:// URI too); None for object storage."""
    if store.root.startswith("file://"):
        return Path(store.root[len("file://"):])
    return store.local_path()


def _node_name(node: dict) -> str:
    return f"{node['NodeManagerAddress']} (node {node['NodeID'][:8]})"


def _sees_file(path: str) -> bool:
    return os.path.exists(path)


def _require_visible_storage(root: str, node_id: str) -> None:
    """Behind verify_shared_storage: a node that joined after the probe (autoscaling) and cannot see a local
    experiment folder fails its trial with the reason instead of writing results that nobody will read."""
    local = _local_dir(Store(root))
    if local is not None and not (local / "space.yaml").exists():
        raise RuntimeError(f"storage {root} is not visible on Ray node {node_id[:8]}: it is not shared. "
                           f"On a multi-node cluster {SHARED_STORAGE_HINT}.")


def shutdown() -> None:
    """Shut down the Ray session `connect` started (never one the caller started)."""
    if _STARTED_HERE and ray.is_initialized():
        ray.shutdown()
    _STARTED_HERE.clear()


USER_ERROR = "kdsweep_user_error"  # a trial's last report when it stopped on a UserError: the message
POINTER_FILE = "kdsweep-group.json"  # inside a trial's Tune checkpoint: where each student's weights are


def _restored_pointer() -> dict[str, dict]:
    """The student checkpoints of the Tune checkpoint this trial was restored from (Tune's retry), else {}."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as folder:
        path = Path(folder) / POINTER_FILE
        if not path.exists():
            return {}
        try:
            students = json.loads(path.read_bytes())["students"]
            if all(isinstance(p, dict) and isinstance(p.get("epochs_done"), int) for p in students.values()):
                return students
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    # Only a hint: the group finds its students' checkpoints on its own, so a damaged pointer is not an error.
    print(f"kdsweep: the Tune checkpoint {path} is damaged; the group resumes from its students' own checkpoints",
          flush=True)
    return {}


def _report_with_pointer(metrics: dict, pointer: dict, group_id: str) -> None:
    with tempfile.TemporaryDirectory(prefix="kdsweep-tune-") as folder:
        (Path(folder) / POINTER_FILE).write_text(json.dumps({"group_id": group_id, "students": pointer}, indent=1))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))  # persisted before it returns


def _group_trainable(config: dict, specs: dict, verbose: bool = False) -> None:
    if not verbose:  # "Checkpoint successfully created at: ..." after every report of every trial
        logging.getLogger("ray.train").setLevel(logging.WARNING)
    sys.unraisablehook = _unraisable_but_ray_sigterm
    spec = GroupSpec.from_dict(specs[config["group_id"]])
    node_id = ray.get_runtime_context().get_node_id()  # which Ray node trains the group (hosts can repeat)
    _require_visible_storage(spec.storage, node_id)
    started = time.time()
    reported = []
    pointer = _restored_pointer()
    if pointer:
        at = ", ".join(f"{run_id} at epoch {p['epochs_done']}" for run_id, p in sorted(pointer.items()))
        print(f"kdsweep: group {spec.group_id} restored by Ray Tune from its checkpoint: {at}", flush=True)

    def report(epoch: EpochReport) -> None:
        reported.append(epoch.epoch)
        accs = [s["test_acc"] for s in epoch.students if s["test_acc"] is not None]
        metrics = {
            "epoch": epoch.epoch, "students": len(epoch.students), "remaining": epoch.remaining,
            "mean_acc": sum(accs) / len(accs) if accs else float("nan"),
            "max_acc": max(accs) if accs else float("nan"), "epoch_s": epoch.seconds, "node_id": node_id,
        }
        new = {s["run_id"]: {"epochs_done": s["epoch"], **s["checkpoint"]} for s in epoch.students
               if s["checkpoint"] and pointer.get(s["run_id"], {}).get("sha256") != s["checkpoint"]["sha256"]}
        if new:
            pointer.update(new)
            _report_with_pointer(metrics, pointer, spec.group_id)
        else:
            tune.report(metrics)

    try:
        records = run_group(spec, on_epoch=report,
                            expected_epochs={run_id: p["epochs_done"] for run_id, p in pointer.items()})
    except UserError as err:  # the user's to fix (disk full, a damaged file): no retry would help
        tune.report({USER_ERROR: f"group {spec.group_id} stopped the sweep: {err}", "node_id": node_id})
        return
    if not reported:
        # Every trial reports at least once, also when all its students had finished before (a resumed sweep).
        tune.report({"epoch": max(r["epochs_done"] for r in records), "students": 0, "remaining": 0,
                     "mean_acc": float("nan"), "max_acc": float("nan"), "epoch_s": time.time() - started,
                     "node_id": node_id})


def _unraisable_but_ray_sigterm(unraisable) -> None:
    """When Tune stops a finished trial's worker, Ray's SIGTERM handler raises SystemExit in whatever runs, at times
    a garbage-collector callback, and Python prints that as "Exception ignored ... Traceback ... SystemExit: 1" on
    the user's terminal. Python ignores such an exception either way; only the print goes."""
    if isinstance(unraisable.exc_value, SystemExit):
        return
    sys.__unraisablehook__(unraisable)


class _StopOnUserError(tune.Stopper):
    """Ends the whole fit once a trial reports a `UserError`: every other trial would meet it too (the same disk,
    the same files), and Tune's retries would bury the message under tracebacks."""

    def __init__(self):
        self.message: str | None = None

    def __call__(self, trial_id, result) -> bool:
        if result.get(USER_ERROR) and self.message is None:
            self.message = result[USER_ERROR]
        return USER_ERROR in result

    def stop_all(self) -> bool:
        return self.message is not None


class _EpochCallback(tune.Callback):
    def __init__(self, on_result: Callable[[dict], None]):
        self.on_result = on_result

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if USER_ERROR not in result:
            self.on_result(result)


def run_groups(groups: list[GroupSpec], *, resources: Resources, storage_path: str, name: str,
               max_failures: int, on_result: Callable[[dict], None]) -> list[tuple[str, str]]:
    """Run every group as a Tune trial; returns (group_id, error) for the trials that failed for good."""
    specs = {g.group_id: g.to_dict() for g in groups}
    trainable = tune.with_resources(
        tune.with_parameters(_group_trainable, specs=specs, verbose=_VERBOSE[0]),
        {"cpu": resources.cpu, "gpu": resources.gpu},
    )
    stopper = _StopOnUserError()
    tuner = tune.Tuner(
        trainable,
        param_space={"group_id": tune.grid_search(list(specs))},
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=False,
                                    trial_dirname_creator=lambda trial: trial.config["group_id"]),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, verbose=1 if _VERBOSE[0] else 0, stop=stopper,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            # Tune keeps the newest pointers only; the weights they name are pruned by kdsweep (KEEP = 2).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[_EpochCallback(on_result)],
        ),
    )
    results = tuner.fit()
    if stopper.message is not None:
        raise UserError(stopper.message)
    failed = []
    for result in results:
        if result.error is not None:
            failed.append((result.config.get("group_id", "?"), _first_line(result.error)))
    return failed


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
