"""The backend's tunables (:class:`BackendSettings`), checked when built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["BackendSettings"]


@dataclass(frozen=True)
class BackendSettings:
    """The backend's tunables; every one has a ``twistd inginious-backend`` option."""

    #: How many times a job whose agent was lost is queued again before it is
    #: answered ``("crash", ...)``.
    max_retries: int = 1
    #: Seconds between two pings to each agent (and between client checks).
    ping_interval: float = 1.0
    #: An agent that leaves this many pings in a row unanswered is dropped.
    max_missed_pongs: int = 3
    #: At most this many jobs wait in total (None: no limit); beyond, a new
    #: job is answered ``("crash", "queue full ...")`` at once.
    max_waiting: Optional[int] = 100_000
    #: At most this many jobs of one client wait (None: no limit).
    max_waiting_per_client: Optional[int] = None
    #: Largest ``inputdata`` of a job, in bytes once msgpack-encoded (None: only
    #: the transport's frame limit); a larger job is answered ``crash`` at once.
    max_inputdata: Optional[int] = 16 << 20
    #: Most bytes of ``inputdata`` (as measured for ``max_inputdata``) held for
    #: every job not yet answered, waiting or running, from all clients
    #: (None: no limit); a job that would go beyond is answered ``crash``.
    max_queued_bytes: Optional[int] = 512 << 20
    #: The same bound for the jobs of one client (None: no limit).
    max_queued_bytes_per_client: Optional[int] = 256 << 20
    #: A client that has jobs and sends nothing (not even ``Ping``) this long
    #: is gone: its waiting jobs are dropped and its running jobs killed.
    client_silence_timeout: float = 30.0
    #: A client with no job that stays silent this long is forgotten.
    client_idle_timeout: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if not self.ping_interval > 0:
            raise ValueError("ping_interval must be > 0")
        if self.max_missed_pongs < 1:
            raise ValueError("max_missed_pongs must be >= 1")
        for name in (
            "max_waiting",
            "max_waiting_per_client",
            "max_inputdata",
            "max_queued_bytes",
            "max_queued_bytes_per_client",
        ):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None")
        if not self.client_silence_timeout > 0 or not self.client_idle_timeout > 0:
            raise ValueError("client timeouts must be > 0")
