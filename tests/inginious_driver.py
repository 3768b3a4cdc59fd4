"""Runs a real INGInious peer (client, agent or backend), 0.6 or 0.9.x, driven
by JSON lines.

This file runs *inside* an INGInious virtualenv (see .ci/setup-inginious.sh),
never in the test process: it imports ``inginious`` and nothing of ours.
``tests/inginious_support.py`` starts it and talks to it::

    python inginious_driver.py client  --backend tcp://127.0.0.1:2000
    python inginious_driver.py agent   --backend tcp://127.0.0.1:2001 --name a1 --slots 2 --env docker/default
    python inginious_driver.py backend --clients tcp://127.0.0.1:2000 --agents tcp://127.0.0.1:2001

Commands come on stdin, one JSON object a line (``{"op": ...}``); events go to
stdout, one JSON object a line (``{"event": ...}``).  Bytes are written
``{"$bytes_hex": "..."}`` both ways; tuples become lists (and a 2-list job id
becomes a tuple again on the way in, for 0.6 agents).

client: ``submit`` (ref, course_id, task_id, environment_type, environment,
environment_parameters, problems, inputdata, priority, debug, launcher; 0.6
reads limits from ``environment_parameters`` as INGInious' own migration
does), ``kill`` (job_id), ``queue``; events ``environments``, ``submitted``,
``started``, ``ssh``, ``done``, ``queue``.

agent: announces ``--env`` (``type/name`` in 0.9, ``name`` in 0.6) and runs
each job as ``inputdata["itx"]`` says: ``succeed`` (default), ``fail``,
``hold`` (until killed or ``finish``ed), ``ssh`` (send ssh info, then hold);
commands ``finish`` (job_id, result, text, grade); events ``job``, ``kill``.
"""

import argparse
import asyncio
import json
import logging
import sys
import threading

import inginious
import zmq
import zmq.asyncio

V09 = not inginious.__version__.startswith("0.6")
_out_lock = threading.Lock()


def to_json(value):
    if isinstance(value, bytes):
        return {"$bytes_hex": value.hex()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def from_json(value):
    if isinstance(value, dict):
        if set(value) == {"$bytes_hex"}:
            return bytes.fromhex(value["$bytes_hex"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(from_json(v) for v in value)
    return value


def emit(event, **fields):
    line = json.dumps(to_json(dict(event=event, **fields)))
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def read_commands(loop, handle):
    """Hand every stdin line to ``handle`` in the loop; exit when stdin closes."""

    def reader():
        for line in sys.stdin:
            line = line.strip()
            if line:
                loop.call_soon_threadsafe(handle, from_json(json.loads(line)))
        loop.call_soon_threadsafe(loop.stop)

    threading.Thread(target=reader, daemon=True).start()


def message_fields(message):
    return {k: v for k, v in vars(message).items() if k != "type"}


# -- client ------------------------------------------------------------------


class FakeTask:
    """What the INGInious clients read of a task, from a ``submit`` command."""

    def __init__(self, cmd):
        self.cmd = cmd
        self.params = cmd.get("environment_parameters") or {}

    def get_course_id(self):
        return self.cmd.get("course_id", "course")

    def get_id(self):
        return self.cmd.get("task_id", "task")

    # 0.9
    def get_environment_type(self):
        return self.cmd.get("environment_type", "docker")

    def get_environment_id(self):
        return self.cmd.get("environment", "default")

    def get_environment_parameters(self):
        return self.params

    def get_problems_dict(self):
        return self.cmd.get("problems") or {}

    # 0.6
    def get_environment(self):
        return self.cmd.get("environment", "default")

    def allow_network_access_grading(self):
        return bool(self.params.get("network_grading", False))

    def get_custom_run_cmd(self):
        return self.params.get("run_cmd") or None

    def get_limits(self):
        return self.params.get("limits") or {}


def run_client(args, loop):
    from inginious.client.client import Client
    from inginious.common.messages import ClientGetQueue

    class DrivenClient(Client):
        async def _handle_job_queue_update(self, message):
            await super()._handle_job_queue_update(message)
            emit("queue", running=message.jobs_running, waiting=message.jobs_waiting)

        async def _handle_job_started(self, message, **kwargs):
            emit("started", job_id=message.job_id)

        if V09:

            async def _handle_update_environments(self, message):
                await super()._handle_update_environments(message)
                emit("environments", value=message.available_environments)

        else:

            async def _handle_update_containers(self, message):
                await super()._handle_update_containers(message)
                emit("environments", value=message.available_containers)

    client = DrivenClient(zmq.asyncio.Context(), args.backend, queue_update=3600)

    def handle(cmd):
        op = cmd["op"]
        if op == "submit":
            ref = cmd.get("ref")

            def done(*result):
                names = ("result", "grade", "problems", "tests", "custom", "state", "archive", "stdout", "stderr")
                emit("done", ref=ref, **dict(zip(names, result, strict=False)))

            def ssh(*info):
                emit("ssh", ref=ref, info=info)

            job_id = client.new_job(
                cmd.get("priority", 0),
                FakeTask(cmd),
                dict(cmd.get("inputdata") or {}),
                done,
                cmd.get("launcher", "itx-test"),
                cmd.get("debug", False),
                ssh if cmd.get("debug") == "ssh" else None,
            )
            emit("submitted", ref=ref, job_id=job_id)
        elif op == "kill":
            client.kill_job(cmd["job_id"])
        elif op == "queue":
            asyncio.ensure_future(client._simple_send(ClientGetQueue()))
        elif op == "exit":
            loop.stop()

    read_commands(loop, handle)
    client.start()
    emit("running", version=inginious.__version__)
    loop.run_forever()


# -- agent -------------------------------------------------------------------


def run_agent(args, loop):
    from inginious.agent import Agent

    environments = {}
    for spec in args.env:
        if V09:
            env_type, _, name = spec.partition("/")
            environments.setdefault(env_type, {})[name] = {
                "id": "itx-" + name,
                "created": 0,
                "ports": [],
                "runtime": "runc",
            }
        else:
            environments[spec] = {"id": "itx-" + spec, "created": 0, "ports": []}

    class AnyTask:
        """A task filesystem where every task exists."""

        def from_subfolder(self, _name):
            return self

        def exists(self):
            return True

    class DrivenAgent(Agent):
        held = {}

        @property
        def environments(self):
            return environments

        async def new_job(self, message):
            emit("job", job_id=message.job_id, fields=message_fields(message))
            action = message.inputdata.get("itx", "succeed")
            state = message.inputdata.get("@state", "")
            if action in ("hold", "ssh"):
                self.held[message.job_id] = state
                if action == "ssh":
                    if V09:
                        await self.send_ssh_job_info(message.job_id, "127.0.0.1", 2222, "worker", "pw")
                    else:
                        await self.send_ssh_job_info(message.job_id, "127.0.0.1", 2222, "pw")
                return
            result = "success" if action == "succeed" else "failed"
            await self.send_job_result(
                message.job_id, result, text="from " + args.name, problems={"q1": (result, "q1 text")},
                tests={"t": 1}, custom={"agent": args.name}, state=state, stdout="out", stderr="",
            )  # fmt: skip

        async def kill_job(self, message):
            emit("kill", job_id=message.job_id, fields=message_fields(message))
            if message.job_id in self.held:
                state = self.held.pop(message.job_id)
                await self.send_job_result(message.job_id, "killed", "killed", state=getattr(message, "state", state))

        async def finish(self, cmd):
            job_id = cmd["job_id"]
            state = self.held.pop(job_id, "")
            await self.send_job_result(
                job_id, cmd.get("result", "success"), text=cmd.get("text", ""), grade=cmd.get("grade"), state=state
            )

    agent = DrivenAgent(zmq.asyncio.Context(), args.backend, args.name, args.slots, AnyTask())

    def handle(cmd):
        if cmd["op"] == "finish":
            asyncio.ensure_future(agent.finish(cmd))
        elif cmd["op"] == "exit":
            loop.stop()

    read_commands(loop, handle)
    task = loop.create_task(agent.run())
    task.add_done_callback(lambda t: (emit("stopped"), loop.stop()))
    emit("running", version=inginious.__version__)
    loop.run_forever()


# -- backend -----------------------------------------------------------------


def run_backend(args, loop):
    from inginious.backend.backend import Backend

    backend = Backend(zmq.asyncio.Context(), args.agents, args.clients)

    def handle(cmd):
        if cmd["op"] == "exit":
            loop.stop()

    read_commands(loop, handle)
    task = loop.create_task(backend.run())
    task.add_done_callback(lambda t: (emit("stopped"), loop.stop()))
    emit("running", version=inginious.__version__)
    loop.run_forever()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="role", required=True)
    c = sub.add_parser("client")
    c.add_argument("--backend", required=True)
    a = sub.add_parser("agent")
    a.add_argument("--backend", required=True)
    a.add_argument("--name", default="itx-real-agent")
    a.add_argument("--slots", type=int, default=2)
    a.add_argument("--env", action="append", default=[])
    b = sub.add_parser("backend")
    b.add_argument("--clients", required=True)
    b.add_argument("--agents", required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    {"client": run_client, "agent": run_agent, "backend": run_backend}[args.role](args, loop)


if __name__ == "__main__":
    main()
