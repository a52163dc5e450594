"""Run a shardyard script as a Ray Job: upload its folder, follow its logs, report its end.

``shardyard submit my_job.py -- --arg 1`` is ``ray job submit --working-dir . -- python
my_job.py --arg 1`` with the address and the token taken from the environment that
``eval "$(shardyard cluster env)"`` sets (or ``--address``), the job's output streamed
here as it runs, and the script's exit status as the command's own. Inside the job,
``shardyard.connect()`` joins the cluster the job runs on (Ray sets ``RAY_ADDRESS`` there).

Example:
    >>> report = submit_job("my_job.py", working_dir=".")    # doctest: +SKIP
    >>> report.status, report.exit_code                        # doctest: +SKIP
    ('SUCCEEDED', 0)
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from shardyard.cluster.auth import use_token_if_found
from shardyard.errors import ClusterConnectionError

__all__ = ["JobReport", "jobs_address", "submit_job"]


@dataclass(frozen=True)
class JobReport:
    """How a submitted job ended.

    Attributes:
        job_id: Ray's submission id.
        status: ``SUCCEEDED``, ``FAILED`` or ``STOPPED``.
        exit_code: the script's exit status (1 when Ray reports none for a failed job).
        message: Ray's message about the end.
        logs: everything the job printed.
    """

    job_id: str
    status: str
    exit_code: int
    message: str
    logs: str


def jobs_address(address: str | None = None) -> str:
    """The Jobs API (dashboard) URL: ``address``, ``RAY_API_SERVER_ADDRESS``, or the
    recorded ``shardyard cluster up`` cluster's."""
    if address:
        return address
    env = os.environ.get("RAY_API_SERVER_ADDRESS")
    if env:
        return env
    from shardyard.cluster.local import ClusterDownError, LocalCluster

    try:
        return LocalCluster.load().dashboard
    except ClusterDownError:
        raise ClusterConnectionError(
            "",
            "unreachable",
            "no Jobs API address: pass --address http://HEAD:8265, set RAY_API_SERVER_ADDRESS "
            '(eval "$(shardyard cluster env)" does), or start a cluster with '
            "`shardyard cluster up`",
        ) from None


def submit_job(
    script: str,
    args: list[str] | None = None,
    *,
    address: str | None = None,
    working_dir: str | None = None,
    pip: list[str] | None = None,
    wait: bool = True,
    timeout_s: float | None = None,
    out: TextIO | None = None,
) -> JobReport:
    """Submit ``python script args`` as a Ray Job and (by default) follow it to its end.

    Args:
        script: the script, a path relative to ``working_dir``.
        args: its arguments.
        address: the Jobs API URL (see :func:`jobs_address`).
        working_dir: uploaded as the job's working folder (default: the script's folder).
        pip: extra packages for the job's environment (Ray's ``runtime_env`` pip).
        wait: follow the logs until the job ends; ``False`` returns once it is accepted.
        timeout_s: stop the job and raise ``TimeoutError`` after this long.
        out: where the job's output is echoed as it comes (default: stdout).

    Raises:
        ClusterConnectionError: the Jobs API is not reachable, or refuses the token.
        TimeoutError: ``timeout_s`` passed (the job was stopped).
    """
    use_token_if_found()
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus, JobSubmissionClient

    url = jobs_address(address)
    folder = Path(working_dir) if working_dir else Path(script).parent
    rel = os.path.relpath(Path(script), folder) if working_dir else Path(script).name
    entrypoint = shlex.join(["python", rel, *(args or [])])
    runtime_env: dict[str, object] = {"working_dir": str(folder)}
    if pip:
        runtime_env["pip"] = list(pip)
    try:
        client = JobSubmissionClient(url)
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    except AuthenticationError as exc:
        reason = "token_rejected" if os.environ.get("RAY_AUTH_MODE") == "token" else "token_missing"
        raise ClusterConnectionError(
            url, reason, f"the Jobs API at {url} refused this process: {exc}"
        ) from None
    except ConnectionError as exc:
        raise ClusterConnectionError(
            url, "unreachable", f"the Jobs API at {url} did not answer: {exc}"
        ) from None
    if not wait:
        return JobReport(job_id, "PENDING", 0, "submitted", "")
    sink = out if out is not None else sys.stdout
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    shown = 0
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        sink.write(logs[shown:])
        sink.flush()
        shown = len(logs)
        if status in terminal:
            break
        if deadline is not None and time.monotonic() > deadline:
            client.stop_job(job_id)
            raise TimeoutError(f"job {job_id} ran longer than {timeout_s:g} s; it was stopped")
        time.sleep(0.5)
    info = client.get_job_info(job_id)
    code = info.driver_exit_code
    if code is None:
        code = 0 if status == JobStatus.SUCCEEDED else 1
    # Ray's message repeats the end of the logs after its first line: keep the first.
    message = (info.message or "").split(", last available logs", 1)[0].splitlines()[:1]
    return JobReport(job_id, str(status.value), int(code), "".join(message), logs)
