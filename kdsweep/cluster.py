"""How kdsweep talks to an existing Ray cluster: the dashboard address, the authentication token, and Ray's Jobs
API (submit, list, stop, follow) with every failure turned into a one-paragraph `UserError`.

Ray is imported inside the functions, never at module level: `kdsweep train` and `bench` must not import it, and
`kdsweep.tune` takes the constants below without paying for the Jobs SDK.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kdsweep.errors import UserError

# Environment for the sweep's driver and every trial. Trials stay in the launch directory (docs/ray-notes.md pitfall 3:
# under `ray job submit` relative paths break otherwise); no usage-stats phone-home from clusters without internet.
WORKER_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}

# Not shipped with the working directory (gitignore-style patterns; `.gitignore` is honoured as well): results and
# datasets live in shared storage, the rest is local state. Ray caps the upload at 512 MiB.
WORKING_DIR_EXCLUDES = ["results/", "data/", ".git/", ".venv/", "venv/", "__pycache__/", "*.pyc", ".pytest_cache/",
                        ".mypy_cache/", ".ruff_cache/", "*.egg-info/", "build/", "dist/"]

SHARED_STORAGE_HINT = ("pass --storage (or set `storage:` in the space) to a folder mounted on every node, e.g. NFS "
                       "at /mnt/shared/kdsweep, or to an s3:// or gs:// URI")

JOB_TAG = "kdsweep"  # submission-metadata key that marks kdsweep's jobs (its value: the kdsweep version)
DASHBOARD_PORT = 8265  # Ray's default dashboard / Jobs API port
ERROR_PREFIX = "kdsweep: error: "  # how the CLI prints a UserError (kdsweep.cli.main)
SUPPORTED_RAY = "2.60."  # the Ray minor release kdsweep's Tune code is written for (pyproject pins ray[tune] 2.60.x)


def job_runtime_env() -> dict:
    """The runtime env of the Ray job whose driver this process is; {} outside a Ray job."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")  # Ray sets it for a job's driver
    return job.get("runtime_env") or {}


def missing_token(url: str) -> str:
    return (f"the Ray cluster at {url} requires an authentication token and none was found: set RAY_AUTH_TOKEN, or "
            f"RAY_AUTH_TOKEN_PATH to a file that holds it, or write it to ~/.ray/auth_token (`ray get-auth-token` "
            f"on the head prints it).")


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it was found, for messages: an environment variable or a file (never the token itself)


def find_token() -> Token | None:
    """The cluster's authentication token, looked up where Ray looks: $RAY_AUTH_TOKEN, then the file named by
    $RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return Token(os.environ["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN")
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named).expanduser() if named else Path.home() / ".ray" / "auth_token"
    try:
        value = path.read_text().strip()
    except OSError:
        if named:
            raise UserError(f"RAY_AUTH_TOKEN_PATH names {path}, which cannot be read: point it at the file that "
                            f"holds the cluster's token (`ray get-auth-token` on the head prints it).") from None
        return None
    return Token(value, str(path)) if value else None


def dashboard_url(address: str | None) -> str:
    """The Jobs API address: --address, else $RAY_API_SERVER_ADDRESS, else an http $RAY_ADDRESS."""
    env_address = os.environ.get("RAY_ADDRESS", "")
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or (env_address if "://" in env_address else None)
    if not address:
        raise UserError(f"which Ray cluster? Pass --address http://HEAD:{DASHBOARD_PORT} (the head node's dashboard) "
                        f"or set RAY_API_SERVER_ADDRESS.")
    return (address if "://" in address else f"http://{address}").rstrip("/")


# A head that has just started answers "No available agent to submit job" until its job agent is up: tens of
# seconds on a loaded machine. Submission retries that long, every AGENT_RETRY_S, saying so once.
AGENT_WAIT_S, AGENT_RETRY_S = 90.0, 2.0
NO_AGENT = "No available agent to submit job"


def while_agent_starts(attempt, wait_s: float, retry_s: float = AGENT_RETRY_S, clock=time.monotonic,
                       sleep=time.sleep):
    """`attempt()`, again every `retry_s` while it fails with Ray's no-agent-yet error, for at most `wait_s`."""
    deadline = clock() + wait_s
    told = False
    while True:
        try:
            return attempt()
        except RuntimeError as err:
            if NO_AGENT not in str(err) or clock() + retry_s > deadline:
                raise
            if not told:
                print(f"kdsweep: the cluster's job agent is not up yet (a head that has just started); retrying for up "
                      f"to {wait_s:.0f} s", file=sys.stderr, flush=True)
                told = True
            sleep(retry_s)


class Cluster:
    """A Ray cluster reached through its dashboard's Jobs API (needs `ray[default]`: pip install kdsweep[cluster])."""

    def __init__(self, address: str | None):
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError:
            raise UserError("talking to a Ray cluster needs Ray's Jobs SDK: pip install 'kdsweep[cluster]' "
                            "(it adds ray[default]).") from None
        self.url = dashboard_url(address)
        self.token = find_token()
        # An explicit header: kdsweep finds the token itself, so users need not also set RAY_AUTH_MODE=token.
        headers = {"Authorization": f"Bearer {self.token.value}"} if self.token else None
        with self.errors():
            try:
                self._client = JobSubmissionClient(self.url, headers=headers)
            except RuntimeError as err:  # something answers, but not a Ray dashboard of a supported version
                raise UserError(f"{self.url} is not the Jobs API of a Ray dashboard ({_last_line(err)}): give the "
                                f"head node's dashboard address, --address http://HEAD:{DASHBOARD_PORT}.") from None
        # Set by the client's own version check; Ray has no public accessor for it.
        self.ray_version = getattr(self._client, "_server_ray_version", None)

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Connection and authentication failures as one sentence each (Ray's own messages never hold the token)."""
        import requests
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError:
            if self.token is None:
                raise UserError(missing_token(self.url)) from None
            raise UserError(
                f"the Ray cluster at {self.url} rejected the authentication token from {self.token.source}: it is not "
                f"this cluster's token (`ray get-auth-token` on the head prints the right one).") from None
        except (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout):
            raise UserError(
                f"nothing answers at {self.url}: give the head node's dashboard address (--address "
                f"http://HEAD:{DASHBOARD_PORT}), check that the cluster is up (`ray status` on the head) and that "
                f"the port is reachable from here (e.g. `ssh -L {DASHBOARD_PORT}:localhost:{DASHBOARD_PORT} HEAD`, "
                f"then --address http://localhost:{DASHBOARD_PORT}).") from None

    def check_ray_version(self) -> None:
        if self.ray_version and not self.ray_version.startswith(SUPPORTED_RAY):
            raise UserError(
                f"the Ray cluster at {self.url} runs Ray {self.ray_version}, but kdsweep needs Ray {SUPPORTED_RAY}x: "
                f"start the cluster from the image docker/Dockerfile builds (or pip install 'ray[default]=="
                f"{SUPPORTED_RAY}0').")

    def submit(self, *, entrypoint: str, runtime_env: dict, metadata: dict, submission_id: str) -> str:
        def attempt() -> str:
            return self._client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata,
                                           submission_id=submission_id)

        with self.errors():
            try:
                return while_agent_starts(attempt, AGENT_WAIT_S)
            except (RuntimeError, ValueError) as err:  # upload over Ray's 512 MiB cap, a refused request, ...
                raise UserError(f"the Ray cluster at {self.url} did not accept the job: {_last_line(err)}") from None

    def info(self, job_id: str):
        """The job's `JobDetails` (status, message, driver_exit_code, metadata)."""
        with self.errors():
            try:
                return self._client.get_job_info(job_id)
            except RuntimeError:
                raise UserError(f"the Ray cluster at {self.url} has no job {job_id} "
                                f"(`kdsweep jobs --address {self.url}` lists them).") from None

    def kdsweep_jobs(self) -> list:
        """kdsweep's jobs (tagged in their submission metadata), oldest first."""
        with self.errors():
            jobs = self._client.list_jobs()
        mine = [j for j in jobs if (j.metadata or {}).get(JOB_TAG)]
        return sorted(mine, key=lambda j: j.start_time or 0)

    def stop(self, job_id: str, wait_s: float = 60.0):
        """Ask Ray to stop the job (SIGTERM to its driver, which ends its trials); returns its details after up to
        `wait_s` seconds."""
        with self.errors():
            self._client.stop_job(job_id)
        return self.wait(job_id, wait_s)

    def wait(self, job_id: str, wait_s: float):
        deadline = time.monotonic() + wait_s
        details = self.info(job_id)
        while not details.status.is_terminal() and time.monotonic() < deadline:
            time.sleep(0.5)
            details = self.info(job_id)
        return details

    def follow(self, job_id: str, out=None):
        """Stream the job's logs to `out` (stdout) until it ends; returns its final details."""
        import asyncio

        out = out or sys.stdout

        async def tail() -> None:
            async for chunk in self._client.tail_job_logs(job_id):
                out.write(chunk)
                out.flush()

        with self.errors():
            try:
                asyncio.run(tail())
            except RuntimeError as err:  # the stream closed before the job ended (e.g. the head restarted)
                raise UserError(f"lost the log stream of job {job_id} at {self.url} ({_last_line(err)}); it may "
                                f"still be running: `kdsweep jobs --address {self.url}`.") from None
        return self.wait(job_id, 30.0)  # the status can trail the end of the log stream by a moment

    def last_error(self, job_id: str) -> str | None:
        """The first line of the last `kdsweep: error: ...` message the job's driver printed, if any."""
        with self.errors():
            logs = self._client.get_job_logs(job_id)
        found = logs.rfind(ERROR_PREFIX)
        return logs[found + len(ERROR_PREFIX):].split("\n")[0].strip() if found >= 0 else None


def _last_line(err: BaseException) -> str:
    """The last line of an error that says something (Ray's HTTP errors end in a server traceback and a lone '.')."""
    lines = [line.strip() for line in str(err).splitlines() if any(c.isalnum() for c in line)]
    return lines[-1] if lines else type(err).__name__
