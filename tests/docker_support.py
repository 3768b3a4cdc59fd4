"""Shared helpers for tests that need a real Docker engine.

:func:`require_docker` decides whether such tests run: they are skipped only
when the engine (or the test image) is genuinely unavailable *and* the ``CI``
environment variable is unset; under CI a missing engine is a failure, so the
tests can never be skipped silently there.  ``.ci/docker-setup.sh`` makes the
engine and the image available.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, Dict, List, Optional, Set, Tuple

from host_tools import missing_setup

from inginious_tx.messages import BackendNewJob

#: The offline busybox image built by .ci/docker-setup.sh.
TEST_IMAGE = os.environ.get("INGINIOUS_TX_TEST_IMAGE", "inginious-tx/busybox:test")


@lru_cache(maxsize=1)
def docker_problem() -> Optional[str]:
    """Why Docker tests cannot run here, or None if they can (checked once, at collection)."""
    try:
        import docker
    except ImportError as e:
        return f"the docker Python package is missing ({e})"
    try:
        client = docker.from_env(timeout=10)
    except Exception as e:
        return f"no docker engine ({e})"
    try:
        client.ping()
        client.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        return f"the test image {TEST_IMAGE} is missing (run .ci/docker-setup.sh)"
    except Exception as e:
        return f"the docker engine does not answer ({e})"
    finally:
        client.close()
    return None


def require_docker() -> None:
    """Skip (outside CI) or fail (under CI) when Docker tests cannot run."""
    problem = docker_problem()
    if problem is None:
        return
    missing_setup(f"Docker unavailable: {problem}")


def docker_client() -> Any:
    """A blocking SDK client for assertions (use it from a thread in async tests)."""
    import docker

    return docker.from_env(timeout=30)


def containers_labelled(label: str, value: str) -> List[str]:
    """Ids of every container, running or not, with ``label=value`` (blocking).

    One listing call: containers that vanish meanwhile cannot make it fail.
    """
    client = docker_client()
    try:
        return [c["Id"] for c in client.api.containers(all=True, filters={"label": f"{label}={value}"})]
    finally:
        client.close()


def running_container(labels: Dict[str, str]) -> Optional[str]:
    """The id of a running container carrying all ``labels``, or None (blocking)."""
    client = docker_client()
    try:
        found = client.api.containers(filters={"label": [f"{k}={v}" for k, v in labels.items()], "status": "running"})
    finally:
        client.close()
    return found[0]["Id"] if found else None


def remove_containers(ids: List[str]) -> None:
    """Force-remove containers a failed test left behind (blocking)."""
    client = docker_client()
    try:
        for cid in ids:
            client.api.remove_container(cid, force=True)
    finally:
        client.close()


def assert_left_clean(instance_id: str, work: Optional[str] = None) -> None:
    """After a Docker backend closed: none of its containers remains (any is removed, then the
    test fails), nor a job folder under ``work`` (blocking)."""
    from inginious_tx.agent.docker import LABEL_AGENT

    leftovers = containers_labelled(LABEL_AGENT, instance_id)
    remove_containers(leftovers)
    assert leftovers == [], "a container was left behind"
    if work is not None:
        assert not os.path.exists(work) or os.listdir(work) == [], "a job folder was left behind"


def pool_containers(instance_id: str) -> List[str]:
    """Ids of the agent's containers waiting in its pool (running, made ahead; blocking)."""
    from inginious_tx.agent.docker import LABEL_AGENT
    from inginious_tx.agent.docker_pool import LABEL_POOL

    client = docker_client()
    try:
        waiting = client.api.containers(filters={"label": [f"{LABEL_AGENT}={instance_id}", LABEL_POOL],
                                                 "status": "running"})  # fmt: skip
        return [c["Id"] for c in waiting]
    finally:
        client.close()


def pool_folders(instance_id: str) -> Set[str]:
    """The job folders (host paths) of the agent's containers waiting in its pool (blocking)."""
    from inginious_tx.agent.docker import LABEL_AGENT
    from inginious_tx.agent.docker_pool import LABEL_POOL

    client = docker_client()
    try:
        waiting = client.api.containers(filters={"label": [f"{LABEL_AGENT}={instance_id}", LABEL_POOL],
                                                 "status": "running"})  # fmt: skip
        return {m["Source"] for c in waiting for m in c.get("Mounts") or [] if m.get("Destination") == "/job"}
    finally:
        client.close()


def left_in_work(work: str, instance_id: str) -> List[str]:
    """What is under ``work`` (entries, and mounts) but the folders of the containers waiting in the
    agent's pool, made ahead for jobs to come (blocking)."""
    pooled = pool_folders(instance_id)
    pooled |= {p + ".stdin" for p in pooled}
    names = [os.path.join(work, n) for n in os.listdir(work)] if os.path.isdir(work) else []
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[1].startswith(work)]
    return [p for p in names + mounts if p not in pooled]


async def until_left_clean(work: str, instance_id: str, timeout: float = 30) -> None:
    """Wait until :func:`left_in_work` is empty (checked from a thread every 0.1 s); fail after ``timeout``."""
    import time

    from twisted.internet import reactor
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThread

    deadline = time.monotonic() + timeout
    while left := await deferToThread(left_in_work, work, instance_id):
        assert time.monotonic() < deadline, f"left in the work folder: {left}"
        await deferLater(reactor, 0.1, lambda: None)


def bridge_gateway() -> Optional[str]:
    """The host's address on Docker's default bridge, or None if there is no bridge network (blocking)."""
    import docker

    client = docker_client()
    try:
        net = client.networks.get("bridge")
    except docker.errors.NotFound:
        return None
    finally:
        client.close()
    for conf in (net.attrs.get("IPAM") or {}).get("Config") or []:
        if conf.get("Gateway"):
            return str(conf["Gateway"])
    return None


def processes_in_container(container_id: str) -> List[int]:
    """Host pids of the processes whose cgroup names the container (blocking; Linux)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cgroup") as f:
                if container_id in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def make_task(tasks_dir: str, course: str, task: str, run: str) -> str:
    """Write ``TASKS/course/task/run`` (an executable sh script) and return the task folder."""
    path = os.path.join(tasks_dir, course, task)
    os.makedirs(path, exist_ok=True)
    run_path = os.path.join(path, "run")
    with open(run_path, "w") as f:
        f.write("#!/bin/sh\n" + run)
    os.chmod(run_path, 0o755)
    return path


_counter = [0]


def new_job(
    course: str = "course",
    task: str = "task",
    run_cmd: Optional[str] = None,
    inputdata: Optional[Dict[str, Any]] = None,
    environment: str = "default",
    enable_network: bool = False,
    time_limit: int = 10,
    hard_time_limit: Optional[int] = None,
    mem_limit: int = 64,
    job_id: Optional[Tuple[bytes, str]] = None,
    debug: bool = False,
) -> BackendNewJob:
    """A BackendNewJob with small limits and an id unique across processes (``debug``: its output comes back)."""
    _counter[0] += 1
    return BackendNewJob(
        job_id or (b"test-client-%d" % os.getpid(), f"job-{_counter[0]}"),
        course,
        task,
        inputdata or {},
        environment,
        enable_network,
        time_limit,
        hard_time_limit,
        mem_limit,
        debug,
        run_cmd,
    )
