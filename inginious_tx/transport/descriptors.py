"""File descriptors shared out between a process's listeners.

Every accepted connection costs a descriptor, and a process has
``RLIMIT_NOFILE`` of them in all.  When the caps of its listeners add up to
more than that, one endpoint flooded with idle connections can take every
descriptor, and the others (the honest clients, the agents, the status
pages) are refused with ``EMFILE``.  :func:`raise_open_files_limit` lifts
the soft limit to the hard one at start; :func:`share_descriptors` lowers
the per-endpoint caps, if needed, so that they add up to less than the
limit with room left for everything else the process opens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["DescriptorShare", "open_files_limit", "raise_open_files_limit", "share_descriptors", "RESERVED_MIN"]

#: Descriptors kept aside for what is not a listener's connection (log
#: files, ZeroMQ's own sockets and threads, the embedded agent's jobs, the
#: Docker socket, listening sockets...): at least this many, or 1/16 of the limit.
RESERVED_MIN = 64
#: Highest soft limit asked for when the hard limit is "unlimited".
_UNLIMITED_CEILING = 1 << 20


def open_files_limit() -> Optional[Tuple[int, int]]:
    """``(soft, hard)`` of RLIMIT_NOFILE (``resource.RLIM_INFINITY`` as is), or None where unknown."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return int(soft), int(hard)


def raise_open_files_limit() -> Optional[Tuple[int, int]]:
    """Lift the soft RLIMIT_NOFILE to the hard one (at most 2**20 when unlimited).

    Returns ``(before, after)`` soft limits, or None where the limit is
    unknown.  A refusal by the system keeps the soft limit as it was.
    """
    limits = open_files_limit()
    if limits is None:
        return None
    import resource

    soft, hard = limits
    target = _UNLIMITED_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


@dataclass(frozen=True)
class DescriptorShare:
    """The caps that fit a descriptor limit (see :func:`share_descriptors`)."""

    #: the soft RLIMIT_NOFILE shared out
    limit: int
    #: descriptors left for the rest of the process
    reserved: int
    #: most connections of each stream or ZeroMQ endpoint
    per_endpoint: int
    #: most connections of the status pages (0: no status endpoint)
    status: int
    #: whether a cap had to be lowered to fit
    lowered: bool


def share_descriptors(limit: int, endpoints: int, per_endpoint: int, status: int) -> DescriptorShare:
    """Caps for ``endpoints`` listeners of ``per_endpoint`` connections each and
    status pages of ``status`` (0: none) that add up to less than ``limit``.

    What is asked is kept when it fits.  Otherwise the status pages keep up
    to an eighth of what is left after the reserve, and the endpoints share
    the rest evenly (each gets at least 1).
    """
    reserved = max(RESERVED_MIN, limit // 16)
    room = max(0, limit - reserved)
    if endpoints * per_endpoint + status <= room:
        return DescriptorShare(limit, reserved, per_endpoint, status, False)
    status_cap = min(status, max(1, room // 8)) if status else 0
    each = max(1, (room - status_cap) // endpoints) if endpoints else per_endpoint
    return DescriptorShare(limit, reserved, min(per_endpoint, each), status_cap, True)
