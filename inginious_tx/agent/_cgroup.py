"""Control groups for the local backend: limits, accounting, kill-all.

Works with cgroup v2 (``memory.max``, ``pids.max``, ``cpu.stat``,
``cgroup.kill``) and v1 (``memory``, ``pids``, ``cpuacct`` hierarchies), or a
mix, as found in ``/proc/self/mountinfo``.  Job groups are made under the
agent's own group in each hierarchy, in ``inginious-tx-<pid>/``.  What works
is found by trying (:meth:`CgroupSupport.probe`); whatever does not is simply
not used, and :meth:`CgroupSupport.describe` says so.

Everything here is blocking file work on cgroupfs: call it from a thread.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

__all__ = ["CgroupSupport", "JobCgroup", "JobStats"]

FEATURES = ("track", "memory", "pids", "cpu")


def _mounts() -> Tuple[Optional[Tuple[str, str]], Dict[str, Tuple[str, str]]]:
    """(v2 mount point and root, {v1 controller: (mount point, root)})."""
    v2 = None
    v1: Dict[str, Tuple[str, str]] = {}
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None, {}
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, point, fstype = fields[3], fields[4], rfields[0]
        if fstype == "cgroup2" and v2 is None:
            v2 = (point, root)
        elif fstype == "cgroup":
            for opt in rfields[2].split(","):
                if opt in ("memory", "pids", "cpuacct") and opt not in v1:
                    v1[opt] = (point, root)
    return v2, v1


def _own_paths() -> Dict[str, str]:
    """This process's group per v1 controller, and under "" its v2 group."""
    out: Dict[str, str] = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f.read().splitlines():
                parts = line.split(":", 2)
                if len(parts) != 3:
                    continue
                if parts[0] == "0" and parts[1] == "":
                    out[""] = parts[2]
                for ctrl in parts[1].split(","):
                    if ctrl:
                        out[ctrl] = parts[2]
    except OSError:
        pass
    return out


def _join(point: str, root: str, own: str) -> str:
    rel = own[len(root) :] if root != "/" and own.startswith(root) else own
    return os.path.join(point, rel.lstrip("/"))


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _keyed(path: str, key: str) -> Optional[int]:
    """The value of ``key`` in a flat-keyed file (``memory.events``, ``cpu.stat``)."""
    try:
        for line in _read(path).splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    except (OSError, ValueError):
        pass
    return None


def _remove_stale(folder: str) -> None:
    """Remove the (empty) groups of agents that died without cleaning up."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if not name.startswith("inginious-tx-") or len(parts) < 3 or not parts[2].isdigit():
            continue
        if os.path.exists(f"/proc/{parts[2]}"):
            continue  # that agent is alive (or its pid was reused: leave it)
        base = os.path.join(folder, name)
        try:
            for child in os.listdir(base):
                if os.path.isdir(os.path.join(base, child)):
                    os.rmdir(os.path.join(base, child))
            os.rmdir(base)
        except OSError:
            pass


@dataclass
class JobStats:
    cpu_seconds: Optional[float] = None
    oom_kills: int = 0
    processes: int = 0
    #: the job's tmpfs is full (set by the local backend, not from a cgroup)
    disk_full: bool = False


@dataclass
class _Place:
    """Where one feature lives: the parent folder of job groups, and its version."""

    base: str
    version: int


@dataclass
class CgroupSupport:
    """What this host lets the agent do with control groups."""

    places: Dict[str, _Place] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)

    @classmethod
    def probe(cls, tag: str) -> CgroupSupport:
        """Find, by trying, which features work; ``tag`` names our parent groups."""
        support = cls()
        v2, v1 = _mounts()
        own = _own_paths()
        made: Dict[str, bool] = {}

        def parent(path: str) -> bool:
            if path not in made:
                _remove_stale(os.path.dirname(path))
                try:
                    os.makedirs(path, exist_ok=True)
                    made[path] = True
                except OSError as e:
                    support.problems.append(f"cannot create {path}: {e.strerror}")
                    made[path] = False
            return made[path]

        def try_child(base: str, files: Dict[str, str]) -> bool:
            probe = os.path.join(base, "probe")
            try:
                os.mkdir(probe)
            except FileExistsError:
                pass
            except OSError as e:
                support.problems.append(f"cannot create a group in {base}: {e.strerror}")
                return False
            try:
                for name, value in files.items():
                    if value:
                        _write(os.path.join(probe, name), value)
                    elif not os.path.exists(os.path.join(probe, name)):
                        return False
                return True
            except OSError as e:
                support.problems.append(f"{base}: {e.strerror}")
                return False
            finally:
                try:
                    os.rmdir(probe)
                except OSError:
                    pass

        if v2 is not None and "" in own:
            base = os.path.join(_join(*v2, own[""]), tag)
            if parent(base):
                if try_child(base, {"cgroup.procs": "", "cpu.stat": ""}):
                    support.places["cpu"] = _Place(base, 2)
                    if os.path.exists(os.path.join(base, "cgroup.kill")):
                        support.places["track"] = _Place(base, 2)
                for ctrl, files in (("memory", {"memory.max": "max"}), ("pids", {"pids.max": "max"})):
                    if support._enable_v2(v2[0], base, ctrl) and try_child(base, files):
                        support.places[ctrl] = _Place(base, 2)
        for ctrl, feature, files in (
            ("memory", "memory", {"memory.limit_in_bytes": "-1"}),
            ("pids", "pids", {"pids.max": "max"}),
            ("cpuacct", "cpu", {"cpuacct.usage": ""}),
        ):
            if feature in support.places or ctrl not in v1 or ctrl not in own:
                continue
            base = os.path.join(_join(*v1[ctrl], own[ctrl]), tag)
            if parent(base) and try_child(base, files):
                support.places[feature] = _Place(base, 1)
        if "track" not in support.places:
            for feature in ("pids", "memory", "cpu"):
                if feature in support.places:
                    support.places["track"] = support.places[feature]
                    break
        for path, ok in made.items():
            if ok and not any(p.base == path for p in support.places.values()):
                try:
                    os.rmdir(path)
                except OSError:
                    pass
        return support

    def _enable_v2(self, point: str, base: str, ctrl: str) -> bool:
        """Enable ``ctrl`` for the children of ``base`` (and on the way down from the mount)."""
        chain = []
        path = base
        while True:
            chain.append(path)
            if os.path.normpath(path) == os.path.normpath(point):
                break
            path = os.path.dirname(path)
        for folder in reversed(chain):
            try:
                if ctrl in _read(os.path.join(folder, "cgroup.subtree_control")).split():
                    continue
                if ctrl not in _read(os.path.join(folder, "cgroup.controllers")).split():
                    return False
                _write(os.path.join(folder, "cgroup.subtree_control"), f"+{ctrl}")
            except OSError as e:
                self.problems.append(f"cannot enable the v2 {ctrl} controller in {folder}: {e.strerror}")
                return False
        return True

    def has(self, feature: str) -> bool:
        return feature in self.places

    def describe(self) -> str:
        if not self.places:
            return "no usable cgroups"
        return ", ".join(f"{f} (cgroup v{self.places[f].version})" for f in FEATURES if f in self.places)

    def create(self, name: str, mem_bytes: Optional[int], max_pids: Optional[int]) -> JobCgroup:
        """A group for one job, with its limits set."""
        dirs: Dict[str, str] = {}
        made: List[str] = []
        try:
            for feature, place in self.places.items():
                path = os.path.join(place.base, name)
                if path not in made:
                    os.mkdir(path)
                    made.append(path)
                dirs[feature] = path
            group = JobCgroup(dirs, {f: p.version for f, p in self.places.items()}, made)
            group.set_limits(mem_bytes, max_pids)
            return group
        except BaseException:
            for path in reversed(made):
                try:
                    os.rmdir(path)
                except OSError:
                    pass
            raise

    def cleanup(self) -> None:
        for base in {p.base for p in self.places.values()}:
            try:
                os.rmdir(base)
            except OSError:
                pass


@dataclass
class JobCgroup:
    """The groups of one job (one folder per hierarchy)."""

    dirs: Dict[str, str]
    versions: Dict[str, int]
    made: List[str]

    @property
    def procs_files(self) -> List[str]:
        """The files a process writes its pid to, to join every group of the job."""
        return [os.path.join(d, "cgroup.procs") for d in self.made]

    def set_limits(self, mem_bytes: Optional[int], max_pids: Optional[int]) -> None:
        if mem_bytes and "memory" in self.dirs:
            d = self.dirs["memory"]
            if self.versions["memory"] == 2:
                _write(os.path.join(d, "memory.max"), str(mem_bytes))
                if os.path.exists(os.path.join(d, "memory.swap.max")):
                    _write(os.path.join(d, "memory.swap.max"), "0")
            else:
                _write(os.path.join(d, "memory.limit_in_bytes"), str(mem_bytes))
                if os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes")):
                    _write(os.path.join(d, "memory.memsw.limit_in_bytes"), str(mem_bytes))
        if max_pids and "pids" in self.dirs:
            _write(os.path.join(self.dirs["pids"], "pids.max"), str(max_pids))

    def pids(self) -> List[int]:
        found: Set[int] = set()
        for path in self.procs_files:
            try:
                found.update(int(x) for x in _read(path).split())
            except (OSError, ValueError):
                pass
        return sorted(found)

    def kill_all(self, timeout: float = 5.0) -> bool:
        """SIGKILL every process of the job; True once none is left."""
        track = self.dirs.get("track")
        if track and self.versions["track"] == 2:
            try:
                _write(os.path.join(track, "cgroup.kill"), "1")
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)  # a worker thread; processes take a moment to go

    def stats(self) -> JobStats:
        s = JobStats()
        if "cpu" in self.dirs:
            d = self.dirs["cpu"]
            if self.versions["cpu"] == 2:
                usec = _keyed(os.path.join(d, "cpu.stat"), "usage_usec")
                s.cpu_seconds = None if usec is None else usec / 1e6
            else:
                try:
                    s.cpu_seconds = int(_read(os.path.join(d, "cpuacct.usage"))) / 1e9
                except (OSError, ValueError):
                    pass
        if "memory" in self.dirs:
            d = self.dirs["memory"]
            if self.versions["memory"] == 2:
                s.oom_kills = _keyed(os.path.join(d, "memory.events"), "oom_kill") or 0
            else:
                s.oom_kills = _keyed(os.path.join(d, "memory.oom_control"), "oom_kill") or 0
        s.processes = len(self.pids())
        return s

    def remove(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for path in reversed(self.made):
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    self.kill_all(0.1)
