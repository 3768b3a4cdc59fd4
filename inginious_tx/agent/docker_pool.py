"""The Docker agent's containers prepared ahead (helper mode), on :mod:`.container_pool`.

On by default: ``--option pool_max=N`` is the most containers kept ready per
environment (default: the agent's slots; more is allowed, each waiting
container costs memory; 0 turns the pool off), per environment
``--option pool_max:NAME=N``; ``pool_total`` (default: the slots, or the
largest ``pool_max`` if it is more) bounds all environments together,
``pool_concurrency`` (2, measured best of 1 to 4) the containers made at once, ``pool_half_life`` (60 s) how fast an
environment's demand is forgotten, ``pool_window`` the span over which its
jobs are counted as demand (2 s; 30 s when a ``pool_max`` is above the
slots: the agent takes a burst's jobs as its slots free, over several
seconds, and a pool above the slots is there to hold a whole burst).
The same options govern the grading containers of INGInious images made
ahead (:mod:`.inginious_pool`).

A container made ahead is made exactly as a job's would be (the backend's
own ``_container_config``, so every isolation setting is the same), with:

- **its own job folder**, made and mounted (tmpfs, owner mark) with it and
  bind-mounted at ``/job`` (and ``/task``, ``/archive``) as a job's, empty
  until a job takes the container; it is never used for another container;
- **a command that waits**: ``/bin/sh -s`` reading its standard input, to
  which the agent stays attached.  Nothing of a job runs before the agent
  writes on it; what it writes, once, is the job's start: the job's own
  environment variables (those that differ from the container's), then
  ``exec`` of the job's command with ``/dev/null`` as its input (as without
  the pool);
- **the memory limit of the last job of its key** (environment, runtime,
  network); a job with another limit gets its own with ``docker update``
  (memory and memory+swap) when it takes the container, before its command
  starts (an update costs the engine about as much as a start).  A runtime that cannot change a running container's
  limits (gVisor's ``runsc`` has no ``update``) gets containers made with the
  job's memory limit: the limit is then part of the key.

A job takes one (:meth:`DockerPool.acquire`) only if its environment, runtime,
network and memory class match, and if the container the job would get
without the pool has the same settings (compared, except the fields a pooled
container sets later); otherwise, and when none is ready, the job gets its
container made as without the pool.  Containers made ahead carry the labels
of the agent's others, but no job label (labels are fixed at creation) and
``org.inginious-tx.pool=1``.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import socket
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, List, Optional, Set

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ..messages import BackendNewJob
from ._engine import thd_create
from ._leftovers import STDIN_SUFFIX
from .container_pool import ContainerPool, IContainerMaker, KeyStats, NotReady, PooledContainer, Unpoolable
from .job_folder import JobFolder, remove_job_path

__all__ = [
    "PoolKey", "DockerPool", "DockerHelperMaker", "LABEL_POOL", "WAIT_COMMAND", "pool_options", "UPDATABLE_RUNTIMES",
    "comparable_settings", "thd_update_memory", "thd_running", "close_socket", "line_open", "discard_waiting",
]  # fmt: skip

#: On every container made ahead.
LABEL_POOL = "org.inginious-tx.pool"
#: What a container made ahead runs until its job starts: a shell reading its commands on stdin.
WAIT_COMMAND = ["/bin/sh", "-s"]
#: Memory limit (MB) of a container while it waits, when the runtime can raise it later.
WAIT_MEM_MB = 16
#: Runtimes known to apply ``docker update`` to a running container (None: the engine's default).
UPDATABLE_RUNTIMES = {None, "runc", "io.containerd.runc.v2"}
#: The fields of a container's create arguments that a pooled container sets later (or differently).
_LATER = ("command", "environment", "labels", "mem_limit", "memswap_limit", "mounts", "stdin_open")


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class PoolKey:
    """What a container made ahead is fixed to."""

    environment: str
    image: str
    runtime: Optional[str]
    network: bool
    #: the job's memory limit in MB, when the runtime cannot change it later; None: applied at take
    mem_mb: Optional[int] = None

    def __str__(self) -> str:
        extra = f", {self.mem_mb} MB" if self.mem_mb is not None else ""
        network = "network" if self.network else "no network"
        return f"{self.environment} ({self.runtime or 'default runtime'}, {network}{extra})"


@dataclass
class _Slot:
    """A pooled container's own: its job folder (host path) and the socket on its stdin."""

    root: str
    socket: Any
    #: the container's environment as created (the job's start exports what differs)
    environment: Dict[str, str]
    #: its create arguments but the fields set later, to compare with a job's
    settings: Dict[str, Any]
    #: its memory limit in MB (a job with another one gets its own with ``docker update``)
    mem_mb: int = 0


@dataclass
class Claimed:
    """A pooled container given to a job: its id, the job's folder in it."""

    container_id: str
    folder: JobFolder
    slot: _Slot


def pool_options(options: Dict[str, Any], slots: int) -> Dict[str, Any]:
    """The pool's settings from the backend's options (``pool_*``); raises ValueError on bad ones.

    ``pool_max`` defaults to the slots (0 turns the pool off) and may be set above them (each
    container waiting costs memory, see ``docs/running.rst``); ``pool_total`` defaults to the
    largest of the slots and the per-environment maxima, so that by default no more containers
    wait than the agent can run at once.
    """

    def number(key: str, default: float, kind: Callable[[Any], Any] = int) -> Any:
        try:
            value = kind(options.get(key, default))
        except (TypeError, ValueError):
            raise ValueError(f"option {key}: not a number: {options.get(key)!r}") from None
        if value < 0:
            raise ValueError(f"option {key}: must not be negative")
        return value

    per_env: Dict[str, int] = {}
    for key in options:
        if key.startswith("pool_max:"):
            name = key.split(":", 1)[1]
            per_env[name] = number(key, 0)
    max_per_key = number("pool_max", slots)
    return {
        "max_per_key": max_per_key,
        "per_env": per_env,
        "max_total": number("pool_total", max([slots, max_per_key, *per_env.values()])),
        "concurrency": max(1, number("pool_concurrency", 2)),
        "half_life": max(0.1, number("pool_half_life", 60.0, float)),
        # a pool above the slots is for bursts: count a burst's takes over more seconds (the agent
        # takes its jobs as its slots free, so 64 jobs on 8 slots reach it over several seconds)
        "window": max(0.1, number("pool_window", 2.0 if max([max_per_key, *per_env.values()]) <= slots else 30.0,
                                  float)),  # fmt: skip
    }


def _placeholder(key: PoolKey, mem_mb: int) -> BackendNewJob:
    """A job standing for the one to come, to build the container's settings from."""
    return BackendNewJob(
        (b"pool", "pool"), "pool", "pool", {}, key.environment, key.network, 0, None, mem_mb, False, None,
    )  # fmt: skip


def comparable_settings(config: Dict[str, Any], root: str) -> Dict[str, Any]:
    """``config`` without what a pooled container sets later; mount sources relative to the job folder."""
    out = {k: v for k, v in config.items() if k not in _LATER}
    mounts = []
    for m in config.get("mounts") or []:
        source = str(m.get("Source", ""))
        if source == root or source.startswith(root + "/"):
            source = "<job>" + source[len(root):]
        mounts.append((m.get("Target"), m.get("Type"), bool(m.get("ReadOnly")), source))
    out["mounts"] = mounts
    return out


def start_script(base: Dict[str, str], environment: Dict[str, str], command: List[str], cwd: str) -> bytes:
    """What a waiting container is told to run: the job's variables, then the job's command."""
    for name in set(base) | set(environment):
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a variable name: {name!r}")
    lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(environment.items()) if base.get(k) != v]
    lines += [f"unset {k}" for k in sorted(set(base) - set(environment))]
    lines.append(f"cd {shlex.quote(cwd)} || exit 126")
    lines.append("exec " + " ".join(shlex.quote(a) for a in command) + " </dev/null")
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


@implementer(IContainerMaker)
class DockerHelperMaker:
    """Makes the Docker agent's helper-mode containers ahead (see the module docstring).

    Everything Docker is done through the backend's callables: ``engine(f,
    *args)`` runs ``f(client, *args)`` in the backend's threads (errors
    translated), ``config(image, folder)`` gives a job's create arguments,
    ``job_root()`` makes an empty marked job folder (blocking), ``remove(client,
    cid)`` removes a container (blocking); ``job_label``: the label naming a
    job, left out (no job yet).
    """

    log = Logger()

    def __init__(
        self,
        engine: Callable[..., Deferred],
        call: Callable[..., Deferred],
        config: Callable[[str, JobFolder], Dict[str, Any]],
        job_root: Callable[[], str],
        remove: Callable[[Any, str], None],
        disk_mb: int,
        job_label: str,
        ready_runtime: Callable[[Optional[str]], bool] = lambda runtime: True,
        orphan: Callable[[str], None] = lambda cid: None,
    ) -> None:
        self._engine = engine
        self._call = call
        self._config = config
        self._job_root = job_root
        self._remove = remove
        self._disk_mb = disk_mb
        self._job_label = job_label
        self._ready_runtime = ready_runtime
        #: told of a container it could not remove (the engine away): the backend retries later
        self._orphan = orphan
        #: image -> its entrypoint (None: none), read at its first container
        self._entrypoints: Dict[str, Any] = {}
        #: the memory limit (MB) a container of the key is made with when the key leaves it open
        self.mem_for: Callable[[PoolKey], int] = lambda key: WAIT_MEM_MB

    def make(self, key: Hashable) -> Deferred:
        assert isinstance(key, PoolKey)
        if not self._ready_runtime(key.runtime):
            raise NotReady(f"runtime {key.runtime} not probed yet")
        return self._engine(self._thd_make, key)

    def forget_image(self, image: str) -> None:
        """``image`` names another image now: read its settings again at the next creation."""
        self._entrypoints.pop(image, None)

    def _thd_make(self, client: Any, key: PoolKey) -> PooledContainer:
        if key.image not in self._entrypoints:  # once per image, not per container (an engine call)
            self._entrypoints[key.image] = (client.api.inspect_image(key.image).get("Config") or {}).get("Entrypoint")
        entrypoint = self._entrypoints[key.image]
        if entrypoint:
            # its jobs run as ENTRYPOINT + command; a container waiting in a shell would bypass it
            raise Unpoolable(f"the image {key.image} has an entrypoint ({entrypoint})")
        root = self._job_root()
        cid: Optional[str] = None
        sock: Any = None
        try:
            for name in ("task", "archive"):  # the sources of the /task and /archive mounts
                os.mkdir(os.path.join(root, name), 0o755)
            mem_mb = key.mem_mb if key.mem_mb is not None else self.mem_for(key)
            folder = JobFolder(root, _placeholder(key, mem_mb), self._disk_mb)
            config = self._config(key.image, folder)
            labels = {k: v for k, v in config["labels"].items() if k != self._job_label}
            labels[LABEL_POOL] = "1"
            settings = comparable_settings(config, root)
            environment = dict(config["environment"])
            config.update(command=WAIT_COMMAND, labels=labels, stdin_open=True)
            cid = thd_create(client, config)
            sock = client.api.attach_socket(cid, params={"stdin": 1, "stream": 1})
            client.api.start(cid)
            return PooledContainer(key, cid, _Slot(root, sock, environment, settings, mem_mb))
        except BaseException:
            close_socket(sock)
            if cid is not None:
                try:
                    self._remove(client, cid)
                except Exception:
                    pass
            _remove_paths(root, root + STDIN_SUFFIX)
            raise

    def alive(self, container: PooledContainer) -> Deferred:
        """Running, and our line to its stdin still open (an engine restarted with live-restore keeps
        the container but not the line)."""
        slot: _Slot = container.data
        if not line_open(slot.socket):
            return succeed(False)
        return self._engine(thd_running, container.container_id)

    def discard(self, container: PooledContainer) -> Deferred:
        return ensureDeferred(self._discard(container))

    async def _discard(self, container: PooledContainer) -> None:
        slot: _Slot = container.data
        # the owner mark last
        await discard_waiting(self, container, slot.socket, _remove_paths, slot.root, slot.root + STDIN_SUFFIX)


def line_open(sock: Any) -> bool:
    """False if the engine closed ``sock`` (it never sends anything on a stdin-only attach)."""
    raw = getattr(sock, "_sock", sock)
    try:
        readable, _, _ = select.select([raw], [], [], 0)
    except (OSError, ValueError):  # closed
        return False
    if not readable:
        return True
    try:
        return raw.recv(1, socket.MSG_PEEK) != b""
    except ValueError:  # a TLS socket takes no flags: cannot tell, the engine's answer decides
        return True
    except OSError:
        return False


def close_socket(sock: Any) -> None:
    if sock is None:
        return
    for s in (getattr(sock, "_sock", None), sock):
        if s is not None:
            try:
                s.close()
            except Exception:
                pass


async def discard_waiting(
    maker: Any, container: PooledContainer, sock: Any, thd_cleanup: Callable[..., None], *paths: str
) -> None:
    """What every maker's ``discard`` does (never fails): close our line to the container, remove it
    (on failure, onto the backend's retry list), then its folders with blocking ``thd_cleanup(*paths)``.

    ``maker`` gives ``_engine``, ``_call``, ``_remove``, ``_orphan`` and ``log``.
    """
    close_socket(sock)
    cid = container.container_id
    try:
        await maker._engine(maker._remove, cid)
    except Exception as e:
        maker._orphan(cid)
        maker.log.warn("container pool: cannot remove {cid} now: {e}; will retry", cid=cid, e=str(e))
    try:
        await maker._call(thd_cleanup, *paths)
    except Exception:
        maker.log.failure("container pool: cannot remove {paths}", paths=paths)


def _remove_paths(*paths: str) -> None:
    for path in paths:
        remove_job_path(path)


def thd_running(client: Any, cid: str) -> bool:
    import docker

    try:
        state = client.api.inspect_container(cid).get("State") or {}
    except docker.errors.NotFound:
        return False
    return bool(state.get("Running")) and not state.get("Paused") and not state.get("Restarting")


class DockerPool:
    """The Docker backend's pool: which containers a job may take, and how it takes one.

    ``runtimes``: environment -> runtime (None: the engine's default);
    ``prepare(job, root)``: fill the job folder ``root`` for ``job`` (blocking).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        maker: DockerHelperMaker,
        settings: Dict[str, Any],
        *,
        engine: Callable[..., Deferred],
        call: Callable[..., Deferred],
        config: Callable[[str, JobFolder], Dict[str, Any]],
        prepare: Callable[[BackendNewJob, Optional[str]], JobFolder],
        images: Dict[str, str],
        runtimes: Dict[str, Optional[str]],
        min_mem_mb: int = 8,
    ) -> None:
        per_env: Dict[str, int] = settings["per_env"]
        self.pool = ContainerPool(
            clock, maker,
            max_per_key=settings["max_per_key"], max_total=settings["max_total"],
            max_for=lambda key: per_env.get(key.environment) if isinstance(key, PoolKey) else None,
            concurrency=settings["concurrency"], half_life=settings["half_life"], window=settings.get("window", 2.0),
        )  # fmt: skip
        self._clock = clock
        self._maker = maker
        self._engine = engine
        self._call = call
        self._config = config
        self._prepare = prepare
        self._images = images
        self._runtimes = runtimes
        self._min_mem = min_mem_mb
        #: runtimes whose update failed once: their memory limit goes in the key from then on
        self._fixed_mem: Set[Optional[str]] = set()
        #: per key, the memory limit of its last job: the next containers are made with it, so that
        #: the next job of the same limit needs no ``docker update``
        self._last_mem: Dict[PoolKey, int] = {}
        maker.mem_for = lambda key: self._last_mem.get(key, WAIT_MEM_MB)
        #: how many taken containers had their memory limit changed (``docker update``)
        self.updates = 0

    def key_for(self, job: BackendNewJob) -> Optional[PoolKey]:
        """The key of the containers ``job`` may take; None: none (unknown environment)."""
        image = self._images.get(job.environment)
        if image is None:
            return None
        runtime = self._runtimes.get(job.environment)
        mem = max(int(job.mem_limit), self._min_mem)
        fixed = runtime not in UPDATABLE_RUNTIMES or runtime in self._fixed_mem
        return PoolKey(job.environment, image, runtime, bool(job.enable_network), mem if fixed else None)

    def acquire(self, job: BackendNewJob) -> Deferred:
        """A pooled container with the job's folder filled and limits applied (a :class:`Claimed`), or
        None: the job makes its own.  Fails with :class:`TaskError` as preparing the job would."""
        return ensureDeferred(self._acquire(job))

    async def _acquire(self, job: BackendNewJob) -> Optional[Claimed]:
        key = self.key_for(job)
        if key is None:
            return None
        mem_mb = max(int(job.mem_limit), self._min_mem)
        if key.mem_mb is None:
            self._last_mem[key] = mem_mb
        pooled = await self.pool.take(key)
        if pooled is None:
            return None
        slot: _Slot = pooled.data
        try:
            folder = await self._call(self._prepare, job, slot.root)
        except BaseException:
            await self._maker.discard(pooled)
            raise
        claimed = Claimed(pooled.container_id, folder, slot)
        wanted = comparable_settings(self._config(key.image, folder), folder.root)
        if wanted != slot.settings:
            self.log.error(
                "container pool: a container of {key} differs from the job's ({diff}); not used",
                key=key,
                diff=sorted(k for k in set(wanted) | set(slot.settings) if wanted.get(k) != slot.settings.get(k)),
            )
            await self._give_back(pooled, folder)
            return None
        if key.mem_mb is None and slot.mem_mb != mem_mb:
            self.updates += 1
            try:
                await self._engine(thd_update_memory, pooled.container_id, f"{mem_mb}m")
            except Exception as e:
                self.log.warn(
                    "container pool: runtime {runtime} cannot change a container's memory limit ({e}); its "
                    "containers are made with their job's limit from now on",
                    runtime=key.runtime or "default",
                    e=str(e),
                )
                self._fixed_mem.add(key.runtime)
                await self._give_back(pooled, folder)
                return None
        return claimed

    async def _give_back(self, pooled: PooledContainer, folder: JobFolder) -> None:
        """A taken container the job will not use: remove it (the job's folder was filled in it)."""
        await self._maker.discard(pooled)

    def thd_go(self, client: Any, claimed: Claimed, command: List[str], cwd: str) -> None:
        """Start the job in its pooled container (blocking): write its start on the container's stdin."""
        config = self._config(self._images[claimed.folder.job.environment], claimed.folder)
        script = start_script(claimed.slot.environment, dict(config["environment"]), command, cwd)
        sock = claimed.slot.socket
        raw = getattr(sock, "_sock", sock)
        try:
            raw.sendall(script)
        finally:
            close_socket(sock)

    def record(self, job: BackendNewJob, hit: bool, seconds: float) -> None:
        """The job's container was up ``seconds`` after the job arrived."""
        key = self.key_for(job) or PoolKey(job.environment, "", None, bool(job.enable_network))
        self.pool.record_ready(key, seconds, hit)

    def stats(self) -> Dict[Hashable, KeyStats]:
        return self.pool.stats()

    def image_changed(self, environment: str) -> None:
        """The environment's image is another one now: drop its containers made from the old one."""
        for key in list(self.pool.stats()):
            if isinstance(key, PoolKey) and key.environment == environment:
                self._maker.forget_image(key.image)
                self.pool.flush(key)

    def remove_later(self, remove: Callable[[], Deferred]) -> Deferred:
        """Run ``remove()`` in the pool's removal queue (see :meth:`ContainerPool.remove_later`)."""
        return self.pool.remove_later(remove)

    def close(self) -> Deferred:
        return self.pool.close()


def thd_update_memory(client: Any, cid: str, mem: str) -> None:
    client.api.update_container(cid, mem_limit=mem, memswap_limit=mem)
