"""The Docker agent backend: one throw-away container per job.

Environments are local images (``--environment NAME=IMAGE``), each run with
the engine's default OCI runtime or the one named (``NAME=IMAGE,runtime=runsc``,
see :mod:`inginious_tx.agent.runtimes`).  A job's folder
(:func:`inginious_tx.agent.task.prepare_job`) is bind-mounted read-write at
``/job`` and the helper scripts read-only at ``/inginious/helpers``; the task
runs as a non-root user in ``/job/task`` with no network (unless the job asks
for it), no capabilities, a read-only root filesystem, a memory limit with no
extra swap and a pids limit.  CPU time is watched through the engine's
statistics and wall time by a reactor timer; both end the job as ``timeout``.
Every container carries the label ``org.inginious-tx.owner`` (this agent
process, for good): at start the agent removes the containers and job
folders that Docker agents of this host killed outright left
(:mod:`._leftovers`).

Every call to the Docker SDK blocks, so each one runs in this backend's own
thread pool (methods prefixed ``_thd_``); the reactor thread never waits on
the engine.  A job never blocks a thread for long either: the container is
waited for in short slices, between which the limits are checked, so kills,
timeouts and shutdown take effect promptly.

Options (``AgentConfig.options``):

``docker_url``
    engine address (``unix:///var/run/docker.sock``, ``tcp://...``); default:
    the environment (``DOCKER_HOST``...).  The engine must see the agent's
    files: job folders are bind-mounted.
``work_dir``
    where job folders are made (default: a fresh temporary folder).
``helpers_in_work_dir``
    True: the helper scripts (``getinput``, ``feedback-*``...) are copied
    into ``work_dir`` at the first job and bind-mounted from there, not
    from the package's folder.  For an agent in a container (contrib/compose):
    the engine resolves bind mounts on its own host, which sees ``work_dir``
    (mounted at the same path in the agent's container) but not the package
    inside the agent's image.
``user``
    ``UID:GID`` the task runs as (default ``4242:4242`` when the agent is
    root, which then hands the job folder to that user; else the agent's own).

``job_disk_mb``
    size in MB of the tmpfs mounted on each job folder when the agent is root
    (default 256; 0: none).  A job that fills it is answered ``overflow``; the
    tmpfs is unmounted with the job, so nothing it wrote stays on the agent's
    disk.  Without root the folder is a plain folder on the agent's disk, with
    no size bound (the agent logs it once).

``inginious_images``
    ``auto`` (default): without any ``--environment``, offer the engine's
    INGInious grading images (label ``org.inginious.grading.name``, the
    newest of each name); ``true``: offer them beside the ``--environment``
    ones (a configured name wins); ``false``: never.  An environment whose
    image is labelled ``org.inginious.grading.agent_version=3`` runs the
    INGInious way (:mod:`.inginious_job`, ``docs/inginious-images.rst``).
    ``inginious_runtime``: the OCI runtime of the images found so (default:
    the engine's).

``inginious_paths`` (True: the job's task, archive and common folders also
at ``/task``, ``/archive`` and ``/course/common``, and the task runs in
``/task`` with ``HOME=/task``, see :mod:`.compat`; each bind mount costs some
20-30 ms at start under gVisor).

``pids_limit`` (256), ``sandbox_pids`` (256: added to the pids limit for
runtimes that cannot take it, see :mod:`.runtimes`), ``poll_interval`` (0.5 s: how often CPU time is
checked), ``labels`` (extra container labels), ``init`` (True: tini as PID 1
reaps zombies in run_student's containers; the job's own container has the
wrapper of :mod:`._job_output` as PID 1, which cuts its output there),
``read_only_root`` (True), ``api_timeout`` (60 s per engine call).

``pool_max`` (default: the slots; 0: off), ``pool_max:NAME``, ``pool_total``, ``pool_concurrency``,
``pool_half_life``, ``pool_window``: containers prepared ahead of demand, see :mod:`.docker_pool`
(helper mode) and :mod:`.inginious_pool` (INGInious images).
``student_pool_max`` (default: off, or ``pool_max`` when given): run_student's containers
prepared ahead the same way (root only, runc only), see :mod:`.student_pool`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from threading import Lock
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, TypeVar

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from zope.interface import implementer

from .._reactor import CommonReactor
from ..interfaces import IAgentBackend
from ..messages import BackendJobId, BackendNewJob
from ._engine import thd_create
from ._job_output import make_output_dir, thd_read_output, wrap_command
from ._leftovers import LABEL_OWNER, is_stale, owner_token, sweep_temp, sweep_work_dir
from ._running import JobRun
from ._threads import BackendThreads
from .compat import TASK_MOUNT, inginious_env, inginious_mounts
from .container_pool import IContainerPool, IPooledBackend
from .debug import ISSHDebugBackend
from .docker_pool import Claimed, DockerHelperMaker, DockerPool, pool_options
from .feedback import OutputLimits, collect_result
from .inginious_image import LABEL_NAME, image_info, pick_images
from .inginious_job import IngiImage, IngiSession
from .inginious_pool import ingi_pool_for
from .job_disk import DEFAULT_DISK_MB, can_mount, disk_full
from .job_folder import JobFolder, TaskError, helpers_dir, make_job_root, prepare_job, remove_job_path
from .result import AgentConfig, JobResult
from .run_student import ENV_VAR as RUN_STUDENT_ENV
from .run_student import EXCHANGE, StudentService, make_exchange
from .run_student_docker import DockerStudentLauncher, sibling_config
from .runtimes import PidsPolicy, parse_environment_specs, thd_known_runtimes, thd_probe_pids
from .ssh_sandboxes import DockerSandbox
from .student_pool import DockerStudentMaker, StudentKey, StudentPool, placeholder_job, student_pool_options

__all__ = ["DockerBackend", "DockerEngineError", "JOB_MOUNT", "HELPERS_MOUNT", "LABEL_AGENT", "LABEL_JOB"]

#: Where the job folder and the helpers are seen inside the container.
JOB_MOUNT = "/job"
HELPERS_MOUNT = "/inginious/helpers"
#: Labels put on every container: this backend instance, and the job.
LABEL_AGENT = "org.inginious-tx.agent"
LABEL_JOB = "org.inginious-tx.job"

#: Beside each job folder: the agent's private copies of run_student's standard inputs.
STDIN_SUFFIX = ".stdin"
#: Docker refuses memory limits below 6 MB.
_MIN_MEM_MB = 8
#: Wall time allowed when a job gives neither a hard nor a CPU time limit.
_DEFAULT_HARD_LIMIT = 600
#: The user tasks run as when the agent is root.
_DEFAULT_USER = (4242, 4242)

_T = TypeVar("_T")


class DockerEngineError(Exception):
    """The engine cannot be reached (``unavailable``) or refused a request; ``str()`` says which."""

    def __init__(self, text: str, unavailable: bool = True) -> None:
        super().__init__(text)
        self.unavailable = unavailable


def docker_sdk() -> Any:
    """The Docker SDK, imported only when a backend needs it (an optional extra)."""
    try:
        import docker
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise DockerEngineError(
            f"the docker Python package is missing ({e}): pip install 'inginious-tx[docker]'"
        ) from None
    return docker


def _is_read_timeout(exc: BaseException) -> bool:
    """True if ``exc`` is the SDK's way of saying a (waiting) request timed out."""
    import requests
    import urllib3

    if isinstance(exc, requests.exceptions.ReadTimeout):
        return True
    # over a Unix socket a read timeout surfaces as a ConnectionError
    return isinstance(exc, requests.exceptions.ConnectionError) and any(
        isinstance(a, urllib3.exceptions.ReadTimeoutError) for a in exc.args
    )


def _as_engine_error(exc: BaseException) -> Optional[DockerEngineError]:
    """Translate an SDK or HTTP exception into a :class:`DockerEngineError`; None if it is neither."""
    docker = docker_sdk()  # first: its error names the extra to install
    import requests

    if isinstance(exc, DockerEngineError):
        return exc
    if isinstance(exc, docker.errors.APIError):
        return DockerEngineError(f"docker engine error: {exc.explanation or exc}", unavailable=False)
    if isinstance(exc, (requests.exceptions.RequestException, docker.errors.DockerException, ConnectionError)):
        return DockerEngineError(f"docker engine unavailable: {exc}")
    return None


def _parse_environments(values: List[str]) -> Dict[str, str]:
    """``["NAME=IMAGE", "NAME"]`` -> ``{NAME: IMAGE}`` (a bare NAME is also the image)."""
    out: Dict[str, str] = {}
    for value in values:
        name, sep, image = value.partition("=")
        name, image = name.strip(), image.strip()
        if not name or (sep and not image):
            raise ValueError(f"invalid --environment {value!r}: expected NAME=IMAGE")
        out[name] = image if sep else name
    return out


def _created(attrs: Dict[str, Any]) -> int:
    """An image's creation time as a UNIX timestamp (the engine gives RFC 3339 with nanoseconds)."""
    text = str(attrs.get("Created", ""))
    try:
        return int(datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp())
    except ValueError:
        return 0


def _iso(created: Any) -> str:
    """An image listing's creation time (UNIX seconds) as RFC 3339 in UTC (ordered as text)."""
    try:
        return datetime.fromtimestamp(int(created or 0), timezone.utc).isoformat()
    except (TypeError, ValueError, OverflowError):
        return ""


def _parse_user(value: Any) -> Tuple[str, Optional[Tuple[int, int]]]:
    """The ``user`` option -> (docker user string, numeric (uid, gid) if it is one)."""
    if value is None:
        uid, gid = _DEFAULT_USER if os.geteuid() == 0 else (os.getuid(), os.getgid())
        return f"{uid}:{gid}", (uid, gid)
    text = str(value)
    uid_s, _, gid_s = text.partition(":")
    if uid_s.isdigit() and (not gid_s or gid_s.isdigit()):
        uid = int(uid_s)
        return text, (uid, int(gid_s) if gid_s else uid)
    return text, None


def _remove_paths(*paths: str) -> None:
    """Remove folders (blocking), in one thread call."""
    for path in paths:
        remove_job_path(path)


def _flag(value: Any) -> bool:
    """A boolean option, given as a bool or as text (``--option init=false``)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean: {value!r} (use true or false)")
    return bool(value)


@dataclass
class _Run(JobRun):
    """The backend's record of one job while it runs (``up`` fires with the container id)."""

    container_id: Optional[str] = None
    #: why the backend stopped the job: (result type, text); None if it was not stopped
    stopped: Optional[Tuple[str, str]] = None
    #: (user, working folder) of SSH debug sessions; None: the backend's own
    debug_place: Optional[Tuple[str, str]] = None


@implementer(IAgentBackend, ISSHDebugBackend, IPooledBackend)
class DockerBackend:
    """Runs each job in a fresh container of the job's environment image."""

    name = "docker"
    #: imported when first used (the docker extra): ``twistd inginious-agent`` refuses to start without them
    requires = ("docker", "requests")
    extra = "docker"
    log = Logger()

    def __init__(self, reactor: CommonReactor, config: AgentConfig) -> None:
        self._reactor = reactor
        self._config = config
        opts = dict(config.options or {})
        specs = parse_environment_specs(list(config.environments))
        self._images = {name: spec.image for name, spec in specs.items()}
        #: environment -> OCI runtime (None: the engine's default); see .runtimes
        self._runtimes = {name: spec.runtime for name, spec in specs.items()}
        self._pids_policies: Dict[str, PidsPolicy] = {}
        #: offer the engine's INGInious grading images (label org.inginious.grading.name); by
        #: default (auto) when no --environment is given, so a configured agent offers what it says
        discover = opts.get("inginious_images", "auto")
        self._discover = not self._images if str(discover).strip().lower() == "auto" else _flag(discover)
        if not self._images and not self._discover:
            raise ValueError("the docker backend needs at least one --environment NAME=IMAGE")
        #: the OCI runtime of the images found by label (None: the engine's default)
        self._found_runtime: Optional[str] = str(opts.get("inginious_runtime") or "").strip() or None
        #: environments served the INGInious way (their image's own program, see .inginious_job)
        self._ingi: Dict[str, IngiImage] = {}
        self._url: Optional[str] = opts.get("docker_url") or None
        self._pids_limit = int(opts.get("pids_limit", 256))
        self._sandbox_pids = int(opts.get("sandbox_pids", 256))
        self._inginious_paths = _flag(opts.get("inginious_paths", True))
        self._poll = float(opts.get("poll_interval", 0.5))
        self._init = _flag(opts.get("init", True))
        self._read_only_root = _flag(opts.get("read_only_root", True))
        self._extra_labels = {str(k): str(v) for k, v in dict(opts.get("labels") or {}).items()}
        self._user, self._chown_to = _parse_user(opts.get("user"))
        self._limits = config.output_limits or OutputLimits()
        self._api_timeout = float(opts.get("api_timeout", 60))
        self._disk_mb = int(opts.get("job_disk_mb", DEFAULT_DISK_MB))
        if self._disk_mb < 0:
            raise ValueError("job_disk_mb is a size in MB (0: no tmpfs)")
        if self._disk_mb and not can_mount():
            self.log.warn("docker backend: not root, so job folders have no size bound (job_disk_mb ignored)")
            self._disk_mb = 0
        #: made on first use when not given (and then removed by close())
        self._work_dir: Optional[str] = opts.get("work_dir") or None
        self._own_work_dir = self._work_dir is None
        self._helpers_in_work_dir = str(opts.get("helpers_in_work_dir", "")).lower() in ("1", "true", "yes")
        if self._helpers_in_work_dir and self._work_dir is None:
            raise ValueError("helpers_in_work_dir needs work_dir (a folder the engine sees at the same path)")
        #: where the helper scripts are bind-mounted from (set at the first job)
        self._helpers: Optional[str] = None
        #: unique per backend instance: every container carries it as a label
        self.instance_id: str = uuid.uuid4().hex
        #: this process, for good: a later agent removes our containers if we are killed
        self._owner = owner_token()
        self._runs: Dict[Tuple[bytes, str], _Run] = {}
        #: containers whose removal failed (engine away): retried later
        self._orphans: Set[str] = set()
        self._engine_ok: Optional[bool] = None
        self._client: Any = None
        self._client_lock = Lock()
        # enough threads for every slot's waiting (and, on INGInious images, a student container's)
        # plus the odd extra call
        self._threads = BackendThreads(IReactorFromThreads(reactor), "docker-backend", max(2, 3 * config.slots + 2))
        self._closed = False
        #: what agents killed on this host left (containers, job folders) is removed once, at start
        self._swept = False
        #: containers made ahead of demand (see .docker_pool); None: off (option pool_max=0)
        pooling = pool_options(opts, config.slots)
        self.pool = self._make_pool(pooling)
        #: grading containers of INGInious images made ahead, on the same options (see .inginious_pool)
        self.ingi_pool = ingi_pool_for(self, pooling)
        #: run_student's containers made ahead (see .student_pool); None: off
        self.student_pool = self._make_student_pool(student_pool_options(opts, config.slots))
        self._image_ids: Dict[str, str] = {}
        #: removals of pooled jobs' containers and folders under way
        self._cleanups: Set[Deferred] = set()

    def _make_pool(self, settings: Dict[str, Any]) -> Optional[DockerPool]:
        if not settings["max_per_key"] and not settings["per_env"]:
            return None

        def engine(f: Callable[..., Any], *args: Any) -> Deferred:
            return self._call(self._thd_guard, f, *args)

        maker = DockerHelperMaker(
            engine, self._call, self._container_config, self._thd_job_root, self._thd_remove, self._disk_mb, LABEL_JOB,
            ready_runtime=lambda runtime: runtime is None or runtime in self._pids_policies, orphan=self._orphans.add,
        )  # fmt: skip
        return DockerPool(
            self._reactor, maker, settings, engine=engine, call=self._call, config=self._container_config,
            prepare=self._thd_prepare, images=self._images, runtimes=self._runtimes, min_mem_mb=_MIN_MEM_MB,
        )  # fmt: skip

    def container_pools(self) -> List[IContainerPool]:
        """The containers prepared ahead (for the agent's metrics)."""
        return [p.pool for p in (self.pool, self.ingi_pool, self.student_pool) if p is not None]

    def _make_student_pool(self, settings: Dict[str, Any]) -> Optional[StudentPool]:
        if not settings["max_per_key"]:
            return None
        if not can_mount():
            self.log.warn("docker backend: not root, so run_student's containers are not made ahead")
            return None

        def engine(f: Callable[..., Any], *args: Any) -> Deferred:
            return self._call(self._thd_guard, f, *args)

        maker = DockerStudentMaker(
            engine, self._call, self._sibling_config, self._thd_work_dir, self._thd_remove, orphan=self._orphans.add,
            ready_runtime=lambda runtime: runtime is None or runtime in self._pids_policies,
        )  # fmt: skip
        return StudentPool(self._reactor, maker, settings, engine=engine, call=self._call)

    def _sibling_config(self, key: StudentKey, area: str, mem_mb: int) -> Dict[str, Any]:
        """A run_student container made ahead: a call's, from a job standing for the ones to come."""
        grader = self._container_config(key.image, JobFolder(area, placeholder_job(key.environment, mem_mb)))
        return sibling_config(grader, f"{JOB_MOUNT}/task/student", area, mem_mb, drop_labels=(LABEL_JOB,))

    # -- threads ---------------------------------------------------------

    def _call(self, f: Callable[..., _T], *args: Any, **kwargs: Any) -> Deferred[_T]:
        """Run blocking ``f`` in this backend's thread pool (started on first use)."""
        return self._threads.call(f, *args, **kwargs)

    def _thd_client(self) -> Any:
        """The SDK client, made on first use and again after the engine went away."""
        with self._client_lock:
            if self._client is None:
                docker = docker_sdk()
                kwargs = {"timeout": self._api_timeout, "max_pool_size": max(10, 2 * self._config.slots + 4)}
                try:
                    if self._url:
                        self._client = docker.DockerClient(base_url=self._url, version="auto", **kwargs)
                    else:
                        self._client = docker.from_env(**kwargs)
                except Exception as e:
                    raise (_as_engine_error(e) or e) from None
            return self._client

    def _thd_guard(self, f: Callable[..., _T], *args: Any) -> _T:
        """Call ``f`` with the client; translate SDK errors, drop the client if the engine is gone."""
        try:
            return f(self._thd_client(), *args)
        except Exception as e:
            err = _as_engine_error(e)
            if err is None:
                raise
            if err.unavailable:
                with self._client_lock:
                    client, self._client = self._client, None
                if client is not None:
                    try:
                        client.close()
                    except Exception:
                        pass
            raise err from None

    # -- environments ------------------------------------------------------

    def environments(self) -> Deferred[Dict[str, Dict[str, Any]]]:
        """Read the images now (no caching), so a restarted engine is seen at once.

        Fails with :class:`DockerEngineError` while the engine is unavailable:
        the agent then retries its hello until the engine is back, instead of
        announcing an agent that can run nothing.
        """
        return ensureDeferred(self._environments())

    async def _environments(self) -> Dict[str, Dict[str, Any]]:
        if not self._images and not self._discover:
            self.log.warn("docker backend: no --environment NAME=IMAGE given; no environment offered")
            return {}
        try:
            found, missing = await self._call(self._thd_guard, self._thd_images)
            found, self._ingi = await self._call(self._thd_guard, self._thd_inginious, found)
        except DockerEngineError as e:
            if self._engine_ok is not False:
                self.log.error("docker backend: {error}; no environment offered until it is back", error=str(e))
            self._engine_ok = False
            raise
        if self._engine_ok is False:
            self.log.info("docker backend: the docker engine is back")
        self._engine_ok = True
        for name, info in found.items():
            if self._image_ids.setdefault(name, info["id"]) != info["id"]:
                self._image_ids[name] = info["id"]
                for pool in (self.pool, self.ingi_pool, self.student_pool):
                    if pool is not None:
                        pool.image_changed(name)
        for name, image in missing:
            self.log.error(
                "docker backend: image {image!r} of environment {name!r} is not in the local docker engine "
                "(build or load it; nothing is pulled); environment not offered",
                image=image,
                name=name,
            )
        if self._orphans:
            self._remove_orphans()
        if not self._swept:
            self._swept = True
            try:
                for what in await self._call(self._thd_guard, self._thd_sweep):
                    self.log.info("docker backend: removed {what}, left by an agent that was killed", what=what)
            except Exception:
                self.log.failure("docker backend: cannot clean what a previous agent left")
        wanted = {r for n, r in self._runtimes.items() if r is not None and n in found}
        if wanted:
            known = set(await self._call(self._thd_guard, thd_known_runtimes))
            for name in [n for n in found if self._runtimes.get(n) not in known | {None}]:
                self.log.error(
                    "docker backend: runtime {runtime!r} of environment {name!r} is not registered with the "
                    "docker engine (known: {known}); environment not offered",
                    runtime=self._runtimes[name],
                    name=name,
                    known=", ".join(sorted(known)),
                )
                del found[name]
        return found

    def _thd_sweep(self, client: Any) -> List[str]:
        """Remove the containers and job folders of Docker agents of this host that were killed
        (see :mod:`._leftovers`); what was removed."""
        docker = docker_sdk()
        removed = []
        for info in client.api.containers(all=True, filters={"label": LABEL_OWNER}):
            if is_stale(str((info.get("Labels") or {}).get(LABEL_OWNER, ""))):
                try:
                    self._thd_remove(client, info["Id"])
                except docker.errors.APIError as e:  # its removal already under way...: the folders still go
                    IReactorFromThreads(self._reactor).callFromThread(
                        self.log.warn, "docker backend: cannot remove container {cid}, left by an agent that was "
                        "killed: {e}", cid=info["Id"][:12], e=e.explanation or str(e),
                    )  # fmt: skip
                    continue
                removed.append(f"container {info['Id'][:12]}")
        removed += sweep_temp("inginious-tx-docker-", keep=self._work_dir)
        if self._work_dir is not None:
            removed += [os.path.join(self._work_dir, n) for n in sweep_work_dir(self._work_dir)]
        return removed

    def _thd_images(self, client: Any) -> Tuple[Dict[str, Dict[str, Any]], List[Tuple[str, str]]]:
        docker = docker_sdk()
        found: Dict[str, Dict[str, Any]] = {}
        missing: List[Tuple[str, str]] = []
        for name, image in self._images.items():
            try:
                img = client.images.get(image)
            except docker.errors.ImageNotFound:
                missing.append((name, image))
                continue
            found[name] = {"id": img.id, "created": _created(img.attrs), "ports": []}
        return found, missing

    def _thd_inginious(
        self, client: Any, found: Dict[str, Dict[str, Any]]
    ) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, IngiImage]]:
        """Which environments are INGInious images (their labels say so), and the labelled images
        of the engine offered beside the configured environments (see :mod:`.inginious_image`)."""
        ingi: Dict[str, IngiImage] = {}
        for name, env in found.items():
            attrs = client.api.inspect_image(env["id"])
            info = image_info(env["id"], (attrs.get("Config") or {}).get("Labels"), str(attrs.get("Created", "")))
            if info.version is not None and info.refused is None:
                ingi[name] = IngiImage(env["id"], self._runtimes.get(name))
        if not self._discover:
            return found, ingi
        infos = [
            image_info(str(img["Id"]), img.get("Labels"), _iso(img.get("Created")))
            for img in client.api.images(filters={"label": LABEL_NAME})
        ]
        offered, refused = pick_images(infos)
        for info in refused:
            self.log.info(
                "docker backend: INGInious image {name!r} ({image}) not offered: {why}",
                name=info.name, image=info.image_id[:19], why=info.refused,
            )  # fmt: skip
        found = dict(found)
        for name, info in offered.items():
            if name in found:
                continue  # an --environment of the same name wins
            found[name] = {"id": info.image_id, "created": _created({"Created": info.created}), "ports": []}
            ingi[name] = IngiImage(info.image_id, self._found_runtime)
        return found, ingi

    # -- running jobs --------------------------------------------------------

    def run(self, job: BackendNewJob) -> Deferred[JobResult]:
        """Run ``job``; the Deferred always fires with a JobResult (crash on our own failures)."""
        key = tuple(job.job_id)
        if key in self._runs:
            return ensureDeferred(self._crash(f"job {job.job_id!r} is already running on this agent"))
        run = _Run(job)
        self._runs[key] = run  # type: ignore[index]

        def finished(result: JobResult) -> JobResult:
            self._runs.pop(key, None)  # type: ignore[arg-type]
            run.cancel_calls()
            run.never_up()
            run.done.callback(None)
            return result

        return ensureDeferred(self._run(run)).addBoth(finished)

    async def _crash(self, text: str) -> JobResult:
        self.log.error("docker backend: {text}", text=text)
        return JobResult.crash(text)

    async def _run(self, run: _Run) -> JobResult:
        job = run.job
        if self._closed:
            return await self._crash("the agent is shutting down")
        if not self._config.tasks_dir:
            return await self._crash("this docker agent has no tasks folder (--tasks)")
        ingi = self._ingi.get(job.environment)
        if ingi is not None:  # an INGInious image: its own program runs the job
            run.debug_place = ("4242:4242", "/task")
            return await IngiSession(self, run, ingi, self._ingi).run_job()
        image = self._images.get(job.environment)
        if image is None:
            return await self._crash(f"environment {job.environment!r} is not offered by this docker agent")
        folder: Optional[JobFolder] = None
        arrived = self._reactor.seconds()
        claimed: Optional[Claimed] = None
        try:
            # -- take a container made ahead (.docker_pool), or create one ------------------
            try:
                claimed = await self.pool.acquire(job) if self.pool is not None else None
                if claimed is not None:
                    folder, run.container_id = claimed.folder, claimed.container_id
                else:
                    folder = await self._call(self._thd_prepare, job)
            except TaskError as e:
                return await self._crash(str(e))
            if run.stopped:
                return JobResult(*run.stopped)
            if claimed is None:
                await self._probe_runtime(image, folder)
                run.container_id = await self._call(self._thd_guard, self._thd_create, image, folder)
            if run.stopped:  # killed while the container was being made
                return JobResult(*run.stopped)
            # watching before the grader starts: its first request cannot be missed
            run.students = self._student_service(run, folder, image)
            if claimed is not None:
                config = self._container_config(image, folder)  # the job's command, as without the pool
                command, cwd = config["command"], config["working_dir"]
                await self._call(self._thd_guard, self.pool.thd_go, claimed, command, cwd)  # type: ignore[union-attr]
            else:
                await self._call(self._thd_guard, self._thd_start, run.container_id)
            if self.pool is not None:
                self.pool.record(job, claimed is not None, self._reactor.seconds() - arrived)
            # -- end of take-or-create ------------------------------------------------------
            self._arm_timers(run)
            run.up.callback(run.container_id)
            exit_code = await self._supervise(run, folder)
            return await self._call(self._thd_guard, self._thd_result, run, folder, exit_code)
        except DockerEngineError as e:
            return await self._crash(str(e))
        except Exception as e:
            self.log.failure("docker backend: unexpected failure running job {job_id!r}", job_id=job.job_id)
            return JobResult.crash(f"the docker agent failed to run the job: {e!r}")
        finally:
            if claimed is not None and not self._closed:
                # a pooled job's answer does not wait for its removal (close() does)
                # in the pool's removal queue (a few at a time: removals never take every thread)
                cleanup = self.pool.remove_later(lambda: ensureDeferred(self._cleanup(run, folder)))  # type: ignore[union-attr]
                self._cleanups.add(cleanup)
                cleanup.addBoth(lambda _: self._cleanups.discard(cleanup))
            else:
                await self._cleanup(run, folder)

    async def _probe_runtime(self, image: str, folder: JobFolder) -> None:
        """Once per runtime: can it take the pids limit? (see :mod:`.runtimes`)"""
        runtime = self._runtimes.get(folder.job.environment)
        if runtime is None or runtime in self._pids_policies:
            return
        config = self._container_config(image, folder)
        config.update(command=["/bin/sh", "-c", "(:) & (:) & wait"], labels={LABEL_AGENT: self.instance_id})
        policy = await self._call(self._thd_guard, thd_probe_pids, config)
        if runtime in self._pids_policies:
            return  # another job probed it meanwhile
        self._pids_policies[runtime] = policy
        if policy.cgroup:
            self.log.info("docker backend: runtime {runtime} takes the pids limit", runtime=runtime)
        else:
            self.log.error(
                "docker backend: runtime {runtime} cannot run a container with a pids limit of {limit} ({why}); "
                "its jobs get RLIMIT_NPROC={limit} inside the sandbox, and a cgroup pids limit of {outer} for the "
                "sandbox's threads and the job's processes together",
                runtime=runtime,
                limit=self._pids_limit,
                outer=self._pids_limit + self._sandbox_pids,
                why=policy.reason,
            )

    def _thd_helpers(self) -> str:
        """The folder the helper scripts are bind-mounted from (see ``helpers_in_work_dir``)."""
        if not self._helpers_in_work_dir or self._work_dir is None:
            return helpers_dir()
        target = os.path.join(self._work_dir, ".inginious-tx-helpers")
        shutil.copytree(helpers_dir(), target, dirs_exist_ok=True)
        os.chmod(target, 0o755)
        for name in os.listdir(target):
            os.chmod(os.path.join(target, name), 0o755)
        return target

    def _thd_work_dir(self) -> str:
        """The work folder (made on first use, with the helpers' copy when asked)."""
        with self._client_lock:
            if self._work_dir is None:
                self._work_dir = tempfile.mkdtemp(prefix="inginious-tx-docker-")
            if self._helpers is None:
                self._helpers = self._thd_helpers()
        if os.geteuid() == 0:  # containers never walk it: only the agent and the engine (root) need to
            os.makedirs(self._work_dir, mode=0o700, exist_ok=True)
            os.chmod(self._work_dir, 0o700)
        return self._work_dir

    def _thd_job_root(self) -> str:
        """An empty job folder, made as :meth:`_thd_prepare` makes one (for a container made ahead)."""
        return make_job_root(self._thd_work_dir(), disk_mb=self._disk_mb, marked=True)

    def _thd_prepare(self, job: BackendNewJob, root: Optional[str] = None) -> JobFolder:
        """The job's folder: a new one, or ``root`` made earlier by :meth:`_thd_job_root`, filled."""
        work_dir = self._thd_work_dir()
        owner = self._chown_to if os.geteuid() == 0 else None
        folder = prepare_job(
            self._config.tasks_dir or "", job, work_dir, disk_mb=self._disk_mb, owner=owner, marked=True, root=root
        )
        try:
            exchange = make_exchange(folder)
            if owner is not None:
                os.chown(exchange, *owner)
            make_output_dir(folder, owner)
        except BaseException:
            remove_job_path(folder.root)
            remove_job_path(folder.root + STDIN_SUFFIX)
            raise
        return folder

    def _container_config(self, image: str, folder: JobFolder) -> Dict[str, Any]:
        """Everything the container is created with: the isolation lives here."""
        docker = docker_sdk()
        job = folder.job
        mem = f"{max(int(job.mem_limit), _MIN_MEM_MB)}m"
        log_bytes = self._limits.max_stdout + self._limits.max_stderr
        labels = dict(self._extra_labels)
        labels[LABEL_AGENT] = self.instance_id
        labels[LABEL_OWNER] = self._owner
        labels[LABEL_JOB] = f"{job.job_id[0].hex()}/{job.job_id[1]}"
        runtime = self._runtimes.get(job.environment)
        pids = self._pids_policies.get(runtime or "", PidsPolicy(True)).container_options(
            self._pids_limit, self._sandbox_pids
        )
        return dict(
            image=image,
            runtime=runtime,
            command=folder.command,
            working_dir=TASK_MOUNT if self._inginious_paths else f"{JOB_MOUNT}/task",
            environment={
                **folder.env(mount_root=JOB_MOUNT, helpers=HELPERS_MOUNT),
                **(inginious_env(folder) if self._inginious_paths else {}),
                RUN_STUDENT_ENV: f"{JOB_MOUNT}/{EXCHANGE}",
            },
            user=self._user,
            mounts=[
                docker.types.Mount(JOB_MOUNT, folder.root, type="bind", read_only=False),
                docker.types.Mount(HELPERS_MOUNT, self._helpers or helpers_dir(), type="bind", read_only=True),
                *(inginious_mounts(docker, folder) if self._inginious_paths else []),
            ],
            network_mode="bridge" if job.enable_network else "none",
            mem_limit=mem,
            memswap_limit=mem,  # the same figure: no swap on top of the memory limit
            **pids,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=self._read_only_root,
            init=self._init,
            labels=labels,
            log_config=docker.types.LogConfig(
                type="json-file", config={"max-size": str(max(log_bytes, 1 << 20)), "max-file": "1"}
            ),
            detach=True,
        )

    def _thd_create(self, client: Any, image: str, folder: JobFolder) -> str:
        config = self._container_config(image, folder)
        wrap_command(config, docker_sdk(), JOB_MOUNT, self._limits)  # output cut in the container, no log
        return thd_create(client, config)

    def _thd_start(self, client: Any, container_id: str) -> None:
        client.api.start(container_id)

    def _arm_timers(self, run: _Run) -> None:
        """The wall-clock limit: hard_time_limit, or three times the CPU limit."""
        job = run.job
        hard = job.hard_time_limit if job.hard_time_limit and job.hard_time_limit > 0 else 3 * max(job.time_limit, 0)
        if hard <= 0:
            hard = _DEFAULT_HARD_LIMIT
        text = f"The job ran for more than {hard} seconds (wall-clock time limit)."
        run.calls.append(self._reactor.callLater(hard, self._stop, run, ("timeout", text)))

    async def _supervise(self, run: _Run, folder: JobFolder) -> int:
        """Wait for the container in short slices; between them, check the CPU time and disk used."""
        cid = run.container_id
        assert cid is not None
        cpu_limit = max(int(run.job.time_limit), 0)
        while True:
            status = await self._call(self._thd_guard, self._thd_wait, cid, self._poll)
            if status is not None:
                return status
            if run.stopped is not None:
                # stopped but still running: a kill that raced with the start was lost; kill again
                await self._call(self._thd_guard, self._thd_kill, cid)
                continue
            if folder.disk_mb and await self._call(disk_full, folder.root, folder.disk_mb):
                self._stop(run, ("overflow", self._disk_text(folder)))
            elif cpu_limit:
                used = await self._call(self._thd_guard, self._thd_cpu_seconds, cid)
                if used is not None and used > cpu_limit:
                    self._stop(run, ("timeout", f"The job used more than {cpu_limit} seconds of CPU time."))

    def _thd_wait(self, client: Any, container_id: str, timeout: float) -> Optional[int]:
        """The exit status, or None if the container still runs after ``timeout`` seconds."""
        try:
            return int(client.api.wait(container_id, timeout=timeout)["StatusCode"])
        except Exception as e:
            if _is_read_timeout(e):
                return None
            raise

    def _thd_cpu_seconds(self, client: Any, container_id: str) -> Optional[float]:
        docker = docker_sdk()
        try:
            stats = client.api.stats(container_id, stream=False, one_shot=True)
        except docker.errors.InvalidVersion:  # engines before API 1.41: a slower, two-sample read
            stats = client.api.stats(container_id, stream=False)
        try:
            return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9
        except (KeyError, TypeError, ValueError):
            return None

    def _thd_result(self, client: Any, run: _Run, folder: JobFolder, exit_code: int) -> JobResult:
        cid = run.container_id
        state = client.api.inspect_container(cid).get("State", {})
        # one byte over the cap, so that collect_result marks the cut
        stdout, stderr = thd_read_output(folder, self._limits)
        outcome = run.stopped
        if outcome is None and state.get("OOMKilled"):
            outcome = ("overflow", f"The job used more than its memory limit ({run.job.mem_limit} MB).")
        if outcome is None and folder.disk_mb and disk_full(folder.root, folder.disk_mb):
            outcome = ("overflow", self._disk_text(folder))
        return collect_result(folder, exit_code, stdout, stderr, self._limits, outcome=outcome)

    @staticmethod
    def _disk_text(folder: JobFolder) -> str:
        return f"The job filled its disk space of {folder.disk_mb} MB."

    def _stop(self, run: _Run, outcome: Tuple[str, str]) -> None:
        """End a job for ``outcome`` (timeout, killed...); the first reason wins."""
        if run.stopped is not None or run.done.called:
            return
        run.stopped = outcome
        if run.container_id is not None:
            cid = run.container_id
            self._call(self._thd_guard, self._thd_kill, cid).addErrback(
                lambda f: self.log.warn(
                    "docker backend: cannot kill {cid}: {error}", cid=cid, error=f.getErrorMessage()
                )
            )

    def _thd_kill(self, client: Any, container_id: str) -> None:
        docker = docker_sdk()
        try:
            client.api.kill(container_id)
        except docker.errors.APIError as e:
            if e.status_code not in (404, 409):  # already gone, or not running any more
                raise

    async def _cleanup(self, run: _Run, folder: Optional[JobFolder]) -> None:
        """Remove the container and the job folder, whatever happened; never raises."""
        if run.students is not None:
            try:
                await run.students.stop()
            except Exception:
                self.log.failure("docker backend: cannot stop the run_student service")
        if run.container_id is not None:
            try:
                await self._call(self._thd_guard, self._thd_remove, run.container_id)
            except Exception as e:
                self._orphans.add(run.container_id)
                self.log.warn(
                    "docker backend: cannot remove container {cid} now ({error}); will retry",
                    cid=run.container_id,
                    error=str(e),
                )
        if folder is not None:
            try:
                await self._call(_remove_paths, folder.root, folder.root + STDIN_SUFFIX)  # the owner mark last
            except Exception:
                self.log.failure("docker backend: cannot remove job folder {root}", root=folder.root)

    def _thd_remove(self, client: Any, container_id: str) -> None:
        docker = docker_sdk()
        try:
            client.api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass

    def _remove_orphans(self) -> Deferred[None]:
        """Retry removing the containers that could not be removed when their job ended."""
        d = self._call(self._thd_remove_all, sorted(self._orphans)).addCallback(self._orphans.difference_update)
        d.addErrback(lambda f: self.log.warn("docker backend: orphan removal failed: {e}", e=f.getErrorMessage()))
        return d

    def _thd_remove_all(self, container_ids: List[str]) -> List[str]:
        """Remove what can be removed; returns the ids that are gone."""
        gone = []
        for cid in container_ids:
            try:
                self._thd_guard(self._thd_remove, cid)
            except DockerEngineError:
                break
            gone.append(cid)
        return gone

    def _student_service(self, run: _Run, folder: JobFolder, image: str) -> StudentService:
        """Serve the job's run_student calls in sibling containers (see :mod:`.run_student_docker`)."""
        launcher = DockerStudentLauncher(self, run, folder, image, JOB_MOUNT)
        service = StudentService(
            self._reactor, os.path.join(folder.root, EXCHANGE), folder.root + STDIN_SUFFIX, run.job, launcher,
            self._call, poll_interval=max(self._poll * 2, 0.5),
        )  # fmt: skip
        service.start()
        return service

    def debug_sandbox(self, job_id: BackendJobId) -> Deferred:
        """The job's container for SSH debug sessions, once it runs (None if the job ended first)."""
        run = self._runs.get(tuple(job_id))  # type: ignore[arg-type]
        if run is None:
            return succeed(None)
        d: Deferred = Deferred()

        def up(cid: Optional[str]) -> Optional[str]:
            workdir = TASK_MOUNT if self._inginious_paths else f"{JOB_MOUNT}/task"  # where the grader runs
            user, workdir = run.debug_place or (self._user, workdir)
            d.callback(None if cid is None else DockerSandbox(cid, user, workdir, self._url))
            return cid

        run.up.addCallback(up)
        return d

    def kill(self, job_id: BackendJobId) -> None:
        """Kill the job's container; its run() then fires with a ``killed`` result."""
        run = self._runs.get(tuple(job_id))  # type: ignore[arg-type]
        if run is None:
            self.log.info("docker backend: kill for unknown job {job_id!r} ignored", job_id=job_id)
            return
        self._stop(run, ("killed", "The job was killed."))

    # -- shutdown ------------------------------------------------------------

    def close(self) -> Deferred[None]:
        """Kill running jobs, wait for their cleanup, then stop the threads."""
        return ensureDeferred(self._close())

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        runs = list(self._runs.values())
        for run in runs:
            self._stop(run, ("killed", "The agent was shut down."))
        for pool in (self.pool, self.ingi_pool):
            if pool is not None:
                await pool.close()
        if runs:
            await DeferredList([r.done for r in runs])
        if self._cleanups:
            await DeferredList(list(self._cleanups))
        if self.student_pool is not None:  # after the jobs: their calls no longer take siblings
            await self.student_pool.close()
        if self._orphans:
            await self._remove_orphans()
        if self._own_work_dir and self._work_dir is not None:
            try:
                await self._call(remove_job_path, self._work_dir)
            except Exception:
                self.log.failure("docker backend: cannot remove {path}", path=self._work_dir)
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await self._call(client.close)
            except Exception:
                pass
        self._threads.stop()
