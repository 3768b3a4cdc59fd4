"""Submits grading cases with the real INGInious 0.9.2 client, tasks built as its webapp builds them.

Runs *inside* the full INGInious 0.9.2 virtualenv (``inginious==0.9.2`` with
its dependencies, ``ITX_INGINIOUS_09_FULL``), never in the test process::

    python inginious_grading_driver.py --backend tcp://127.0.0.1:2000 --tasks TASKS --cases cases.json

``cases.json`` is a list of ``{"ref", "course", "task", "inputdata", "debug", "kill_after", "alone"}``
(``kill_after``: seconds after which the client kills the job; ``alone``: the
next case waits for this one's answer).
Each task is the 0.9.2 frontend's own ``Task`` object read from its
``task.yaml``, so its environment parameters go through
``DockerEnvType().check_task_environment_parameters`` as in the webapp
(``run_cmd: ''`` becomes None, string limits become numbers).  All cases are
submitted at once (``--sequential``: one after the other, ``--gap`` seconds apart); one JSON line per
finished case goes to stdout (bytes as ``{"$bytes_hex": ...}``, the archive
as the sorted names of its members),
then ``{"event": "end"}``.
"""

import argparse
import asyncio
import io
import json
import sys
import tarfile
import threading
import time

import yaml
import zmq.asyncio
from inginious.client.client import Client
from inginious.common.filesystems.local import LocalFSProvider
from inginious.frontend import task_problems
from inginious.frontend.environment_types import register_base_env_types
from inginious.frontend.environment_types.docker import DockerEnvType
from inginious.frontend.tasks import Task


def _plain(value):
    if isinstance(value, bytes):
        return {"$bytes_hex": value.hex()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _members(archive):
    if archive is None:
        return None
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            return sorted(m.name.lstrip("./") or "." for m in tar.getmembers())
    except tarfile.TarError as e:
        return [f"<not a tar archive: {e}>"]


class _Course:
    def __init__(self, course_id):
        self._id = course_id

    def get_id(self):
        return self._id


class _PlainTask:
    """What the client reads of a task, the environment parameters normalised as the webapp does."""

    def __init__(self, course_id, task_id, content):
        self._course, self._id, self._data = course_id, task_id, content
        self._params = DockerEnvType().check_task_environment_parameters(content.get("environment_parameters", {}))

    def get_course_id(self):
        return self._course

    def get_id(self):
        return self._id

    def get_problems_dict(self):
        return self._data["problems"]

    def get_environment_type(self):
        return self._data.get("environment_type", "docker")

    def get_environment_id(self):
        return self._data.get("environment_id", "default")

    def get_environment_parameters(self):
        return self._params


class _Plugins:
    def call_hook(self, *args, **kwargs):
        return []


def problem_types():
    out = {}
    for name in dir(task_problems):
        cls = getattr(task_problems, name)
        if isinstance(cls, type) and name.startswith("Displayable") and hasattr(cls, "get_type"):
            try:
                out[cls.get_type()] = cls
            except Exception:
                pass
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True)
    parser.add_argument("--tasks", required=True)
    parser.add_argument("--cases", required=True)
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--sequential", action="store_true", help="one case at a time (timings)")
    parser.add_argument("--gap", type=float, default=0.0, help="with --sequential: seconds from an answer to the next")
    args = parser.parse_args()
    register_base_env_types()
    import builtins

    builtins.__dict__.setdefault("_", lambda s: s)  # the webapp installs gettext's _
    fs = LocalFSProvider(args.tasks)
    types = problem_types()
    with open(args.cases) as f:
        cases = json.load(f)
    tasks = {}
    for case in cases:
        key = (case["course"], case["task"])
        if key not in tasks:
            with open("/".join((args.tasks, key[0], key[1], "task.yaml"))) as f:
                content = yaml.safe_load(f)
            try:
                tasks[key] = Task(_Course(key[0]), key[1], content, fs, _Plugins(), types)
            except Exception as e:  # e.g. a match problem without its answer: the client only needs these
                print(
                    json.dumps({"event": "note", "text": f"{key[0]}/{key[1]}: plain task ({e})"}),
                    flush=True,
                )
                tasks[key] = _PlainTask(key[0], key[1], content)

    loop = asyncio.new_event_loop()  # the webapp runs the client's loop in a thread of its own
    asyncio.set_event_loop(loop)
    client = Client(zmq.asyncio.Context(), args.backend, queue_update=3600)
    threading.Thread(target=loop.run_forever, daemon=True).start()
    client.start()
    deadline = time.monotonic() + 60
    while "default" not in client.get_available_environments().get("docker", []):
        if time.monotonic() > deadline:
            print(json.dumps({"event": "error", "text": "no docker/default environment offered"}), flush=True)
            return 1
        time.sleep(0.1)
    lock = threading.Lock()
    left = [len(cases)]
    done = threading.Event()

    def finished(case, started):
        def callback(result, grade, problems, tests, custom, state, archive, stdout, stderr):
            line = {
                "event": "done",
                "ref": case["ref"],
                "seconds": round(time.monotonic() - started, 3),
                "result": list(result),
                "grade": grade,
                "problems": _plain(problems),
                "tests": _plain(tests),
                "custom": _plain(custom),
                "state": state,
                "archive": _members(archive),
                "stdout": stdout,
                "stderr": stderr,
            }
            with lock:
                print(json.dumps(line), flush=True)
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        return callback

    for case in cases:
        task = tasks[(case["course"], case["task"])]
        inputdata = dict(case["inputdata"])
        before = left[0]
        callback = finished(case, time.monotonic())
        job_id = client.new_job(0, task, inputdata, callback, "itx-compare", case.get("debug", False))
        if case.get("kill_after"):
            threading.Timer(case["kill_after"], client.kill_job, [job_id]).start()
        alone = args.sequential or case.get("alone")
        while alone and left[0] == before and time.monotonic() < deadline + args.timeout:
            time.sleep(0.005)
        if args.sequential and args.gap > 0:
            time.sleep(args.gap)
    if not done.wait(args.timeout):
        print(json.dumps({"event": "error", "text": f"{left[0]} cases without an answer"}), flush=True)
    print(json.dumps({"event": "end"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
