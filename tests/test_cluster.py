"""`kdsweep submit`, `jobs` and `stop` against a real two-node Ray cluster started on this machine.

The cluster lives in a network namespace of its own (`unshare --net`): it has nothing but a loopback interface, so
every Ray process listens on loopback only (Ray turns `--node-ip-address 127.0.0.1` into the machine's outward
address on a shared network), every port is free by construction, and no other Ray on the machine can interfere.
The worker node also has a mount namespace of its own with a private tmpfs over `blind/`: a folder the head sees
and the worker does not, which is what a head-local storage path looks like on a real cluster. Both nodes use
token authentication with a token file made here (never ~/.ray/auth_token). Every command that talks to the
cluster runs inside its network namespace through `nsenter`.

At the end every process the cluster started is killed: both `ray start --block` sessions, the job drivers that
Ray starts in sessions of their own, and all their descendants, frozen first so that none escapes. Never `ray stop`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from kdsweep.cli import main
from kdsweep.cluster import WORKER_ENV
from kdsweep.cluster_command import plan_job
from kdsweep.errors import UserError

from helpers import save_teacher, tiny_space
from processes import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

VENV_BIN = str(Path(sys.executable).parent)
GCS_PORT, DASHBOARD_PORT, CLIENT_PORT = 6379, 8265, 10001  # free in the cluster's own network namespace
NODE_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                   "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
OBJECT_STORE_BYTES = 80 * 2**20  # the smallest object store Ray accepts is 75 MiB
KDSWEEP_ENV_DROP = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def node_flags(first_port: int, temp_dir: Path) -> list[str]:
    ports = [str(first_port + i) for i in range(len(NODE_PORT_FLAGS))]
    return [*(arg for pair in zip(NODE_PORT_FLAGS, ports) for arg in pair),
            "--min-worker-port", "0", "--max-worker-port", "0",  # worker processes take any free port
            "--num-cpus", "1", "--object-store-memory", str(OBJECT_STORE_BYTES), "--temp-dir", str(temp_dir),
            "--disable-usage-stats", "--block"]


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KDSWEEP_ENV_DROP}
    return {**env, "PATH": f"{VENV_BIN}:{env.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0", **extra}


# Processes -----------------------------------------------------------------------------------------------------
def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every live (non-zombie) process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
            if fields[0] != "Z":
                table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def kill_everything_started_by(roots: list[int], timeout: float = 20.0) -> None:
    """SIGKILL the processes of `roots`: their sessions and all descendants, also those in sessions of their own.

    Everything found is SIGSTOPped first and the search repeated until nothing new appears, so a process cannot fork
    (or move to a new session) between being found and being killed.
    """
    frozen: set[int] = set()
    while True:
        table = process_table()
        sessions = set(roots) | {table[p][1] for p in frozen if p in table}
        found = {p for p, (_, sid) in table.items() if sid in sessions} | {p for p in roots if p in table}
        grew = True
        while grew:
            more = {p for p, (ppid, _) in table.items() if ppid in found} - found
            found |= more
            grew = bool(more)
        new = found - frozen
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        frozen |= new
    for pid in frozen:
        _signal(pid, signal.SIGKILL)
    wait_for(lambda: not (frozen & set(process_table())), timeout, f"processes {sorted(frozen)} to die")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# The cluster ---------------------------------------------------------------------------------------------------
@dataclass
class Cluster:
    head: subprocess.Popen
    worker: subprocess.Popen
    base: Path  # logs, storage, the project folder
    ray_temp: Path  # the nodes' Ray temp dirs (short: Ray's socket paths must stay under 108 bytes)
    token: str
    node_ids: dict[str, str]  # "head" / "worker" -> Ray node id
    url: str = f"http://127.0.0.1:{DASHBOARD_PORT}"

    @property
    def project(self) -> Path:
        return self.base / "project"

    @property
    def shared(self) -> Path:
        return self.base / "shared"

    @property
    def blind(self) -> Path:
        return self.base / "blind"

    def start_inside(self, argv: list[str], env: dict) -> subprocess.Popen:
        """Start a command in the cluster's network namespace, in the project folder; stdout and stderr merged when
        it is a `ray` command (kdsweep's are kept apart: their stderr is what the tests read)."""
        merged = argv[0].endswith("/ray")
        return subprocess.Popen(["nsenter", f"--net=/proc/{self.head.pid}/ns/net", *argv], env=env, cwd=self.project,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merged else subprocess.PIPE,
                                text=True)

    def finish(self, process: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
        """Wait for a command; its output must never show the cluster's token."""
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        finally:
            process.kill()
        assert self.token not in stdout + stderr, "the authentication token was printed"
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def inside(self, argv: list[str], env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
        return self.finish(self.start_inside(argv, env), timeout)

    def job_info(self, job_id: str) -> dict:
        out = self.inside([sys.executable, "-c", JOB_INFO, self.url, job_id], clean_env(CLUSTER_TOKEN=self.token))
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def client_env(self, **extra) -> dict:
        """A user's machine that holds the cluster's token in ~/.ray/auth_token."""
        return clean_env(**{"HOME": str(self.base / "client_home"), **extra})

    def kdsweep(self, *args: str, timeout: float = 240, **env_extra) -> subprocess.CompletedProcess:
        return self.inside([sys.executable, "-m", "kdsweep", *args], self.client_env(**env_extra), timeout)


def namespaces_available() -> bool:
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True)
    return probe.returncode == 0 and shutil.which("nsenter") is not None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not namespaces_available():
        pytest.skip("needs Linux namespaces (unshare --net --mount, nsenter): run as root")
    base = tmp_path_factory.mktemp("cluster")
    ray_temp = Path(tempfile.mkdtemp(prefix="kdc-", dir="/tmp"))
    token = secrets.token_hex(32)
    (base / "cluster_token").write_text(token)
    (base / "client_home" / ".ray").mkdir(parents=True)
    (base / "client_home" / ".ray" / "auth_token").write_text(token)
    for folder in ("shared", "blind", "cluster_home"):
        (base / folder).mkdir()
    env = clean_env(HOME=str(base / "cluster_home"), RAY_AUTH_MODE="token",
                    RAY_AUTH_TOKEN_PATH=str(base / "cluster_token"))
    ray = f"{VENV_BIN}/ray"
    head_cmd = [ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(GCS_PORT),
                "--dashboard-host", "127.0.0.1", "--dashboard-port", str(DASHBOARD_PORT),
                "--ray-client-server-port", str(CLIENT_PORT), *node_flags(20000, ray_temp / "head")]
    with (base / "head.log").open("wb") as log:
        head = subprocess.Popen(["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {shlex.join(head_cmd)}"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        # nsenter must not run before unshare did, or the worker would join this machine's network.
        wait_for(lambda: os.readlink(f"/proc/{head.pid}/ns/net") != os.readlink("/proc/self/ns/net"), 10,
                 "the head's network namespace")
        worker_cmd = [ray, "start", "--address", f"127.0.0.1:{GCS_PORT}", *node_flags(20010, ray_temp / "worker")]
        blind = shlex.quote(str(base / "blind"))
        with (base / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                ["nsenter", f"--net=/proc/{head.pid}/ns/net", "unshare", "--mount", "--propagation", "private", "sh",
                 "-c", f"mount -t tmpfs kdsweep-blind {blind} && exec {shlex.join(worker_cmd)}"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        c = Cluster(head, worker, base, ray_temp, token, {})
        write_project(c)  # while the nodes start
        c.node_ids = wait_for_two_nodes(c)
        yield c
    finally:
        kill_everything_started_by([p.pid for p in (head, worker) if p is not None])
        for p in (head, worker):
            if p is not None:
                p.wait(timeout=10)
        shutil.rmtree(ray_temp, ignore_errors=True)


JOB_INFO = """
import json, os, sys
from ray.job_submission import JobSubmissionClient
client = JobSubmissionClient(sys.argv[1], headers={"Authorization": "Bearer " + os.environ["CLUSTER_TOKEN"]})
print(json.dumps(client.get_job_info(sys.argv[2]).dict(), default=str))
"""

WAIT_FOR_NODES = """
import json, os, sys, time
import requests
deadline = time.time() + 120
while time.time() < deadline:
    try:
        reply = requests.get(sys.argv[1] + "/api/v0/nodes", timeout=2,
                             headers={"Authorization": "Bearer " + os.environ["CLUSTER_TOKEN"]})
        nodes = [n for n in reply.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]
        if len(nodes) == 2:
            print(json.dumps({"head" if n["is_head_node"] else "worker": n["node_id"] for n in nodes}))
            sys.exit(0)
    except (requests.RequestException, ValueError, KeyError):
        pass
    time.sleep(0.3)
sys.exit("the cluster did not come up with two nodes")
"""


def wait_for_two_nodes(c: Cluster) -> dict[str, str]:
    out = c.inside([sys.executable, "-c", WAIT_FOR_NODES, c.url], clean_env(CLUSTER_TOKEN=c.token), timeout=150)
    assert out.returncode == 0, (out.stderr[-2000:], (c.base / "head.log").read_text()[-3000:],
                                 (c.base / "worker.log").read_text()[-3000:])
    return json.loads(out.stdout)


def write_project(c: Cluster) -> None:
    """A user's project folder: the space, plus what the upload must leave out (results, data, .git)."""
    teacher = save_teacher(c.base / "teacher.pth")  # outside blind/: both nodes read it
    space = tiny_space(c.shared, teacher=teacher, epochs=1, seeds=(0, 1), max_students=4)
    (c.project / "spaces").mkdir(parents=True)
    (c.project / "spaces" / "tiny.yaml").write_text(space)
    for junk in ("results/old/trials.parquet", "data/cifar-100-python/train", ".git/HEAD"):
        (c.project / junk).parent.mkdir(parents=True, exist_ok=True)
        (c.project / junk).write_text("not for the cluster")


def job_id_of(output: str) -> str:
    return output.split("kdsweep: submitted job ", 1)[1].split(":", 1)[0]


@pytest.fixture(scope="module")
def submitted(cluster):
    """Three jobs at once, the way users start them:
    - sweep: `kdsweep submit --follow` of the tiny space (two groups of four students: one group per node);
    - head_local: the same into `blind/`, a folder the worker node cannot see;
    - plain: `ray job submit ... -- kdsweep run` of a space whose trial (2 CPUs) no node can host: its driver waits
      for the autoscaler, without holding a CPU, until a test stops it.
    """
    argv = [sys.executable, "-m", "kdsweep", "submit", "spaces/tiny.yaml", "--address", cluster.url, "--follow"]
    plain = cluster.start_inside(
        [f"{VENV_BIN}/ray", "job", "submit", "--address", cluster.url, "--working-dir", ".", "--", "kdsweep", "run",
         "spaces/tiny.yaml", "--storage", str(cluster.base / "plain"), "--set", "resources.cpu=2"],
        clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(cluster.base / "cluster_token")))
    head_local = cluster.start_inside([*argv, "--storage", str(cluster.blind)], cluster.client_env())
    sweep = cluster.start_inside(argv, cluster.client_env())
    try:
        yield {"plain": Streaming(plain), "sweep": cluster.finish(sweep, timeout=300),
               "head_local": cluster.finish(head_local, timeout=120)}
    finally:
        for process in (plain, head_local, sweep):
            process.kill()


class Streaming:
    """A command whose output is read while it runs (stdout and stderr merged)."""

    def __init__(self, process: subprocess.Popen):
        self.process, self.lines = process, []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> str:
        return wait_for(lambda: next((line for line in self.lines if text in line), None), timeout,
                        f"{text!r} in the output of {self.process.args}", interval=0.2)


# Refused before any cluster is contacted -------------------------------------------------------------------------
def submit_here(tmp_path, monkeypatch, capsys, storage):
    teacher = save_teacher(tmp_path / "teacher.pth")
    (tmp_path / "space.yaml").write_text(tiny_space(storage, teacher=teacher))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # no token of this machine's (~/.ray/auth_token) goes anywhere
    for name in KDSWEEP_ENV_DROP:
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{s.getsockname()[1]}"
    code = main(["submit", "space.yaml", "--address", address])
    return code, address, capsys.readouterr()


def test_a_job_runs_kdsweep_run_in_the_shipped_working_directory(tmp_path):
    teacher = save_teacher(tmp_path / "teacher.pth")
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "x.yaml").write_text(tiny_space(Path("results"), teacher=teacher))
    plan = plan_job(str(tmp_path / "spaces" / "x.yaml"), ["recipe.epochs=1"], "s3://bucket/kd", str(tmp_path))
    assert plan.entrypoint() == "python -m kdsweep run spaces/x.yaml --storage s3://bucket/kd --set recipe.epochs=1"
    assert plan.root == "s3://bucket/kd/tiny" and plan.runs == 8
    env = plan.runtime_env()
    assert env["working_dir"] == str(tmp_path) and env["env_vars"] == WORKER_ENV
    assert {"results/", "data/", ".git/", ".venv/", "__pycache__/"} <= set(env["excludes"])
    assert plan.metadata()["kdsweep"] and re.fullmatch(r"kdsweep-tiny-\d{8}-\d{6}-[0-9a-f]{4}", plan.submission_id())
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UserError, match="is outside the working directory .*/elsewhere, so the job would not have it"):
        plan_job(str(tmp_path / "spaces" / "x.yaml"), [], "s3://bucket/kd", str(tmp_path / "elsewhere"))
    # `kdsweep run`'s scope flags travel with the job; a new experiment's folder is the one the job names.
    plan = plan_job(str(tmp_path / "spaces" / "x.yaml"), [], "s3://bucket/kd", str(tmp_path),
                    ["--only-current", "--as-new-experiment", "longer"])
    assert plan.entrypoint().endswith("--storage s3://bucket/kd --only-current --as-new-experiment longer")
    assert plan.root == "s3://bucket/kd/longer"


def test_a_relative_storage_path_is_refused_before_submitting(tmp_path, monkeypatch, capsys):
    code, _, out = submit_here(tmp_path, monkeypatch, capsys, Path("results"))
    assert code == 2 and out.out == ""
    assert out.err.startswith("kdsweep: error: storage 'results' is a relative path: in a Ray job it would resolve "
                              "inside the job's temporary working directory on the head node")
    assert "pass --storage" in out.err and "s3://" in out.err


def test_a_submit_where_nothing_listens_says_so(tmp_path, monkeypatch, capsys):
    code, address, out = submit_here(tmp_path, monkeypatch, capsys, tmp_path / "results")
    assert code == 2 and out.out == ""
    assert out.err.startswith(f"kdsweep: error: nothing answers at {address}: give the head node's dashboard")


# On the cluster -------------------------------------------------------------------------------------------------
def test_a_missing_or_wrong_token_is_one_clear_sentence(cluster):
    wrong = cluster.kdsweep("submit", "spaces/tiny.yaml", "--address", cluster.url, "--storage",
                            str(cluster.base / "bad-token"), RAY_AUTH_TOKEN="0" * 64)
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr.strip() == (
        f"kdsweep: error: the Ray cluster at {cluster.url} rejected the authentication token from $RAY_AUTH_TOKEN: "
        f"it is not this cluster's token (`ray get-auth-token` on the head prints the right one).")
    missing = cluster.kdsweep("jobs", "--address", cluster.url, HOME=str(cluster.base / "nobody"))
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"kdsweep: error: the Ray cluster at {cluster.url} requires an authentication "
                                     f"token and none was found: set RAY_AUTH_TOKEN")


def test_submit_follow_runs_the_sweep_on_both_nodes_into_shared_storage(cluster, submitted, capsys):
    out = submitted["sweep"]
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    job = job_id_of(out.stdout)
    root = cluster.shared / "tiny"
    for line in (f"dashboard: {cluster.url}/#/jobs/{job}",
                 f"follow:    RAY_AUTH_MODE=token ray job logs --follow {job} --address {cluster.url}",
                 f"stop:      kdsweep stop {job} --address {cluster.url}",
                 f"results:   kdsweep status {root}    kdsweep report {root}",
                 f"kdsweep: job {job} SUCCEEDED"):
        assert line in out.stdout
    trials = pd.read_parquet(root / "trials.parquet")
    assert len(trials) == 8 and set(trials.status) == {"completed"}
    assert (root / "results.md").exists() and (root / "plots" / "curves.png").exists()
    nodes = {json.loads(path.read_text().splitlines()[-1])["node_id"] for path in (root / "tune").rglob("result.json")}
    assert nodes == set(cluster.node_ids.values()), "the two groups did not run one on each node"

    # The job ran in a copy of the project that left out results, data and .git.
    package = cluster.job_info(job)["runtime_env"]["working_dir"].removeprefix("gcs://").removesuffix(".zip")
    (copy,) = {p.resolve() for p in cluster.ray_temp.glob(f"head/session_*/runtime_resources/*/{package}")}
    assert (copy / "spaces" / "tiny.yaml").exists()
    assert not any((copy / junk).exists() for junk in ("results/old", "data/cifar-100-python", ".git"))

    assert main(["status", str(root)]) == 0 and "8/8 students done" in capsys.readouterr().out


def test_head_local_storage_is_refused_on_a_multi_node_cluster(cluster, submitted):
    out = submitted["head_local"]
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    worker = cluster.node_ids["worker"][:8]
    assert (f"storage {cluster.blind}/tiny is not shared: the Ray node(s) 127.0.0.1 (node {worker}) cannot see it"
            in out.stderr)
    assert out.stderr.splitlines()[-1].startswith("kdsweep: error: job kdsweep-tiny-")
    assert "FAILED (exit code 2)" in out.stderr and "pass --storage" in out.stderr.splitlines()[-1]
    assert not (cluster.blind / "tiny" / "runs").exists()  # refused before any training


def test_plain_ray_job_submit_joins_the_cluster_and_kdsweep_stop_ends_it(cluster, submitted):
    plain = submitted["plain"]
    job = plain.wait_for("submitted successfully", 30).split("Job '", 1)[1].split("'", 1)[0]
    # The entrypoint found the cluster through RAY_ADDRESS; as no node has 2 CPUs it asked the autoscaler for one.
    plain.wait_for("kdsweep: no node can host a trial yet (2 CPU, 0 GPU); asked the autoscaler for one and waiting "
                   "up to 15 min", 120)

    stop = cluster.kdsweep("stop", job, "--address", cluster.url)
    assert stop.returncode == 0 and f"kdsweep: job {job} STOPPED" in stop.stdout, stop.stdout + stop.stderr
    plain.wait_for(f"Job '{job}' was stopped", 30)  # what `ray job submit`, following the job, reports
    assert cluster.token not in "".join(plain.lines)
    listed = cluster.kdsweep("jobs", "--address", cluster.url)
    jobs = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert jobs[job_id_of(submitted["sweep"].stdout)][1] == "SUCCEEDED"
    assert jobs[job_id_of(submitted["head_local"].stdout)][1] == "FAILED"
    assert job not in jobs  # `kdsweep jobs` lists kdsweep's jobs only, and this one carries no kdsweep tag
    assert not any(str(cluster.base / "bad-token") in row for row in jobs.values())  # a refused submit left no job


def test_submission_waits_for_a_fresh_heads_job_agent_and_gives_up_on_other_errors(capsys):
    """A head that has just started answers "No available agent to submit job" for tens of seconds under load."""
    from kdsweep.cluster import NO_AGENT, while_agent_starts

    now = [0.0]
    answers = [RuntimeError(f"Request failed with status code 503: {NO_AGENT}."), RuntimeError(NO_AGENT), "job-1"]

    def attempt():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sleep(s):
        now[0] += s

    assert while_agent_starts(attempt, 10, retry_s=2, clock=lambda: now[0], sleep=sleep) == "job-1"
    assert now[0] == 4 and capsys.readouterr().err.count("job agent is not up yet") == 1
    # It gives up once the wait is over, and never retries another error.
    with pytest.raises(RuntimeError, match=NO_AGENT):
        while_agent_starts(lambda: (_ for _ in ()).throw(RuntimeError(NO_AGENT)), 5, retry_s=2,
                           clock=lambda: now[0], sleep=sleep)
    calls = []
    with pytest.raises(RuntimeError, match="quota"):
        while_agent_starts(lambda: calls.append(1) or (_ for _ in ()).throw(RuntimeError("quota")), 60,
                           clock=lambda: now[0], sleep=sleep)
    assert calls == [1]
