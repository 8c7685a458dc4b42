"""Ray, started once for the whole project, and the check that every node sees the storage root.

`start_ray` is the one `ray.init` of lockbench: a private local cluster without `RAY_ADDRESS`, the named
cluster with it. Workers get the offline switches, the device choice and lockbench's checkout on their
path; a submission adds its own variables and a start-up hook. On a real cluster every node reads and
writes the storage root, so it must be shared (a network filesystem); `check_nodes_see_root` proves it
before any release or cell runs: the driver writes a probe file, and a task pinned to each node reads it
back. A node that cannot fails the run with one line naming the node and the path.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from bench.config import ConfigError
from bench.runtime.device import DEVICE_ENV
from bench.runtime.numerics import numerics_env
from bench.runtime.offline import offline_env
from bench.runtime.runlog import LOG_FORMAT, reclaim
from bench.runtime.storage import DEFAULT_ROOT_ENV

PROBE_PREFIX = ".lockbench-probe-"
PROBE_TIMEOUT_S = 120.0
#: Ray starts its workers at nice 15 by default, so on a shared machine any other process takes about 28x
#: their share of a core and a run crawls; a local cluster's workers run at the driver's priority instead.
#: The raylet reads this variable when it starts; a value in the environment is kept, and a cluster joined
#: through $RAY_ADDRESS keeps the niceness it was started with.
WORKER_NICENESS_ENV = "RAY_worker_niceness"


class StorageNotShared(ConfigError):
    """A Ray node cannot see the driver's storage root."""


def project_pythonpath(*extra: str) -> str:
    """Workers import lockbench from the same checkout as the driver (then `extra`, then $PYTHONPATH)."""
    here = str(Path(__file__).resolve().parents[2])
    existing = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(part for part in (here, *extra, existing) if part)


def start_ray(num_cpus: int | None = None, env_vars: Mapping[str, str] | None = None,
              pythonpath: Sequence[str] = (), setup_hook: str | None = None) -> None:
    """Start (or join, with $RAY_ADDRESS) the cluster once per process; later calls are no-ops."""
    # local: Ray is loaded only by runs on the Ray executor (serial runs and tests stay light)
    import ray

    if ray.is_initialized():
        return
    reclaim("ray")  # `import ray` gave its logger a terminal handler: its start-up notes go to the run's log
    address = os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")
    env = {**offline_env(), **numerics_env(), "PYTHONPATH": project_pythonpath(*pythonpath),
           **{name: os.environ[name] for name in (DEVICE_ENV,) if name in os.environ}, **(env_vars or {})}
    runtime_env: dict[str, object] = {"env_vars": env}
    if setup_hook:
        runtime_env["worker_process_setup_hook"] = setup_hook
    # "local": without RAY_ADDRESS, always a private cluster. ray.init(address=None) would join whatever
    # cluster `ray start` last left on this machine (someone else's, possibly).
    ray.init(address=address or "local", num_cpus=None if address else num_cpus, include_dashboard=False,
             log_to_driver=False, runtime_env=runtime_env, ignore_reinit_error=True,
             # keeps the handler `reclaim` set (configure_logging=False would clear it) in the run log's format
             logging_level=logging.WARNING, logging_format=LOG_FORMAT)


#: How many `ray_session` blocks this process is inside: while any is open, `stop_local_ray` keeps the cluster.
_sessions = [0]


@contextmanager
def ray_session() -> Iterator[None]:
    """One Ray cluster for several steps of one command (`lockbench run --validate`: the zoo check, the
    validation run against `none`, then the benchmark run): inside the block `start_ray` starts the cluster
    once and the executors' `stop_local_ray` keeps it; the outermost block shuts it down on the way out.
    Starts nothing itself: a block whose steps never need Ray costs nothing."""
    _sessions[0] += 1
    try:
        yield
    finally:
        _sessions[0] -= 1
        if not _sessions[0]:
            stop_local_ray()


def stop_local_ray() -> None:
    """Shut down a cluster this process started (unless a `ray_session` holds it); a cluster joined through
    $RAY_ADDRESS stays up."""
    # local: Ray is loaded only by runs on the Ray executor (serial runs and tests stay light)
    import ray

    if ray.is_initialized() and not os.environ.get("RAY_ADDRESS") and not _sessions[0]:
        ray.shutdown()


def read_probe(probe: str, token: str, driver_home: str | None) -> str:
    """On a node: "" when it reads the driver's probe file back and its $LOCKBENCH_HOME is the driver's, else
    why not (a node started with another LOCKBENCH_HOME was set up for storage of its own)."""
    own_home = os.environ.get(DEFAULT_ROOT_ENV)
    if own_home != driver_home:
        return f"the node's {DEFAULT_ROOT_ENV} is {own_home or 'unset'}, the driver's {driver_home or 'unset'}"
    try:
        seen = Path(probe).read_text()
    except OSError as error:
        return f"cannot read the probe file the driver wrote there ({error.strerror or error})"
    return "" if seen == token else "the probe file there holds another run's token (a different filesystem?)"


def check_nodes_see_root(root: Path) -> None:
    """Raise StorageNotShared naming the first node (id and address) that cannot see `root`."""
    # local: Ray is loaded only by runs on the Ray executor (serial runs and tests stay light)
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    probe = root / f"{PROBE_PREFIX}{token}"
    probe.write_text(token)
    try:
        remote = ray.remote(num_cpus=0, max_retries=0)(read_probe)
        nodes = [node for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0]
        refs = {remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                .remote(str(probe), token, os.environ.get(DEFAULT_ROOT_ENV)): node for node in nodes}
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        for ref in late:
            node = refs[ref]
            raise StorageNotShared(f"Ray node {node['NodeID'][:12]} ({node.get('NodeManagerAddress')}) did not answer "
                                   f"the storage-root probe for {root} within {PROBE_TIMEOUT_S:.0f} s")
        for ref in ready:
            problem = ray.get(ref)
            if problem:
                node = refs[ref]
                raise StorageNotShared(f"Ray node {node['NodeID'][:12]} ({node.get('NodeManagerAddress')}) cannot "
                                       f"see the storage root {root}: {problem}; every node needs the same root on "
                                       "a shared filesystem (README, 'On a cluster')")
    finally:
        probe.unlink(missing_ok=True)
