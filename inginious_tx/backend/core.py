"""The backend's state machine, free of any transport (public names).

The core is split into modules that each hold one thing:
:mod:`.settings` (:class:`BackendSettings`), :mod:`.stats`
(:class:`BackendStats`, :data:`TIME_BUCKETS`), :mod:`.peers`
(:class:`ClientState`, :class:`AgentState`), :mod:`.slots` (the free-slot
index), :mod:`.load` (per-course and per-client counts), :mod:`.job`
(:class:`Job` and its states) and :mod:`.lifecycle` (:class:`Backend`, the job
lifecycle).  This module re-exports their public names, which is where code
outside the backend should import them from.
"""

from .job import DONE, RUNNING, WAITING, Job
from .lifecycle import Backend
from .peers import AgentState, ClientState
from .settings import BackendSettings
from .stats import TIME_BUCKETS, BackendStats

__all__ = [
    "Backend",
    "BackendSettings",
    "BackendStats",
    "Job",
    "ClientState",
    "AgentState",
    "WAITING",
    "RUNNING",
    "DONE",
    "TIME_BUCKETS",
]
