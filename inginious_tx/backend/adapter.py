"""What the backend core asks of a dialect: :class:`DialectAdapter`, and the pieces both dialects share.

The core (:mod:`.lifecycle`) works on one model: clients, agents,
environments ``(type, name)`` and jobs.  Each registered peer keeps the
adapter of its dialect, and the core builds every message it sends through
it (``client.dialect.job_done(job, outcome)``), so the core never names a
message class of either dialect.  The incoming half of each adapter (its
handler objects) turns a decoded message into one call of the core.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import msgpack

from .sizes import packed_size

__all__ = [
    "relay",
    "cached_rows",
    "DialectAdapter",
    "Encoded",
    "Environment",
    "DOCKER",
    "label",
    "state_of",
    "queue_bytes",
]

#: An environment: ``(type, name)``.  A 0.6 environment NAME is ``("docker", NAME)``.
Environment = Tuple[str, str]
#: The environment type of every 0.6 environment.
DOCKER = "docker"

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack  # reactor thread only
_TRUE = 0xC3


def label(environment: Environment) -> str:
    """How an environment is named to people (logs, status pages, metrics):
    its name for the ``docker`` type (as 0.6 calls it), ``type/name`` otherwise."""
    kind, name = environment
    return name if kind == DOCKER else f"{kind}/{name}"


def state_of(inputdata: Any) -> str:
    """The ``@state`` a 0.9 frontend stores in a job's inputdata, given back when the backend answers it."""
    state = inputdata.get("@state", "") if type(inputdata) is dict else ""
    return state if type(state) is str else ""


class Encoded:
    """A message already encoded (a queue snapshot assembled from cached bytes).

    Transports only call ``dump()``; ``msgtype`` and ``dialect`` are there
    for their logs.  Decoding :meth:`dump` gives the message it stands for.
    """

    __slots__ = ("msgtype", "dialect", "_data")

    def __init__(self, msgtype: str, dialect: str, data: bytes) -> None:
        self.msgtype = msgtype
        self.dialect = dialect
        self._data = data

    def dump(self) -> bytes:
        return self._data

    def __repr__(self) -> str:
        return f"<encoded {self.dialect} {self.msgtype}, {len(self._data)} bytes>"


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def queue_bytes(
    running: List[Any],
    waiting: bytes,
    n_waiting: int,
    own_offsets: Sequence[int],
    type_key: str,
    type_value: str,
) -> bytes:
    """The encoding of ``BackendGetQueue(running, waiting)`` in either dialect.

    ``waiting`` is the encoded rows (each saying "not yours"); the bytes at
    ``own_offsets`` in it are set to True (the asking client's jobs).  Both
    dialects encode the two fields in this order, then the type key.
    """
    section: Any = waiting
    if own_offsets:
        section = bytearray(waiting)
        for offset in own_offsets:
            section[offset] = _TRUE
    return b"".join(
        (
            b"\x83",
            _packb("jobs_running"),
            _packb(running),
            _packb("jobs_waiting"),
            _array_header(n_waiting),
            section,
            _packb(type_key),
            _packb(type_value),
        )
    )


def waiting_row(job_id: str, course_task: str, launcher: str, limit: int) -> Tuple[bytes, int]:
    """One encoded waiting row ``(job_id, False, course/task, launcher, limit)``
    and the offset of its ``False`` (which says whose job it is)."""
    return _packb((job_id, False, course_task, launcher, limit)), 1 + packed_size(job_id)


def cached_rows(
    jobs: List[Any], row_slot: str, rel_slot: str, make: Callable[[Any], Tuple[bytes, int]]
) -> Tuple[List[bytes], List[int]]:
    """Every job's cached waiting row and "yours" offset (slots ``row_slot``,
    ``rel_slot``), made by ``make`` for jobs that have none yet.

    Reading is at C speed (``map`` of an attrgetter); only jobs new since
    the last snapshot cost Python work.
    """
    rows = list(map(attrgetter(row_slot), jobs))
    i = -1
    try:
        while True:
            i = rows.index(None, i + 1)
            job = jobs[i]
            data, offset = make(job)
            setattr(job, row_slot, data)
            setattr(job, rel_slot, offset)
            rows[i] = data
    except ValueError:
        pass
    return rows, list(map(attrgetter(rel_slot), jobs))


class DialectAdapter:
    """The messages the core sends, in one dialect (see :mod:`.dialect06`, :mod:`.dialect09`).

    Subclasses set :attr:`name` and the prebuilt ``ping``/``pong``/``unknown``
    and implement every builder.  ``job`` is a :class:`~.job.Job`;
    ``outcome`` is an ``AgentJobDone`` of either dialect (their result fields
    have the same names).
    """

    name = ""
    ping: Any = None
    pong: Any = None
    unknown: Any = None

    # -- to clients --------------------------------------------------------------

    def environments(self, offered: Dict[str, Tuple[str, ...]]) -> Any:
        """The environments update for ``offered`` (type -> sorted names)."""
        raise NotImplementedError

    def job_started(self, job: Any) -> Any:
        raise NotImplementedError

    def job_done(self, job: Any, outcome: Any) -> Any:
        raise NotImplementedError

    def job_result(self, job_id: str, kind: str, text: str, inputdata: Any) -> Any:
        """A result the backend makes itself (crash, killed)."""
        raise NotImplementedError

    def ssh_debug(self, job: Any, host: str, port: int, user: str, password: str) -> Any:
        raise NotImplementedError

    def waiting_row(self, job: Any) -> Tuple[bytes, int]:
        """The encoded waiting-queue row of ``job`` (see :func:`waiting_row`)."""
        raise NotImplementedError

    def queue(self, client: Any, running: List[Tuple[Any, str]], section: bytes, n: int, own: List[int]) -> Any:
        """The queue snapshot for ``client``: ``running`` as (job, agent name)
        pairs, the waiting rows' bytes, their number and ``client``'s offsets."""
        raise NotImplementedError

    # -- to agents -----------------------------------------------------------------

    def agent_job_id(self, job: Any) -> Any:
        """The id an agent of this dialect knows ``job`` by."""
        raise NotImplementedError

    def new_job(self, job: Any) -> Any:
        raise NotImplementedError

    def kill_job(self, job: Any) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<dialect {self.name}>"


def relay(target: Any, source_types: Dict[str, Any]) -> Callable[..., Any]:
    """How to build a ``target`` message whose fields are values of ``source_types``.

    Each value was checked when its message was decoded: if every field of
    ``target`` is declared with the same type there, checking it again on
    the way out is waste, and the unchecked constructor (``_trusted``, made
    by :class:`~inginious_tx.messages.MessageMeta`) is returned; otherwise
    ``target`` itself, which checks.  Decided once, at import.
    """
    trusted = getattr(target, "_trusted", None)
    types = getattr(target, "field_types", None)
    if trusted is None or types is None or any(source_types.get(f, _NO_TYPE) != t for f, t in types.items()):
        return target
    return trusted


_NO_TYPE = object()


class Relays:
    """How the started notices and results of agents are relayed to clients of one dialect.

    ``module`` is the dialect's message module (:mod:`~inginious_tx.messages.v06`
    or ``v09``); results may come from agents of either dialect.
    """

    def __init__(self, module: Any) -> None:
        from ..messages import v06, v09

        self._job_done = module.BackendJobDone
        job_id = {"job_id": module.ClientNewJob.field_types["job_id"]}
        self.started = relay(module.BackendJobStarted, job_id)
        sources = (v06.AgentJobDone, v09.AgentJobDone)
        self._done = {source: relay(self._job_done, {**source.field_types, **job_id}) for source in sources}

    def done(self, job_id: str, m: Any) -> Any:
        """A client's ``BackendJobDone`` for the agent's result ``m``."""
        return self._done.get(type(m), self._job_done)(
            job_id, m.result, m.grade, m.problems, m.tests, m.custom, m.state, m.archive, m.stdout, m.stderr
        )


def optional_int(value: Any) -> Optional[int]:
    """``value`` if it is a positive int (a float is rounded up), else None."""
    if type(value) is int and value > 0:
        return value
    if type(value) is float and 0 < value < float("inf"):
        return max(1, int(-(-value // 1)))
    return None
