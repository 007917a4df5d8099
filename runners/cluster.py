"""Ray sessions for studies: an embedded local Ray, or an existing cluster; checks before any trial.

Embedded (no address): `ray.init(address="local")` in a temp dir of its own, so a stale
`ray_current_cluster` file elsewhere can never send it to a dead cluster; the dashboard is
off. Cluster (`auto`, `HOST:PORT` or `ray://HOST:PORT`): the address is probed first, and
the study's per-trial resources are checked against the nodes that exist, so a study that
can never be scheduled fails with one message instead of waiting forever. Also here:
the exclusions for `ray job submit --working-dir`, and stopping the Ray processes that one
temp dir belongs to, by pid (never `ray stop`, which ends every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil

from suite.core.errors import SuiteError

# What `ray job submit --working-dir .` must not upload (also listed in the repo's .rayignore).
UPLOAD_EXCLUDES = [".git", ".venv", "data", "results", "*.egg-info", "__pycache__", ".pytest_cache", ".benchmarks"]


@dataclass
class Session:
    """A connected Ray: where it is, and the temp dir to remove afterwards (embedded only)."""

    address: str
    embedded: bool
    temp_dir: str | None = None


def probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear message when a HOST:PORT or ray://HOST:PORT address does not answer."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise SuiteError(f"--address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise SuiteError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); "
                         f"is the head node running and the port open?") from None


@contextlib.contextmanager
def connect(address: str | None, num_cpus: int | None = None) -> Iterator[Session]:
    """An embedded local Ray (address None) or a connection to a cluster; shut down on exit.

    Inside a Ray job (`ray job submit`), RAY_ADDRESS names the job's cluster: with no address
    given, that cluster is used rather than an embedded one.
    """
    import ray

    env_address = os.environ.get("RAY_ADDRESS", "").strip()
    if address is None and env_address and not env_address.startswith(("http://", "https://")):
        address = env_address

    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:
        temp_dir = tempfile.mkdtemp(prefix="recnorm-ray-")
        try:
            ray.init(address="local", _temp_dir=temp_dir, include_dashboard=False,
                     num_cpus=num_cpus or os.cpu_count(), **quiet)
        except Exception:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        session = Session("local", True, temp_dir)
    else:
        if address != "auto":
            probe(address)
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SuiteError(f"cannot connect to a Ray cluster at {address}: {str(exc).splitlines()[0]}") from None
        session = Session(address, False)
    try:
        yield session
    finally:
        ray.shutdown()
        if session.temp_dir:
            shutil.rmtree(session.temp_dir, ignore_errors=True)


def check_resources(cpu: float, gpu: float) -> str:
    """Raise when no alive node can ever hold one trial; returns a one-line description of the cluster."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    described = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes)
    fits = [n for n in nodes if n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu]
    if not fits:
        raise SuiteError(f"each trial asks for cpu={cpu:g}, gpu={gpu:g}, but no node of the cluster can "
                         f"ever hold that (nodes: {described or 'none'}); lower [resources] in the study")
    total_cpu = sum(n.get("CPU", 0) for n in nodes)
    total_gpu = sum(n.get("GPU", 0) for n in nodes)
    return f"{len(nodes)} node(s), {total_cpu:g} CPU, {total_gpu:g} GPU"


def runtime_env() -> dict:
    """The runtime_env for shipping this working tree to a cluster from Python (ray.init / JobSubmissionClient)."""
    return {"working_dir": ".", "excludes": list(UPLOAD_EXCLUDES)}


def processes_of(temp_dir: str) -> list:
    """Every live process whose command line mentions `temp_dir`, with their children."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and any(temp_dir in part for part in (proc.info["cmdline"] or [])):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def stop_processes(procs: list, grace: float = 5.0) -> None:
    """SIGTERM the given processes, then SIGKILL whatever is left after `grace` seconds."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)


def stop_ray_in(temp_dir: str, extra: list | None = None, grace: float = 5.0) -> None:
    """Stop the Ray processes of one temp dir (and `extra` processes recorded earlier), by pid."""
    deadline = time.monotonic() + 3 * grace
    while True:
        procs = processes_of(temp_dir) + list(extra or [])
        if not procs or time.monotonic() > deadline:
            return
        stop_processes(procs, grace)
        extra = None
