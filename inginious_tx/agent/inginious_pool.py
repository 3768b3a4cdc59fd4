"""Grading containers of INGInious images prepared ahead of demand, on :mod:`.container_pool`.

An INGInious grading image's program (its ``CMD``) starts, then waits on its
standard input for the agent's ``start`` message: a container can be made,
started and attached before its job arrives, and the job then costs only
its own work.  The same options as helper mode govern it (``pool_max``,
``pool_max:NAME``, ``pool_total``, ``pool_concurrency``,
``pool_half_life``: :mod:`.docker_pool`); ``pool_max=0`` turns it off.

**Made ahead** (:class:`IngiMaker`), exactly as a job's own container
(:func:`.inginious_job.grader_config`: the same isolation settings):

- its own job folder (:func:`.inginious_folder.make_ingi_root`: on its own
  tmpfs, with the owner mark), every mounted folder in it empty, mounted at
  the same places as a job's;
- the image, runtime, network, the agent's labels and ``org.inginious-tx.pool=1``
  but no job label (labels are fixed at creation);
- the memory limit of the last job of its key; under a runtime that cannot
  change a running container's limits (gVisor's ``runsc``), the job's own:
  the limit is then part of the key;
- attached (standard input and output) and started: the image's program is
  up and waits for its ``start``.

**At take** (:meth:`IngiPool.acquire`): the job's task, student folder and
course ``$common`` are copied into the container's folder
(:func:`.inginious_folder.fill_ingi_job`, the rules of a job's own folder),
while the engine confirms the container still runs; the settings the job
would get without the pool are compared with the container's; a memory
limit other than the container's is applied with ``docker update``.  The
job then writes its ``start`` on the attached socket.  A container that died
while it waited, or that differs, is removed and the job makes its own, as
without the pool.  One container, one job: it is removed after its job.

**Creations yield to jobs.**  Making a container keeps the engine busy for
a few hundred milliseconds of CPU; on a small machine that slows the job
running beside it (a trivial job took twice as long on 2 cores).  So a
container is made once no INGInious job of the agent runs, or after
:data:`YIELD_SECONDS` at most, whichever comes first.

A key whose containers keep dying before their job (an image whose program
does not wait for its ``start``, an engine restarted) gets none made ahead
for a while (:data:`REFUSED_SECONDS`).
"""

from __future__ import annotations

import select
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ..messages import BackendNewJob
from ._oom import oom_counter, oom_kills
from .container_pool import ContainerPool, IContainerMaker, KeyStats, NotReady, PooledContainer
from .docker_pool import (
    LABEL_POOL,
    UPDATABLE_RUNTIMES,
    close_socket,
    comparable_settings,
    discard_waiting,
    thd_update_memory,
)
from .inginious_folder import IngiFolder, check_ingi_task, fill_ingi_job, make_ingi_root, remove_ingi_job
from .inginious_job import MIN_MEMORY_MB, IngiImage, agent_labels, grader_config, thd_attach, work_dir

__all__ = [
    "IngiKey", "IngiMaker", "IngiPool", "IngiClaimed", "ingi_pool_for", "DEAD_IN_A_ROW", "REFUSED_SECONDS",
    "YIELD_SECONDS",
]  # fmt: skip

#: Containers of one key found dead at take, in a row, after which none is made ahead for that key
#: during :data:`REFUSED_SECONDS`.
DEAD_IN_A_ROW = 3
REFUSED_SECONDS = 60.0
#: The longest a creation waits for the agent's running jobs to end.
YIELD_SECONDS = 0.5
#: Memory limit (MB) of a key's first containers, before any job said its own.
_FIRST_MEM_MB = 128


@dataclass(frozen=True)
class IngiKey:
    """What a grading container made ahead is fixed to."""

    environment: str
    image_id: str
    runtime: Optional[str]
    network: bool
    #: the job's memory limit in MB, when the runtime cannot change it later; None: applied at take
    mem_mb: Optional[int] = None

    def __str__(self) -> str:
        extra = f", {self.mem_mb} MB" if self.mem_mb is not None else ""
        network = "network" if self.network else "no network"
        return f"{self.environment} (INGInious image, {self.runtime or 'default runtime'}, {network}{extra})"


@dataclass
class _Waiting:
    """A grading container made ahead: its job folder, our line to it, how it was made."""

    folder: IngiFolder
    #: the socket attached to its standard input and output (blocking, no timeout)
    socket: Any
    #: its create arguments but the fields set later, to compare with a job's
    settings: Dict[str, Any]
    #: its memory limit in MB
    mem_mb: int


@dataclass
class IngiClaimed:
    """A grading container made ahead, given to one job: its folder holds the job's files."""

    container_id: str
    folder: IngiFolder
    socket: Any
    #: the file counting its out-of-memory kills (:mod:`._oom`), and the count when it was taken;
    #: None: unknown here, ask the engine
    oom_file: Optional[str] = None
    oom_before: int = 0


def _thd_state(client: Any, cid: str) -> Tuple[bool, Optional[str], int]:
    """Whether the container runs (and is not paused), its OOM counter file and that count now."""
    import docker

    try:
        state = client.api.inspect_container(cid).get("State") or {}
    except docker.errors.NotFound:
        return False, None, 0
    if not state.get("Running") or state.get("Paused") or state.get("Restarting"):
        return False, None, 0
    path = oom_counter(int(state.get("Pid") or 0)) if state.get("Pid") else None
    count = oom_kills(path) if path is not None else None
    return True, path if count is not None else None, count or 0


@implementer(IContainerMaker)
class IngiMaker:
    """Makes grading containers of INGInious images ahead (see the module docstring).

    ``clock``: the pool's; ``engine(f, *args)`` runs ``f(client, *args)`` in the backend's threads
    (errors translated), ``call(f, *args)`` a blocking ``f``;
    ``config(image, folder, mem_mb, network)`` gives a grading container's
    create arguments with the agent's labels (no job's); ``make_root()``
    makes an empty job folder (blocking); ``attach(client, cid)`` attaches
    to a container's standard input and output (blocking), ``remove(client,
    cid)`` removes a container (blocking); ``ready_runtime(runtime)``: False
    until the runtime's pids policy is known (a job probes it).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        engine: Callable[..., Deferred],
        call: Callable[..., Deferred],
        config: Callable[[IngiImage, IngiFolder, int, bool], Dict[str, Any]],
        make_root: Callable[[], IngiFolder],
        attach: Callable[[Any, str], Any],
        remove: Callable[[Any, str], None],
        ready_runtime: Callable[[Optional[str]], bool] = lambda runtime: True,
        orphan: Callable[[str], None] = lambda cid: None,
    ) -> None:
        self._clock = clock
        #: a container it could not remove goes to the backend's retry list
        self._orphan = orphan
        self._engine = engine
        self._call = call
        self._config = config
        self._make_root = make_root
        self._attach = attach
        self._remove = remove
        self._ready_runtime = ready_runtime
        #: the memory limit (MB) a container of the key is made with when the key leaves it open
        self.mem_for: Callable[[IngiKey], int] = lambda key: _FIRST_MEM_MB
        #: keys whose containers kept dying before their job: none is made for them until then (a time
        #: of the pool's clock)
        self.refused: Dict[IngiKey, float] = {}
        #: INGInious jobs of the agent running now, and the creations waiting for them to end
        self.running = 0
        self._waiting: List[Deferred] = []

    def job_started(self) -> None:
        """An INGInious job of the agent arrived: creations wait (a bounded time) for its end."""
        self.running += 1

    def job_ended(self) -> None:
        """That job was answered."""
        self.running = max(0, self.running - 1)
        if not self.running:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                if not d.called:
                    d.callback(None)

    def _quiet(self) -> Deferred:
        """Fires once no job runs, or after :data:`YIELD_SECONDS`."""
        if not self.running:
            return succeed(None)
        d: Deferred[None] = Deferred()

        def enough() -> None:
            if not d.called:
                d.callback(None)

        timer = self._clock.callLater(YIELD_SECONDS, enough)

        def stop(_: None) -> None:
            if timer.active():
                timer.cancel()

        d.addCallback(stop)
        self._waiting.append(d)
        return d

    def make(self, key: Hashable) -> Deferred:
        assert isinstance(key, IngiKey)
        until = self.refused.get(key)
        if until is not None and self._clock.seconds() < until:
            raise NotReady(f"its last {DEAD_IN_A_ROW} containers exited before their job")
        if not self._ready_runtime(key.runtime):
            raise NotReady(f"runtime {key.runtime} not probed yet")
        return self._quiet().addCallback(lambda _: self._engine(self._thd_make, key))

    def _thd_make(self, client: Any, key: IngiKey) -> PooledContainer:
        folder = self._make_root()
        cid: Optional[str] = None
        sock: Any = None
        try:
            mem_mb = key.mem_mb if key.mem_mb is not None else self.mem_for(key)
            config = self._config(IngiImage(key.image_id, key.runtime), folder, mem_mb, key.network)
            config["labels"] = dict(config["labels"], **{LABEL_POOL: "1"})
            settings = comparable_settings(config, folder.root)
            cid = str(client.containers.create(**config).id)
            sock = self._attach(client, cid)
            client.api.start(cid)
            return PooledContainer(key, cid, _Waiting(folder, sock, settings, mem_mb))
        except BaseException:
            close_socket(sock)
            if cid is not None:
                try:
                    self._remove(client, cid)
                except Exception:
                    pass
            remove_ingi_job(folder.root)
            raise

    def alive(self, container: PooledContainer) -> Deferred:
        """True while our line to it is open and silent: its program waits for its ``start``.  (The
        engine confirms that it runs when a job takes it, see :meth:`IngiPool.acquire`.)"""
        waiting: _Waiting = container.data
        return succeed(_silent(waiting.socket))

    def discard(self, container: PooledContainer) -> Deferred:
        return ensureDeferred(self._discard(container))

    async def _discard(self, container: PooledContainer) -> None:
        waiting: _Waiting = container.data
        await discard_waiting(self, container, waiting.socket, remove_ingi_job, waiting.folder.root)


def _silent(sock: Any) -> bool:
    """False if ``sock`` ended (the container exited) or holds output: a program that waits for its
    ``start`` writes nothing before it."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):  # closed
        return False
    return not readable


class IngiPool:
    """The Docker backend's pool of INGInious grading containers: which a job may take, and how.

    ``settings``: :func:`.docker_pool.pool_options`; ``fill(folder, job)``
    copies a job's files into a container's folder (blocking, raises
    :class:`.job_folder.TaskError` as preparing the job would);
    ``check(job)`` raises that error before any container is taken (blocking);
    ``config``, ``engine``, ``call``: as :class:`IngiMaker`'s; ``min_mem_mb``:
    the smallest memory limit a grading container gets.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        maker: IngiMaker,
        settings: Dict[str, Any],
        *,
        engine: Callable[..., Deferred],
        call: Callable[..., Deferred],
        config: Callable[[IngiImage, IngiFolder, int, bool], Dict[str, Any]],
        fill: Callable[[IngiFolder, BackendNewJob], None],
        check: Callable[[BackendNewJob], None] = lambda job: None,
        min_mem_mb: int = MIN_MEMORY_MB,
    ) -> None:
        per_env: Dict[str, int] = settings["per_env"]
        self.pool = ContainerPool(
            clock, maker,
            max_per_key=settings["max_per_key"], max_total=settings["max_total"],
            max_for=lambda key: per_env.get(key.environment) if isinstance(key, IngiKey) else None,
            concurrency=settings["concurrency"], half_life=settings["half_life"],
            window=settings.get("window", 2.0),
        )  # fmt: skip
        self._maker = maker
        self._clock = clock
        self._engine = engine
        self._call = call
        self._config = config
        self._fill = fill
        self._check = check
        self._min_mem = min_mem_mb
        #: runtimes whose update failed once: their memory limit goes in the key from then on
        self._fixed_mem: Set[Optional[str]] = set()
        #: per key, the memory limit of its last job: its next containers are made with it
        self._last_mem: Dict[IngiKey, int] = {}
        maker.mem_for = lambda key: self._last_mem.get(key, max(_FIRST_MEM_MB, self._min_mem))
        #: per key, containers found dead at take in a row
        self._dead: Dict[IngiKey, int] = {}
        #: how many taken containers had their memory limit changed (``docker update``)
        self.updates = 0

    def _mem(self, job: BackendNewJob) -> int:
        return max(int(job.mem_limit), self._min_mem)

    def key_for(self, job: BackendNewJob, image: IngiImage) -> IngiKey:
        """The key of the containers ``job`` may take on ``image``."""
        fixed = image.runtime not in UPDATABLE_RUNTIMES or image.runtime in self._fixed_mem
        network = bool(job.enable_network)
        return IngiKey(job.environment, image.image_id, image.runtime, network, self._mem(job) if fixed else None)

    def acquire(self, job: BackendNewJob, image: IngiImage) -> Deferred:
        """A grading container made ahead, filled for ``job`` with its limits (an :class:`IngiClaimed`),
        or None: the job makes its own.  Fails as filling a job's folder would (:class:`TaskError`)."""
        return ensureDeferred(self._acquire(job, image))

    async def _acquire(self, job: BackendNewJob, image: IngiImage) -> Optional[IngiClaimed]:
        # a job that cannot run costs no container: its task is checked first
        await self._call(self._check, job)
        key = self.key_for(job, image)
        mem_mb = self._mem(job)
        if key.mem_mb is None:
            self._last_mem[key] = mem_mb
        dead = self._dead_count(key)
        pooled = await self.pool.take(key)
        if self._dead_count(key) > dead:  # found dead by the pool itself (their line had ended)
            self._died(key, self._dead_count(key) - dead)
        if pooled is None:
            return None
        waiting: _Waiting = pooled.data
        # the engine's word that it still runs, while its folder is filled
        running = self._engine(_thd_state, pooled.container_id)
        filled = self._call(self._fill, waiting.folder, job)
        (ran, state), (ok, failure) = await DeferredList([running, filled], consumeErrors=True)
        if not ok:
            await self._maker.discard(pooled)
            failure.raiseException()
        if not ran or not state[0]:
            self.log.warn("container pool: {cid} died while it waited; discarded", cid=pooled.container_id)
            self.pool.stats()[key].dead += 1
            self._died(key, 1)
            await self._maker.discard(pooled)
            return None
        self._dead.pop(key, None)
        wanted = comparable_settings(self._config(image, waiting.folder, mem_mb, key.network), waiting.folder.root)
        if wanted != waiting.settings:
            self.log.error(
                "container pool: a container of {key} differs from the job's ({diff}); not used",
                key=key,
                diff=sorted(k for k in set(wanted) | set(waiting.settings) if wanted.get(k) != waiting.settings.get(k)),
            )
            await self._maker.discard(pooled)
            return None
        if key.mem_mb is None and waiting.mem_mb != mem_mb:
            self.updates += 1
            try:
                await self._engine(thd_update_memory, pooled.container_id, f"{mem_mb}m")
            except Exception as e:
                self.log.warn(
                    "container pool: runtime {runtime} cannot change a container's memory limit ({e}); its "
                    "grading containers are made with their job's limit from now on",
                    runtime=key.runtime or "default",
                    e=str(e),
                )
                self._fixed_mem.add(key.runtime)
                await self._maker.discard(pooled)
                return None
        return IngiClaimed(pooled.container_id, waiting.folder, waiting.socket, state[1], state[2])

    def _dead_count(self, key: IngiKey) -> int:
        stats = self.pool.stats().get(key)
        return stats.dead if stats is not None else 0

    def _died(self, key: IngiKey, count: int) -> None:
        """``count`` containers of ``key`` were found dead at take; too many in a row pause the key."""
        self._dead[key] = self._dead.get(key, 0) + count
        if self._dead[key] >= DEAD_IN_A_ROW:
            self._dead.pop(key)
            self._maker.refused[key] = self._clock.seconds() + REFUSED_SECONDS
            self.log.warn(
                "container pool: the last {n} containers of {key} exited before their job; none made ahead for "
                "{seconds:g} s",
                n=DEAD_IN_A_ROW, key=key, seconds=REFUSED_SECONDS,
            )  # fmt: skip

    def job_started(self) -> None:
        """An INGInious job arrived (taking a container or not): the pool's creations yield to it."""
        self._maker.job_started()

    def job_ended(self) -> None:
        """That job was answered."""
        self._maker.job_ended()

    def record(self, job: BackendNewJob, image: IngiImage, hit: bool, seconds: float) -> None:
        """The job's grading container got its ``start`` ``seconds`` after the job arrived."""
        self.pool.record_ready(self.key_for(job, image), seconds, hit)

    def stats(self) -> Dict[Hashable, KeyStats]:
        return self.pool.stats()

    def image_changed(self, environment: str) -> None:
        """The environment's image is another one now: drop its containers made from the old one."""
        for key in list(self.pool.stats()):
            if isinstance(key, IngiKey) and key.environment == environment:
                self.pool.flush(key)

    def close(self) -> Deferred:
        """Remove what waits; say once what each key did (its figures are lost with the agent)."""
        for key, stats in self.pool.stats().items():
            self.log.info(
                "container pool {key}: {hits} hits, {misses} misses, {dead} found dead, {failures} failed creations",
                key=key, hits=stats.hits, misses=stats.misses, dead=stats.dead, failures=stats.failures,
            )  # fmt: skip
        return self.pool.close()


def ingi_pool_for(b: Any, settings: Dict[str, Any]) -> Optional[IngiPool]:
    """The pool of the Docker backend ``b`` for its INGInious images, with ``settings``
    (:func:`.docker_pool.pool_options`); None when they turn it off."""
    if not settings["max_per_key"] and not settings["per_env"]:
        return None

    def engine(f: Callable[..., Any], *args: Any) -> Deferred:
        return b._call(b._thd_guard, f, *args)

    def config(image: IngiImage, folder: IngiFolder, mem_mb: int, network: bool) -> Dict[str, Any]:
        return grader_config(b, image, folder, mem_mb, network, agent_labels(b))

    def make_root() -> IngiFolder:
        return make_ingi_root(work_dir(b), b._disk_mb)

    def fill(folder: IngiFolder, job: BackendNewJob) -> None:
        fill_ingi_job(folder, b._config.tasks_dir or "", job.course_id, job.task_id)

    def check(job: BackendNewJob) -> None:
        check_ingi_task(b._config.tasks_dir or "", job.course_id, job.task_id)

    maker = IngiMaker(
        b._reactor, engine, b._call, config, make_root, thd_attach, b._thd_remove,
        ready_runtime=lambda runtime: runtime is None or runtime in b._pids_policies, orphan=b._orphans.add,
    )  # fmt: skip
    return IngiPool(b._reactor, maker, settings, engine=engine, call=b._call, config=config, fill=fill, check=check)
