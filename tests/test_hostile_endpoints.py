"""Hostile peers against the backend's listening endpoints as a whole (issue 16).

A real ``twistd inginious-backend`` at ``ulimit -n 1024`` and real sockets:
one endpoint flooded with idle connections must not take the descriptors
the others need, and what clients choose (environments, courses) must not
decide how large the status pages and ``/metrics`` grow.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from typing import List, Tuple

from faults_support import Lab, free_port

#: The open files limit the backend runs with (a common default soft limit).
NOFILE = 1024
#: Idle connections the attacker opens to the status pages: more than NOFILE.
FLOOD = 1100


def _raise_own_limit(need: int) -> None:
    """This test process holds ``need`` sockets at once: lift its soft limit if needed."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def open_idle(port: int, n: int, backend_pid: int, batch: int = 40) -> List[socket.socket]:
    """``n`` idle TCP connections to ``port``, ``batch`` at a time: each batch is given
    up to 2 s to be taken in (accepted by the backend, or closed by it) before the next,
    so that the kernel's accept queue (50) does not hold the flood back."""
    socks: List[socket.socket] = []
    base = open_descriptors(backend_pid)
    while len(socks) < n:
        for _ in range(min(batch, n - len(socks))):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            s.setblocking(False)  # closed_count() must not wait
            socks.append(s)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if open_descriptors(backend_pid) - base + closed_count(socks) >= len(socks) - 4:
                break
            time.sleep(0.02)
    return socks


def closed_count(socks: List[socket.socket]) -> int:
    """How many of ``socks`` (non-blocking) the other side has closed or reset."""
    n = 0
    for s in socks:
        try:
            data = s.recv(4096, socket.MSG_DONTWAIT | socket.MSG_PEEK)
            n += not data
        except BlockingIOError:
            pass
        except OSError:  # reset, or never connected
            n += 1
    return n


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def get(url: str, timeout: float = 30.0) -> Tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def test_an_idle_flood_of_the_status_pages_cannot_starve_clients_at_ulimit_1024() -> None:
    """Backend at ``ulimit -n 1024``; 1,100 idle TCP connections to ``--status``. A new client's
    hello and job are still answered, the status page still answers (the oldest idle connection
    makes room), the flood holds at most ``--status-max-connections`` descriptors (logged), and
    those are closed once idle for ``--status-idle-timeout``.

    On main the status pages accepted every connection and kept it for 12 h: the backend ran
    out of descriptors (EMFILE), the new client was never answered, nor the status page."""
    _raise_own_limit(FLOOD + 200)
    with Lab() as lab:
        clients, agents = lab.endpoints("clients", ("tcp",)), lab.endpoints("agents", ("tcp",))
        status_port = free_port()
        backend = lab.backend(
            clients, agents, "--status", f"tcp:{status_port}:interface=127.0.0.1", "--status-idle-timeout", "3",
            nofile=NOFILE,
        )  # fmt: skip
        lab.agent("a1", agents.connect["tcp"])
        lab.wait(lab.registered(backend, "a1"), 30, "the agent to register")
        lab.wait(lambda: backend.has("status pages on http"), 20, "the status pages to listen")
        before = open_descriptors(backend.pid)

        flood = open_idle(status_port, FLOOD, backend.pid)
        assert len(flood) > NOFILE - before, f"only {len(flood)} connections completed"
        # Let the backend take them in: it has refused some, or holds (nearly) every descriptor.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if backend.has("(--status-max-connections)") or open_descriptors(backend.pid) >= NOFILE - 8:
                break
            time.sleep(0.1)
        held = open_descriptors(backend.pid)

        late = lab.client("late", clients.connect["tcp"], connect_timeout=15)
        lab.wait(late.ready(), 20, "a new client's hello to be answered during the flood")
        [job] = late.submit(["late-1"])
        lab.wait(late.answered([job]), 30, "the new client's job to be answered")
        assert late.results[job][0]["type"] == "success", late.results[job]
        code, body = get(f"http://127.0.0.1:{status_port}/status.json")
        assert code == 200 and json.loads(body)["totals"]["agents"] == 1

        assert held < NOFILE - 200, f"the flood took {held} descriptors of {NOFILE}"
        assert backend.has("connections open (--status-max-connections): closed")
        # 2 x 1000 + 64 connections do not fit in 1024 descriptors: the caps were shared out
        assert backend.has("open files limit 1024: connection caps lowered to fit")
        assert backend.has("448 per client or agent endpoint")
        # The connections kept under the cap are closed once idle for 3 s: the descriptors come back.
        deadline = time.monotonic() + 20
        while open_descriptors(backend.pid) > before + 8 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert open_descriptors(backend.pid) <= before + 8, (before, open_descriptors(backend.pid))
        assert closed_count(flood) >= FLOOD - NOFILE  # refused at once or timed out (more, kernel permitting)
        assert backend.alive
        for s in flood:
            s.close()


def test_made_up_environments_and_courses_cannot_blow_up_metrics_or_status_pages() -> None:
    """A client queues 5,000 jobs, each for an environment and a course it made up (no agent
    offers them).  ``/metrics``, ``/status.json`` and the page stay small: the offered
    environment, at most 64 others by name and one ``(other)`` series with the rest; the 100
    busiest courses and ``(other)``.  Once the client has left, the made-up names are gone.

    On main every made-up environment got its own series (``/metrics`` was 9.4 MB with 80,000
    series at 20,000 jobs) and every course its own row in status.json."""
    from faults_support import frame, raw_tcp, read_frames

    from inginious_tx.backend.testing import new_job
    from inginious_tx.messages import BackendUpdateContainers, ClientHello

    n = 5_000
    with Lab() as lab:
        clients, agents = lab.endpoints("clients", ("tcp",)), lab.endpoints("agents", ("tcp",))
        status_port = free_port()
        backend = lab.backend(clients, agents, "--status", f"tcp:{status_port}:interface=127.0.0.1")
        lab.agent("a1", agents.connect["tcp"])
        lab.wait(lab.registered(backend, "a1"), 30, "the agent to register")
        lab.wait(lambda: backend.has("status pages on http"), 20, "the status pages to listen")
        hostile = raw_tcp(clients.connect["tcp"])
        hostile.sendall(frame(ClientHello("hostile").dump()))
        read_frames(hostile, lambda m: type(m) is BackendUpdateContainers, 10)
        jobs = (frame(new_job(f"j{i}", environment=f"made-up-{i}", course_id=f"course-{i}").dump()) for i in range(n))
        batch: List[bytes] = []
        for data in jobs:
            batch.append(data)
            if len(batch) == 1000:
                hostile.sendall(b"".join(batch))
                batch.clear()
        hostile.sendall(b"".join(batch))
        base = f"http://127.0.0.1:{status_port}"
        deadline = time.monotonic() + 120
        while json.loads(get(base + "/status.json")[1])["totals"]["waiting"] < n:
            assert time.monotonic() < deadline, "the jobs were not all queued"
            time.sleep(0.2)

        _, metrics = get(base + "/metrics")
        assert len(metrics) < 100_000, f"/metrics is {len(metrics)} bytes"  # main: 1.2 MB at 5,000
        waiting = [line for line in metrics.decode().splitlines() if line.startswith("inginious_jobs_waiting{")]
        assert len(waiting) <= 1 + 64 + 1, len(waiting)
        other = [line for line in waiting if 'environment="(other)"' in line]
        assert len(other) == 1 and float(other[0].rsplit(" ", 1)[1]) == n - (len(waiting) - 2), other
        _, body = get(base + "/status.json")
        assert len(body) < 200_000, f"status.json is {len(body)} bytes"
        snap = json.loads(body)
        assert len(snap["queue"]) == len(waiting) and snap["queue"]["(other)"] == n - (len(waiting) - 2)
        assert len(snap["load"]["courses"]) == 101 and snap["load"]["courses"]["(other)"] == [n - 100, 0]
        assert snap["totals"]["courses_with_jobs"] == n
        assert snap["totals"]["environments_in_other"] == n - (len(waiting) - 2)
        _, page = get(base + "/")
        assert len(page) < 200_000, f"the page is {len(page)} bytes"

        hostile.close()  # the client leaves: its jobs are dropped and its names forgotten
        deadline = time.monotonic() + 120
        while json.loads(get(base + "/status.json")[1])["totals"]["waiting"]:
            assert time.monotonic() < deadline, "the jobs were not dropped"
            time.sleep(0.2)
        _, metrics = get(base + "/metrics")
        assert b"made-up-" not in metrics and b'"(other)"' not in metrics
        snap = json.loads(get(base + "/status.json")[1])
        assert snap["load"]["courses"] == {} and list(snap["queue"]) == ["default"]
        assert backend.alive
