"""The backend over real sockets: several clients and agents on a mix of
transports (ZeroMQ over TCP and IPC, TCP and Unix streams), and
``twistd -n inginious-backend`` run as a process and stopped with SIGTERM.

The fake agents and clients here are written with the real transports and
nothing else, so that they check the backend rather than our own agent and
client."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest_twisted
from subprocess_env import child_env
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from zope.interface import implementer

from inginious_tx.backend.core import BackendSettings
from inginious_tx.backend.service import BackendService
from inginious_tx.backend.testing import agent_hello, job_done, new_job
from inginious_tx.interfaces import IMessageSink, IPeer
from inginious_tx.messages import (
    AgentJobStarted,
    BackendGetQueue,
    BackendJobDone,
    BackendJobStarted,
    BackendKillJob,
    BackendNewJob,
    BackendUpdateContainers,
    ClientGetQueue,
    ClientHello,
    Ping,
    Pong,
)
from inginious_tx.transport import connect as connect_any
from inginious_tx.transport.stream import StreamTransport

ROOT = Path(__file__).resolve().parent.parent
_fast_stream = StreamTransport(retry_policy=lambda attempt: 0.05)


def _connect(reactor: Any, endpoint: str, sink: Any) -> Any:
    if endpoint.startswith("zmq:"):
        return connect_any(reactor, endpoint, sink)
    return _fast_stream.connect(reactor, endpoint, sink)


@implementer(IMessageSink)
class NetAgent:
    """A fake agent: says hello, answers pings and (if ``answer``) every job at once."""

    def __init__(
        self, endpoint: str, name: str, slots: int = 2, envs: Tuple[str, ...] = ("default",), answer: bool = True
    ) -> None:
        from twisted.internet import reactor

        self.name = name
        self.slots = slots
        self.envs = envs
        self.answer = answer
        self.pong = True
        self.jobs: List[Tuple[bytes, str]] = []
        self.kills: List[Tuple[bytes, str]] = []
        self.peer: Optional[IPeer] = None
        self.connection = _connect(reactor, endpoint, self)

    def peer_connected(self, peer: IPeer) -> None:
        self.peer = peer
        peer.send(agent_hello(self.name, self.slots, self.envs))

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        pass

    def message_received(self, peer: IPeer, message: Any) -> None:
        if isinstance(message, Ping):
            if self.pong:
                peer.send(Pong())
        elif isinstance(message, BackendNewJob):
            self.jobs.append(message.job_id)
            if self.answer:
                peer.send(AgentJobStarted(message.job_id))
                peer.send(job_done(message.job_id, "success", self.name))
        elif isinstance(message, BackendKillJob):
            self.kills.append(message.job_id)
            peer.send(job_done(message.job_id, "killed", self.name, 0.0))


@implementer(IMessageSink)
class NetClient:
    """A fake client: says hello on every (re)connection, records answers."""

    def __init__(self, endpoint: str, name: str) -> None:
        from twisted.internet import reactor

        self.name = name
        self.environments: Tuple[str, ...] = ()
        self.hellos = 0
        self.results: Dict[str, List[Tuple[str, str]]] = {}
        self.started: List[str] = []
        self.queues: List[BackendGetQueue] = []
        self.peer: Optional[IPeer] = None
        self.connection = _connect(reactor, endpoint, self)

    def peer_connected(self, peer: IPeer) -> None:
        self.peer = peer
        peer.send(ClientHello(self.name))

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        pass

    def message_received(self, peer: IPeer, message: Any) -> None:
        if isinstance(message, BackendUpdateContainers):
            self.hellos += 1
            self.environments = message.available_containers
        elif isinstance(message, BackendJobDone):
            self.results.setdefault(message.job_id, []).append(message.result)
        elif isinstance(message, BackendJobStarted):
            self.started.append(message.job_id)
        elif isinstance(message, BackendGetQueue):
            self.queues.append(message)

    def send(self, message: Any) -> None:
        assert self.peer is not None
        self.peer.send(message)


async def start_backend(closers: list, clients: List[str], agents: List[str], **settings: Any) -> List[str]:
    """A BackendService on real sockets; returns the connect endpoints (clients', then agents')."""
    from twisted.internet import reactor

    defaults = dict(ping_interval=0.05, max_missed_pongs=3)
    defaults.update(settings)
    service = BackendService(reactor, clients, agents, settings=BackendSettings(**defaults), shutdown_grace=0)
    service.startService()
    closers.append(service.stopService)
    listeners = await service.ready
    return [listener.connect_endpoint for listener in listeners]


async def ready_client(endpoint: str, name: str, closers: list, until: Any, env: str = "default") -> NetClient:
    client = NetClient(endpoint, name)
    closers.append(client.connection.stop)
    await until(lambda: env in client.environments, what=f"{name} sees {env}")
    return client


@pytest_twisted.ensureDeferred
async def test_clients_and_agents_over_four_kinds_of_link(short_tmp: str, closers: list, until: Any) -> None:
    """Clients on ZeroMQ/TCP and TCP stream, agents on ZeroMQ/IPC and a Unix socket."""
    c_zmq, c_tcp, a_ipc, a_unix = await start_backend(
        closers,
        ["zmq:tcp://127.0.0.1:*", "tcp:0:interface=127.0.0.1"],
        [f"zmq:ipc://{short_tmp}/agents.ipc", f"unix:{short_tmp}/agents.sock"],
    )
    agents = [NetAgent(a_ipc, "ipc-agent"), NetAgent(a_unix, "unix-agent")]
    for a in agents:
        closers.append(a.connection.stop)
    clients = [
        await ready_client(c_zmq, "zmq-client", closers, until),
        await ready_client(c_tcp, "tcp-client", closers, until),
    ]
    for c in clients:
        for i in range(30):
            c.send(new_job(f"{c.name}-{i}"))
    await until(lambda: sum(len(c.results) for c in clients) == 60, timeout=10, what="60 results")
    for c in clients:
        assert set(c.results) == {f"{c.name}-{i}" for i in range(30)}
        assert all(len(r) == 1 and r[0][0] == "success" for r in c.results.values())
        assert sorted(c.started) == sorted(c.results)
    # both agents worked, each job id names its own client's address
    assert agents[0].jobs and agents[1].jobs
    by_client: Dict[bytes, set] = {}
    for a in agents:
        for address, job_id in a.jobs:
            by_client.setdefault(address, set()).add(job_id.split("-", 2)[0] + "-" + job_id.split("-", 2)[1])
    assert sorted(map(sorted, by_client.values())) == [["tcp-client"], ["zmq-client"]]


@pytest_twisted.ensureDeferred
async def test_an_agent_whose_connection_closes_has_its_job_requeued(short_tmp: str, closers: list, until: Any) -> None:
    [c_ep, a_unix, a_zmq] = await start_backend(
        closers, [f"unix:{short_tmp}/c.sock"], [f"unix:{short_tmp}/a.sock", "zmq:tcp://127.0.0.1:*"]
    )
    holder = NetAgent(a_unix, "holder", answer=False)
    closers.append(holder.connection.stop)
    client = await ready_client(c_ep, "client", closers, until)
    client.send(new_job("j"))
    await until(lambda: holder.jobs, what="holder got the job")
    spare = NetAgent(a_zmq, "spare")
    closers.append(spare.connection.stop)
    client.send(ClientGetQueue())  # a round trip, so that the spare is known to be registered
    await until(lambda: client.queues, what="queue snapshot")
    await holder.connection.stop()
    await until(lambda: "j" in client.results, what="result after re-queue")
    assert client.results == {"j": [("success", "spare")]}


@pytest_twisted.ensureDeferred
async def test_a_silent_zmq_agent_is_dropped_and_its_late_answer_ignored(
    short_tmp: str, closers: list, until: Any, log_events: Any
) -> None:
    [c_ep, a_zmq, a_tcp] = await start_backend(
        closers, ["zmq:tcp://127.0.0.1:*"], ["zmq:tcp://127.0.0.1:*", "tcp:0:interface=127.0.0.1"]
    )
    mute = NetAgent(a_zmq, "mute", answer=False)
    closers.append(mute.connection.stop)
    client = await ready_client(c_ep, "client", closers, until)
    client.send(new_job("j"))
    await until(lambda: mute.jobs, what="mute got the job")
    mute.pong = False
    await until(lambda: log_events.has("mute", "unanswered"), what="mute dropped")
    await until(lambda: client.environments == (), what="environment gone")
    helper = NetAgent(a_tcp, "helper")
    closers.append(helper.connection.stop)
    await until(lambda: "j" in client.results, what="result from the helper")
    assert client.results == {"j": [("success", "helper")]}
    mute.peer.send(job_done(mute.jobs[0], "success", "too late"))  # type: ignore[union-attr]
    await until(lambda: log_events.has("not a registered agent"), what="late answer dropped")
    assert client.results == {"j": [("success", "helper")]}


@pytest_twisted.ensureDeferred
async def test_a_stream_client_that_leaves_has_its_running_job_killed(
    short_tmp: str, closers: list, until: Any
) -> None:
    [c_tcp, c_zmq, a_ep] = await start_backend(
        closers, ["tcp:0:interface=127.0.0.1", "zmq:tcp://127.0.0.1:*"], [f"zmq:ipc://{short_tmp}/a.ipc"]
    )
    agent = NetAgent(a_ep, "agent", slots=1, answer=False)
    closers.append(agent.connection.stop)
    leaver = await ready_client(c_tcp, "leaver", closers, until)
    stayer = await ready_client(c_zmq, "stayer", closers, until)
    leaver.send(new_job("doomed"))
    await until(lambda: agent.jobs, what="job running")
    agent.answer = True
    stayer.send(new_job("next"))
    await leaver.connection.stop()
    await until(lambda: agent.kills, what="kill sent")
    assert agent.kills[0][1] == "doomed"
    # the killed job's answer is dropped; its slot goes to the other client's job
    await until(lambda: "next" in stayer.results, what="next job done")
    assert stayer.results == {"next": [("success", "agent")]}
    assert leaver.results == {}


# -- twistd ------------------------------------------------------------------------------------


class _Process(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback((reason.value.exitCode, reason.value.signal))


def _twistd(*args: str) -> _Process:
    from twisted.internet import reactor

    env = child_env()
    code = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    process = _Process()
    process.transport = reactor.spawnProcess(  # type: ignore[assignment]
        process, sys.executable, [sys.executable, "-c", code, *args], env=env, path=str(ROOT)
    )
    return process


@pytest_twisted.ensureDeferred
async def test_twistd_help_lists_options_and_policies(within: Any) -> None:
    process = _twistd("-n", "inginious-backend", "--help")
    code, _ = await within(process.ended, 20)
    text = process.output.decode()
    assert code == 0, text
    for option in ("--clients", "--agents", "--policy", "--max-retries", "--ping-interval", "--max-frame"):
        assert option in text
    assert "shortest-first" in text


@pytest_twisted.ensureDeferred
async def test_twistd_backend_answers_waiting_jobs_on_sigterm(
    short_tmp: str, closers: list, until: Any, within: Any
) -> None:
    process = _twistd(
        "-n",
        "--pidfile=",
        "--logfile=-",
        "inginious-backend",
        "--clients",
        f"unix:{short_tmp}/clients.sock",
        "--agents",
        f"zmq:ipc://{short_tmp}/agents.ipc",
        "--policy",
        "fair",
    )

    def kill() -> Any:
        if process.transport.pid is not None:  # type: ignore[attr-defined]
            process.transport.signalProcess("KILL")  # type: ignore[attr-defined]

    closers.append(kill)
    # the client retries until the backend listens, then says hello
    client = NetClient(f"unix:{short_tmp}/clients.sock", "client")
    closers.append(client.connection.stop)
    await until(lambda: client.hellos, timeout=20, what="backend up")
    client.send(new_job("waits", environment="nobody-offers-this"))
    client.send(ClientGetQueue())
    await until(lambda: client.queues, what="queue snapshot")
    assert [w[0] for w in client.queues[0].jobs_waiting] == ["waits"]

    process.transport.signalProcess("TERM")  # type: ignore[attr-defined]
    await until(lambda: client.results, timeout=10, what="shutdown answer")
    assert client.results == {"waits": [("crash", "backend shutting down")]}
    # twistd ends a run stopped by a signal by dying of that same signal
    ended = await within(process.ended, 10)
    assert ended in ((0, None), (None, signal.SIGTERM)), process.output.decode()
    assert b"Traceback" not in process.output
    assert b"backend shutting down" in process.output


def test_plugin_dropin_names_the_tap_module() -> None:
    text = (ROOT / "plugins" / "twisted" / "plugins" / "inginious_tx_services.py").read_text()
    assert '"inginious_tx.backend.tap"' in text and '"inginious-backend"' in text
