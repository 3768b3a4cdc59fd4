"""Submitting jobs from a Twisted application with :mod:`inginious_tx.client`."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from twisted.internet.defer import TimeoutError, gatherResults

from inginious_tx.client import Client, ClientJobResult


async def grade_class(
    client: Client,
    course_id: str,
    task_id: str,
    answers: Mapping[str, Dict[str, Any]],
    environment: str = "default",
) -> Dict[str, ClientJobResult]:
    """Grade every student's answers at once; returns student -> result.

    Every job's Deferred fires exactly once, with the backend's answer or
    with a ``crash`` the client made up (see ``result.local``) when the
    backend could not be reached or was lost: nothing here can hang forever.
    """
    await client.wait_for_environment(environment, timeout=30)
    students = list(answers)
    jobs = [
        client.new_job(course_id, task_id, answers[student], environment, launcher="grade-class")
        for student in students
    ]
    results = await gatherResults(jobs)
    return dict(zip(students, results, strict=True))


async def grade_before(
    reactor: Any, client: Client, course_id: str, task_id: str, inputdata: Dict[str, Any], seconds: float
) -> Optional[ClientJobResult]:
    """The result of one job, or None if it took longer than ``seconds``.

    On timeout the job's Deferred is cancelled, which asks the backend to
    kill the job and forgets it.
    """
    job = client.new_job(course_id, task_id, inputdata)
    job.addTimeout(seconds, reactor)
    try:
        return await job
    except TimeoutError:
        return None
