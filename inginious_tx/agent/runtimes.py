"""Container runtimes per environment for the Docker agent (``runtime=`` in ``--environment``).

``--environment NAME=IMAGE,runtime=RUNTIME`` runs the jobs of ``NAME`` with
the OCI runtime ``RUNTIME`` registered with the engine (``runc``, gVisor's
``runsc``, Kata...).  Without it, the engine's default runtime is used.

Some runtimes cannot take the job's pids limit: on cgroup v1, gVisor's
``runsc`` puts its own sandbox threads in the container's pids cgroup, so a
limit below what the sandbox itself needs stops the container from starting
(the Debian build also refuses it outright on some hosts).  The first job of
each runtime therefore *probes* it: a throw-away container made exactly like
that job's (same mounts, init, limits; the command starts two processes and
exits) must start and exit cleanly.  If it does not, the agent logs an error
saying so and runs that runtime's jobs with ``RLIMIT_NPROC`` (a ``nproc``
ulimit of the same figure) for the job's processes, and a cgroup pids limit
raised by ``sandbox_pids`` (default 256) for the sandbox's own threads, as
an outer bound.  Under gVisor ``RLIMIT_NPROC`` is enforced by the sandbox's
own kernel, per user *inside* the sandbox, so it bounds the job's processes
as the cgroup limit would; the memory limit still bounds the sandbox as a
whole.  When the probe passes, the cgroup limit is used as configured; under
gVisor it then counts the sandbox's threads too, so leave room (the tests
use 256).  (Under ``runc`` the
fallback would count every container of the same uid on the host: it is
never used for a runtime whose probe passes.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional

__all__ = ["EnvironmentSpec", "parse_environment_specs", "PidsPolicy", "thd_probe_pids", "thd_known_runtimes"]

_RUNTIME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


@dataclass(frozen=True)
class EnvironmentSpec:
    """One ``--environment`` value of the Docker agent."""

    image: str
    #: the OCI runtime the engine runs its containers with; None: the engine's default
    runtime: Optional[str] = None


def parse_environment_specs(values: Iterable[str]) -> Dict[str, EnvironmentSpec]:
    """``["NAME=IMAGE,runtime=RUNTIME", "NAME=IMAGE", "NAME"]`` -> ``{NAME: EnvironmentSpec}``."""
    out: Dict[str, EnvironmentSpec] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        image, *options = rest.split(",")
        name, image = name.strip(), image.strip()
        if not name or (sep and not image):
            raise ValueError(f"invalid --environment {value!r}: expected NAME=IMAGE[,runtime=RUNTIME]")
        runtime: Optional[str] = None
        for option in options:
            key, eq, val = option.partition("=")
            key, val = key.strip(), val.strip()
            if key != "runtime" or not eq:
                raise ValueError(f"invalid --environment {value!r}: unknown option {option.strip()!r} (runtime=...)")
            if not val or not set(val) <= _RUNTIME_CHARS:
                raise ValueError(f"invalid --environment {value!r}: bad runtime name {val!r}")
            runtime = val
        out[name] = EnvironmentSpec(image if sep else name, runtime)
    return out


@dataclass(frozen=True)
class PidsPolicy:
    """How a runtime's jobs get their process limit."""

    #: True: the cgroup pids limit; False: RLIMIT_NPROC inside the sandbox
    cgroup: bool
    #: why the cgroup limit is not used (the probe's failure), for the logs
    reason: str = ""

    def container_options(self, limit: int, sandbox_pids: int) -> Dict[str, Any]:
        """The container-create arguments that set the process limit."""
        if self.cgroup:
            return {"pids_limit": limit}
        from docker.types import Ulimit

        return {
            "ulimits": [Ulimit(name="nproc", soft=limit, hard=limit)],
            # still an outer bound on the host: the sandbox's own threads on top of the job's processes
            "pids_limit": limit + sandbox_pids,
        }


def thd_known_runtimes(client: Any) -> List[str]:
    """The runtimes registered with the engine (blocking)."""
    return sorted((client.info().get("Runtimes") or {}).keys())


def thd_probe_pids(client: Any, config: Dict[str, Any]) -> PidsPolicy:
    """Run a throw-away container made like a real job's (``config``: its create arguments) (blocking).

    The probe's command starts two processes and exits 0: the container must
    start and exit cleanly with the cgroup pids limit.
    """
    import docker

    cid = None
    try:
        container = client.containers.create(**config)
        cid = container.id
        client.api.start(cid)
        status = int(client.api.wait(cid, timeout=60)["StatusCode"])
        if status != 0:
            return PidsPolicy(False, f"the probe container exited with status {status}")
        return PidsPolicy(True)
    except docker.errors.NotFound:
        raise  # no such image or runtime: not the pids limit's fault
    except docker.errors.APIError as e:
        return PidsPolicy(False, f"the engine refused to start it: {e.explanation or e}")
    finally:
        if cid is not None:
            try:
                client.api.remove_container(cid, force=True)
            except Exception:
                pass
