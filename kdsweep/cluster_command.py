"""`kdsweep submit`, `kdsweep jobs`, `kdsweep stop`: sweeps as Ray jobs on an existing cluster.

`submit` validates the space here, refuses storage that cannot work on a cluster, and submits `kdsweep run SPACE
--storage STORAGE` with the working directory shipped. The job's driver then does what `kdsweep run` does anywhere,
including the shared-storage probe on every node. Ray itself is only touched in `kdsweep.cluster`.
"""

from __future__ import annotations

import argparse
import secrets
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kdsweep import __version__
from kdsweep.errors import UserError
from kdsweep.storage import is_uri

STOP_WAIT_S = 60.0  # how long `kdsweep stop` waits for the job to reach STOPPED


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the cluster subcommands on the `kdsweep` parser."""
    from kdsweep.cli import _add_overrides

    address_help = "the head node's dashboard, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)"
    p = sub.add_parser("submit", help="run a search space on a Ray cluster, as a Ray job")
    p.add_argument("space", help="search-space YAML file, inside the working directory")
    _add_overrides(p)
    p.add_argument("--address", help=address_help)
    p.add_argument("--storage", help="experiment storage every node sees: a shared path or s3:// gs:// URI "
                                     "(default: the space's `storage`, which must then be absolute or a URI)")
    p.add_argument("--working-dir", default=".", help="folder shipped to the cluster as the job's working "
                                                      "directory (default: .; results/, data/, .git are left out)")
    p.add_argument("--follow", action="store_true",
                   help="stream the job's logs until it ends; exit 0 only when it succeeded")
    p.add_argument("--only-current", action="store_true", help="as for `kdsweep run`")
    change = p.add_mutually_exclusive_group()
    change.add_argument("--as-new-experiment", metavar="NAME", help="as for `kdsweep run`")
    change.add_argument("--replace", action="store_true", help="as for `kdsweep run`")
    p.set_defaults(handler=cmd_submit)

    p = sub.add_parser("jobs", help="list the kdsweep jobs of a Ray cluster with their state")
    p.add_argument("--address", help=address_help)
    p.set_defaults(handler=cmd_jobs)

    p = sub.add_parser("stop", help="stop a kdsweep job (finished work is kept; submit again to resume)")
    p.add_argument("job_id")
    p.add_argument("--address", help=address_help)
    p.set_defaults(handler=cmd_stop)


@dataclass(frozen=True)
class JobPlan:
    """What `kdsweep submit` sends: everything here is decided and checked before the cluster is contacted."""

    space: str  # the space file relative to the working directory, which is the job's working directory
    experiment: str
    runs: int
    storage: str  # absolute path (on the cluster) or URI
    working_dir: Path
    overrides: tuple[str, ...]
    run_flags: tuple[str, ...] = ()  # `kdsweep run`'s scope flags: --replace, --as-new-experiment NAME, --only-current

    @property
    def root(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.experiment}"

    def entrypoint(self) -> str:
        """`python -m kdsweep run ...`: run from the shipped working directory, `-m` imports the kdsweep package
        shipped with it (a checkout's `kdsweep/`) before any installed one, so the code submitted is the code that
        runs; a working directory without one uses the image's kdsweep."""
        sets = [arg for override in self.overrides for arg in ("--set", override)]
        return shlex.join(["python", "-m", "kdsweep", "run", self.space, "--storage", self.storage, *sets,
                           *self.run_flags])

    def runtime_env(self) -> dict:
        from kdsweep.cluster import WORKER_ENV, WORKING_DIR_EXCLUDES

        return {"working_dir": str(self.working_dir), "excludes": WORKING_DIR_EXCLUDES, "env_vars": dict(WORKER_ENV)}

    def metadata(self) -> dict[str, str]:
        from kdsweep.cluster import JOB_TAG

        return {JOB_TAG: __version__, "experiment": self.experiment, "space": self.space, "storage": self.storage}

    def submission_id(self) -> str:
        # Readable and unique: two submits of one space within a second still differ.
        return f"kdsweep-{self.experiment}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def plan_job(space_path: str, overrides: list[str], storage: str | None, working_dir: str,
             run_flags: list[str] = ()) -> JobPlan:
    """Validate the space as the job will see it (relative paths taken from the working directory) and refuse a
    storage location that would land in the job's temporary copy of that directory. `run_flags`: `kdsweep run`'s
    scope flags, passed on to the job."""
    from kdsweep.cluster import SHARED_STORAGE_HINT
    from kdsweep.space import load_space

    workdir = Path(working_dir).resolve()
    if not workdir.is_dir():
        raise UserError(f"--working-dir {working_dir} is not a folder.")
    try:
        space_rel = Path(space_path).resolve().relative_to(workdir).as_posix()
    except ValueError:
        raise UserError(f"{space_path} is outside the working directory {workdir}, so the job would not have it: "
                        f"move it inside, or pass --working-dir.") from None
    flags = list(run_flags)
    renamed = [f"experiment={flags[flags.index('--as-new-experiment') + 1]}"] if "--as-new-experiment" in flags else []
    space = load_space(Path(workdir, space_rel), [*overrides, *([f"storage={storage}"] if storage else []), *renamed],
                       base=workdir)
    chosen = storage or space.file.storage
    if not is_uri(chosen) and not Path(chosen).expanduser().is_absolute():
        raise UserError(
            f"storage '{chosen}' is a relative path: in a Ray job it would resolve inside the job's temporary working "
            f"directory on the head node, which other nodes cannot see and Ray deletes. On a cluster, "
            f"{SHARED_STORAGE_HINT}.")
    return JobPlan(space_rel, space.file.experiment, len(space.runs), chosen, workdir, tuple(overrides),
                   tuple(run_flags))


def cmd_submit(args) -> int:
    from kdsweep.cluster import Cluster

    flags = (["--replace"] if args.replace else []) + (["--only-current"] if args.only_current else [])
    flags += ["--as-new-experiment", args.as_new_experiment] if args.as_new_experiment else []
    plan = plan_job(args.space, args.overrides, args.storage, args.working_dir, flags)
    cluster = Cluster(args.address)
    cluster.check_ray_version()
    job_id = cluster.submit(entrypoint=plan.entrypoint(), runtime_env=plan.runtime_env(), metadata=plan.metadata(),
                            submission_id=plan.submission_id())
    print(submitted_text(cluster, plan, job_id))
    if not args.follow:
        return 0
    print(f"kdsweep: following job {job_id} (Ctrl-C stops following; the job keeps running)", flush=True)
    try:
        details = cluster.follow(job_id)
    except KeyboardInterrupt:
        print(f"\nkdsweep: stopped following; job {job_id} keeps running. Stop it with "
              f"`kdsweep stop {job_id} --address {cluster.url}`.", file=sys.stderr)
        return 130
    return job_outcome(cluster, job_id, details)


def submitted_text(cluster, plan: JobPlan, job_id: str) -> str:
    address = f"--address {shlex.quote(cluster.url)}"
    # The plain Ray CLI sends the token only when asked to (kdsweep finds it by itself).
    ray_auth = "RAY_AUTH_MODE=token " if cluster.token else ""
    return "\n".join([
        f"kdsweep: submitted job {job_id}: {plan.experiment}, {plan.runs} runs, results in {plan.root}",
        f"  dashboard: {cluster.url}/#/jobs/{job_id}",
        f"  follow:    {ray_auth}ray job logs --follow {job_id} {address}",
        f"  stop:      kdsweep stop {job_id} {address}",
        f"  jobs:      kdsweep jobs {address}",
        f"  results:   kdsweep status {shlex.quote(plan.root)}    kdsweep report {shlex.quote(plan.root)}",
        "             (a cluster path: run these on a node that mounts it)" if not is_uri(plan.root) else "",
    ]).rstrip()


def job_outcome(cluster, job_id: str, details) -> int:
    """Exit code of a followed job: 0 when it SUCCEEDED, else the driver's exit code (1 when it has none)."""
    status = details.status.value
    if status == "SUCCEEDED":
        print(f"kdsweep: job {job_id} SUCCEEDED")
        return 0
    reason = cluster.last_error(job_id) or details.message or "see its logs"
    code = details.driver_exit_code or 1
    print(f"kdsweep: error: job {job_id} {status} (exit code {code}): {reason}", file=sys.stderr)
    return code


def cmd_jobs(args) -> int:
    from kdsweep.cluster import Cluster

    cluster = Cluster(args.address)
    jobs = cluster.kdsweep_jobs()
    if not jobs:
        print(f"no kdsweep jobs on {cluster.url}")
        return 0
    rows = [("JOB", "STATUS", "STARTED", "EXPERIMENT", "STORAGE")]
    for job in jobs:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.start_time / 1000)) if job.start_time else "-"
        meta = job.metadata or {}
        rows.append((job.submission_id or job.job_id or "?", job.status.value, started, meta.get("experiment", "?"),
                     meta.get("storage", "?")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def cmd_stop(args) -> int:
    from kdsweep.cluster import Cluster

    cluster = Cluster(args.address)
    details = cluster.info(args.job_id)  # also a clear message for an unknown id
    if details.status.is_terminal():
        print(f"kdsweep: job {args.job_id} had already ended ({details.status.value}); nothing to stop")
        return 0
    details = cluster.stop(args.job_id, wait_s=STOP_WAIT_S)
    status = details.status.value
    if not details.status.is_terminal():
        raise UserError(f"job {args.job_id} is still {status} {STOP_WAIT_S:.0f} s after the stop request; check "
                        f"`kdsweep jobs --address {cluster.url}`.")
    print(f"kdsweep: job {args.job_id} {status}; finished work is kept in its storage, and submitting the same space "
          f"again resumes it")
    return 0
