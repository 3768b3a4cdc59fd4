"""Limits between the dialects: 0.6 fields <-> 0.9 ``environment_parameters``.

0.6 carries a job's limits as fields (``time_limit``, ``hard_time_limit``,
``mem_limit``, ``enable_network``, ``run_cmd``); 0.9 carries them in
``environment_parameters`` (``{"limits": {"time", "hard_time", "memory"},
"network_grading", "run_cmd", ...}``), with the defaults of the 0.9 docker
agent (PROTOCOL-0.9.md §3).  These functions never raise on what a peer
sent: a missing or ill-typed entry takes its default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

__all__ = ["Limits06", "limits_from_parameters", "parameters_from_limits", "max_time", "DEFAULT_TIME", "DEFAULT_MEMORY"]

#: The 0.9 docker agent's defaults when ``environment_parameters`` says nothing.
DEFAULT_TIME = 30
DEFAULT_MEMORY = 200


@dataclass(frozen=True)
class Limits06:
    """A job's limits as the 0.6 messages carry them."""

    time_limit: int
    hard_time_limit: Optional[int]
    mem_limit: int
    enable_network: bool
    run_cmd: Optional[str]


def _positive_int(value: Any) -> Optional[int]:
    """``value`` as a positive int (floats rounded up), None if it is not one."""
    if type(value) is int and value > 0:
        return value
    if type(value) is float and value > 0 and value == value and value != float("inf"):
        return max(1, int(-(-value // 1)))
    return None


def _limits(parameters: Any) -> Mapping[str, Any]:
    if not isinstance(parameters, Mapping):
        return {}
    limits = parameters.get("limits")
    return limits if isinstance(limits, Mapping) else {}


def limits_from_parameters(parameters: Any) -> Limits06:
    """The 0.6 limits of a 0.9 job (for a 0.6 agent, or our agents' runners).

    ``time`` defaults to 30 s, ``hard_time`` to 3 × time, ``memory`` to
    200 MB, ``network_grading`` to False, ``run_cmd`` "" (none) to None.
    """
    limits = _limits(parameters)
    time = _positive_int(limits.get("time")) or DEFAULT_TIME
    hard = _positive_int(limits.get("hard_time")) or 3 * time
    memory = _positive_int(limits.get("memory")) or DEFAULT_MEMORY
    network = parameters.get("network_grading") if isinstance(parameters, Mapping) else None
    run_cmd = parameters.get("run_cmd") if isinstance(parameters, Mapping) else None
    return Limits06(
        time_limit=time,
        hard_time_limit=hard,
        mem_limit=memory,
        enable_network=network is True,
        run_cmd=run_cmd if type(run_cmd) is str and run_cmd else None,
    )


def parameters_from_limits(
    time_limit: int,
    hard_time_limit: Optional[int],
    mem_limit: int,
    enable_network: bool,
    run_cmd: Optional[str],
) -> Dict[str, Any]:
    """The 0.9 ``environment_parameters`` of a 0.6 job (PROTOCOL-0.9.md §4)."""
    return {
        "limits": {
            "time": time_limit,
            "hard_time": hard_time_limit if hard_time_limit is not None else 3 * time_limit,
            "memory": mem_limit,
        },
        "run_cmd": run_cmd or "",
        "network_grading": bool(enable_network),
    }


def max_time(parameters: Any) -> int:
    """The ``max_time`` of a 0.9 queue entry: ``limits.time``, or -1."""
    value = _positive_int(_limits(parameters).get("time"))
    return value if value is not None else -1
