"""Submits MCQ jobs as the INGInious 0.9.2 frontend does, with its real client.

Runs *inside* the full INGInious 0.9.2 virtualenv (``ITX_INGINIOUS_09_FULL``,
made by ``.ci/setup-inginious.sh``), never in the test process::

    python inginious_mcq_driver.py --backend tcp://127.0.0.1:2000 --tasks DIR --cases cases.json

Tasks are loaded by the frontend's own course and task factories (its
``Task`` objects, its displayable problem types), so ``task_problems`` is
``task.get_problems_dict()`` exactly as the webapp sends it.  A case either
names a task (``"task": "course/task"``) or gives raw ``"problems"`` (what a
hand-made client could send, for the agent's answers to malformed tasks).
Once the backend lists ``mcq/mcq``, every case is submitted at once; each
answer is written to stdout as one JSON line ``{"ref", "result", "grade",
"problems", "state", ...}``, then ``{"event": "all-done"}``.
"""

import argparse
import asyncio
import json
import logging
import sys


def emit(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class RawTask:
    """A task the frontend would refuse to load: only what the client reads."""

    def __init__(self, course_id, task_id, problems):
        self._course_id, self._task_id, self._problems = course_id, task_id, problems

    def get_course_id(self):
        return self._course_id

    def get_id(self):
        return self._task_id

    def get_environment_type(self):
        return "mcq"

    def get_environment_id(self):
        return "mcq"

    def get_environment_parameters(self):
        return {}

    def get_problems_dict(self):
        return self._problems


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backend", required=True)
    p.add_argument("--tasks", required=True)
    p.add_argument("--cases", required=True)
    p.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    import builtins

    builtins.__dict__.setdefault("_", lambda s: s)  # the frontend's gettext hook, unset outside the webapp

    import zmq.asyncio
    from inginious.client.client import Client
    from inginious.common.filesystems.local import LocalFSProvider
    from inginious.frontend.course_factory import create_factories
    from inginious.frontend.environment_types import register_base_env_types
    from inginious.frontend.task_dispensers.toc import TableOfContents
    from inginious.frontend.task_problems import get_default_displayable_problem_types

    register_base_env_types()
    course_factory, _ = create_factories(
        LocalFSProvider(args.tasks),
        {TableOfContents.get_id(): TableOfContents},
        get_default_displayable_problem_types(),
    )
    with open(args.cases) as f:
        cases = json.load(f)
    tasks = []
    for case in cases:
        if "task" in case:
            course_id, task_id = case["task"].split("/")
            task = course_factory.get_task(course_id, task_id)
            assert task.get_environment_type() == "mcq", case
        else:
            course_id, task_id = case.get("raw_task", "itx/raw").split("/")
            task = RawTask(course_id, task_id, case["problems"])
        tasks.append(task)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    ready = asyncio.Event()

    class WatchingClient(Client):
        async def _handle_update_environments(self, message):
            await super()._handle_update_environments(message)
            if "mcq" in message.available_environments.get("mcq", []):
                ready.set()

    client = WatchingClient(zmq.asyncio.Context(), args.backend, queue_update=3600)
    left = {case["ref"] for case in cases}
    finished = asyncio.Event()

    def done_for(ref):
        def done(result, grade, problems, tests, custom, state, archive, stdout, stderr):
            emit(ref=ref, result=list(result), grade=grade, problems={k: list(v) for k, v in problems.items()},
                 tests=tests, custom=custom, state=state)  # fmt: skip
            left.discard(ref)
            if not left:
                finished.set()

        return done

    async def run():
        client.start()
        await asyncio.wait_for(ready.wait(), args.timeout)
        emit(event="environments")
        for case, task in zip(cases, tasks, strict=True):
            client.new_job(0, task, dict(case["inputdata"]), done_for(case["ref"]), "itx-mcq-test")
        await asyncio.wait_for(finished.wait(), args.timeout)
        emit(event="all-done")

    try:
        loop.run_until_complete(run())
    finally:
        client.close()


if __name__ == "__main__":
    main()
