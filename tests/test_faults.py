"""Fault injection: a real backend, agents and clients as separate processes, broken on purpose.

Each test runs one scenario of :mod:`faults_support` (which see for what is
done exactly) and checks the one rule that matters through all of them:
every job a client submitted gets exactly one result, with no duplicate, no
loss and nothing for jobs nobody submitted, and the peers that were not
broken carry on.  ``bench/fault_report.py`` runs the same scenarios with
larger numbers and prints the figures.

The Docker engine test stops the machine's ``dockerd``, which disturbs any
Docker test running at the same time; it comes last in this file and always
restarts the engine (with the command line it had) before it returns.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import pytest
from faults_support import (
    MISSED_PONGS,
    PING_INTERVAL,
    Figures,
    Lab,
    agent_frozen,
    agent_killed,
    backend_restart,
    client_vanishes,
    docker_outage,
    dockerd_pid,
    garbage,
    kill_storm,
)
from host_tools import missing_setup

#: How much the backend's resident memory may grow while it is fed garbage.
MEMORY_BOUND_MB = 150


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A lab whose processes are all killed after the test, passed or failed."""
    with Lab() as lab:
        yield lab


def explain(figures: Figures, lab: Lab) -> str:
    notes = "\n".join(f"  {k}: {str(v)[:600]}" for k, v in figures.notes.items())
    return f"{figures.line()}\n{notes}\n{lab.tails(15)}"


def test_tcp_agent_killed_its_jobs_run_again_elsewhere(lab: Lab) -> None:
    figures = agent_killed(lab, jobs=24, transport="tcp", retries=1)
    why = explain(figures, lab)
    assert figures.exactly_once, why
    assert figures.by_type == {"success": 24}, why
    # A held jobs when it died, and they succeeded: they ran again on B.
    assert figures.notes["running_on_killed_agent"], why
    assert set(figures.notes["their_results"]) == {"success"}, why
    # A closed TCP connection is a certain, immediate departure: no heartbeat needed.
    assert "connection closed" in figures.notes["removal_reason"], why


def test_zmq_agent_killed_past_the_retry_limit_its_jobs_crash(lab: Lab) -> None:
    figures = agent_killed(lab, jobs=16, transport="zmq", retries=0)
    why = explain(figures, lab)
    assert figures.exactly_once, why
    lost = figures.notes["running_on_killed_agent"]
    assert lost, why
    assert figures.notes["their_results"] == ["crash"] * len(lost), why
    assert all("agent lost" in t and "gave up after 1 attempts" in t for t in figures.notes["their_texts"]), why
    assert figures.by_type == {"crash": len(lost), "success": 16 - len(lost)}, why
    # ZeroMQ never says that a peer left: the heartbeat finds out, or a send
    # to it finds its connection gone (which ends its session at once).
    reason = figures.notes["removal_reason"]
    assert "connection closed" in reason or "pings unanswered" in reason, why
    assert figures.notes["detection_seconds"] < PING_INTERVAL * (MISSED_PONGS + 1) + 3, why


def test_zmq_agent_frozen_then_woken_its_late_results_are_dropped(lab: Lab) -> None:
    figures = agent_frozen(lab, jobs=16, late_jobs=8)
    why = explain(figures, lab)
    assert figures.exactly_once, why
    assert figures.by_type == {"success": 24}, why
    frozen = figures.notes["running_on_frozen_agent"]
    assert frozen and set(figures.notes["their_results"]) == {"success"}, why
    # woken up, A answered the jobs it had: every one of those answers was dropped
    assert figures.notes["late_results_dropped"] == len(frozen), why
    assert figures.notes["agent_alive"], why


def test_backend_restart_clients_and_agents_come_back(lab: Lab) -> None:
    figures = backend_restart(lab, jobs=6)
    why = explain(figures, lab)
    assert figures.exactly_once, why
    notes = figures.notes
    # pending jobs were answered, not left hanging: crash, made up by the client library
    assert len(notes["after_kill"]) == 12, why
    unavailable = [
        t == "crash" and local and text.startswith("backend unavailable") for t, text, local in notes["after_kill"]
    ]
    assert all(unavailable), why
    # agents and clients reconnected on their own; new jobs ran
    assert [t for t, _, _ in notes["after_restart"]] == ["success"] * 12, why
    # a graceful stop answers what is pending itself
    assert notes["after_sigterm"] == [("crash", "backend shutting down", False)] * 4, why


def test_kill_storm_every_job_answered_once_and_no_slot_leaks(lab: Lab) -> None:
    figures = kill_storm(lab, jobs=1000, slots=8, after=32)
    why = explain(figures, lab)
    assert figures.exactly_once, why
    assert set(figures.by_type) <= {"killed", "success"}, why
    texts = figures.notes["killed_texts"]
    # some were killed while waiting (by the backend), some while running (by their agent)
    assert texts.get("the job was killed before it started", 0) > 0, why
    assert texts.get("the job was killed", 0) > 0, why
    assert figures.notes["queue_after"] == (0, 0), why
    assert figures.notes["after_results"] == {"success": 32}, why


def test_vanished_clients_lose_their_jobs_and_nobody_else_notices(lab: Lab) -> None:
    figures = client_vanishes(lab, jobs=200, slots=8, after=32)
    why = explain(figures, lab)
    assert figures.exactly_once, why
    assert figures.by_type == {"success": 32}, why
    tcp, zmq = figures.notes["departures"]
    assert tcp.startswith("client 'vt' left (connection closed") and "192 waiting jobs dropped" in tcp, why
    # ZeroMQ: its silence, or a send that found its connection gone (which ends its session), tells.
    assert zmq.startswith(
        ("client 'vz' left (no message for", "client 'vz' left (connection closed (its connection")
    ), why
    # vt's freed slots may have started none, some or all 8 of vz's next jobs before vz's departure
    # was seen: whatever the split, each of its 200 jobs is dropped or killed, once.
    dropped, killed = map(int, re.search(r"(\d+) waiting jobs dropped, (\d+) running jobs killed", zmq).groups())
    assert dropped + killed == 200 and 8 <= killed <= 16, why
    assert figures.notes["queue_after"] == (0, 0), why


def test_garbage_leaves_the_backend_up_bounded_and_serving(lab: Lab) -> None:
    figures = garbage(lab, jobs=40, never_read_jobs=300, result_kb=100)
    why = explain(figures, lab)
    notes = figures.notes
    assert notes["backend_alive"], why
    assert figures.exactly_once, why
    assert figures.by_type == {"success": figures.submitted}, why
    assert notes["forged_results_delivered"] == 0, why
    assert notes["strays_dropped"] >= 1, why
    # the rogue agent's one job ran again on an honest agent once the rogue went silent
    assert notes["rogue_job_result"] == "success", why
    assert notes["never_reading_client_dropped"] and notes["deaf_client_cut_off"], why
    assert notes["internal_errors_logged"] == 0, why
    assert notes["rss_growth_mb"] < MEMORY_BOUND_MB, why
    assert notes["peak_growth_mb"] < MEMORY_BOUND_MB, why


# -- keep last: it stops the machine's Docker engine -------------------------------


@pytest.mark.docker
def test_docker_engine_stopped_and_started_under_a_running_agent(lab: Lab) -> None:
    try:
        from .docker_support import TEST_IMAGE, require_docker
    except ImportError:
        from docker_support import TEST_IMAGE, require_docker  # type: ignore[no-redef]

    require_docker()
    if dockerd_pid() is None:
        missing_setup("the Docker engine is not a local dockerd process that this test can stop and start")
    figures: Any = docker_outage(lab, TEST_IMAGE, jobs=3)
    why = explain(figures, lab)
    notes = figures.notes
    assert figures.exactly_once, why
    assert notes["before"] == ["success"] * 3, why
    assert [t for t, _ in notes["during"]] == ["crash"] * 3, why
    assert all("docker engine" in text for _, text in notes["during"]), why
    assert notes["agent_alive_during"] and notes["agent_alive_after"], why
    assert notes["after"] == ["success"] * 3, why
