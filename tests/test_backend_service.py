"""BackendService and the twistd options, without real sockets (in-memory
transport, fake clock); real sockets and twistd are in
test_backend_integration.py."""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from inginious_tx._twistd import StartGuard
from inginious_tx.backend import tap
from inginious_tx.backend.core import BackendSettings
from inginious_tx.backend.policies import FairPolicy, PriorityPolicy
from inginious_tx.backend.service import BackendService, stop_reactor
from inginious_tx.backend.testing import agent_hello, new_job
from inginious_tx.interfaces import IListener, IMessageSink, IPeer
from inginious_tx.messages import BackendJobDone, BackendUpdateContainers, ClientHello
from inginious_tx.plugin import PluginError
from inginious_tx.testing import MemoryTransport
from inginious_tx.transport import DEFAULT_MAX_FRAME, Limits


@implementer(IMessageSink)
class Sink:
    def __init__(self) -> None:
        self.messages: List[Any] = []

    def peer_connected(self, peer: IPeer) -> None:
        pass

    def peer_disconnected(self, peer: IPeer, reason: str) -> None:
        pass

    def message_received(self, peer: IPeer, message: Any) -> None:
        self.messages.append(message)


@implementer(IReactorCore)
class FakeReactor(Clock):
    """A clock that also records callWhenRunning and stop (the parts of IReactorCore used)."""

    def __init__(self) -> None:
        super().__init__()
        self.when_running: List[Any] = []
        self.stopped = False

    def callWhenRunning(self, f: Any, *a: Any, **kw: Any) -> None:
        self.when_running.append((f, a, kw))

    def stop(self) -> None:
        self.stopped = True


def memory_service(**kwargs: Any) -> Any:
    reactor = FakeReactor()
    mem = MemoryTransport()
    service = BackendService(reactor, ["mem:c1", "mem:c2"], ["mem:agents"], listen=mem.listen, **kwargs)
    return reactor, mem, service


def test_the_service_listens_serves_and_answers_everything_on_stop():
    reactor, mem, service = memory_service(policy="fair", settings=BackendSettings(max_retries=3))
    verifyObject(IService, service)
    assert isinstance(service.backend.policy, FairPolicy)
    assert service.backend.settings.max_retries == 3
    top = MultiService()
    service.setServiceParent(top)
    top.startService()
    ready: List[Any] = []
    service.ready.addCallback(ready.append)
    assert len(ready) == 1 and len(ready[0]) == 3
    for listener in ready[0]:
        verifyObject(IListener, listener)

    # a client on each client endpoint, an agent on the agent endpoint
    sinks = [Sink(), Sink()]
    conns = [mem.connect(None, ep, s) for ep, s in zip(["mem:c1", "mem:c2"], sinks, strict=True)]
    agent_sink = Sink()
    agent = mem.connect(None, "mem:agents", agent_sink)
    mem.pump()
    agent.peer.send(agent_hello("a", 1, ["py"]))
    for i, conn in enumerate(conns):
        conn.peer.send(ClientHello(f"c{i}"))
        conn.peer.send(new_job(f"j{i}", environment="py"))
    mem.pump()
    assert sinks[0].messages[0] == BackendUpdateContainers(("py",))
    assert service.backend.running_count == 1 and service.backend.waiting_count == 1

    stopped: List[Any] = []
    top.stopService().addCallback(stopped.append)
    mem.pump()
    # every job answered at once; the listeners close after the grace period
    results = [m for s in sinks for m in s.messages if isinstance(m, BackendJobDone)]
    assert sorted((m.job_id, m.result) for m in results) == [
        ("j0", ("crash", "backend shutting down")),
        ("j1", ("crash", "backend shutting down")),
    ]
    assert stopped == [] and mem._listeners != {}
    reactor.advance(service.shutdown_grace)
    assert len(stopped) == 1
    assert mem._listeners == {}


def test_a_policy_instance_may_be_given():
    policy = PriorityPolicy()
    _, _, service = memory_service(policy=policy)
    assert service.backend.policy is policy


def test_bad_policies_are_refused():
    with pytest.raises(PluginError) as e:
        memory_service(policy="no-such")
    assert "priority" in str(e.value)
    with pytest.raises(Invalid):
        memory_service(policy=object())


def test_endpoints_are_required():
    with pytest.raises(ValueError):
        BackendService(Clock(), [], ["mem:a"])


def test_a_failure_to_listen_is_reported_and_the_rest_closed():
    reactor = FakeReactor()
    mem = MemoryTransport()

    def listen(r: Any, endpoint: str, sink: Any, limits: Limits) -> Any:
        if endpoint == "mem:bad":
            return fail(ValueError("address in use"))
        return mem.listen(r, endpoint, sink, limits)

    service = BackendService(reactor, ["mem:good"], ["mem:bad"], listen=listen, fatal=True)
    service.startService()
    errors: List[Any] = []
    service.ready.addErrback(errors.append)
    assert len(errors) == 1 and "address in use" in errors[0].getErrorMessage()
    assert mem._listeners == {}  # the one that did start was stopped
    assert service.listeners == []
    # fatal: the reactor is stopped once it runs
    assert len(reactor.when_running) == 1
    f, a, kw = reactor.when_running[0]
    f(*a, **kw)
    assert reactor.stopped


def test_not_fatal_leaves_the_reactor_alone():
    reactor = FakeReactor()
    service = BackendService(reactor, ["mem:x"], ["mem:y"], listen=lambda *a: fail(ValueError("no")))
    service.startService()
    service.ready.addErrback(lambda f: None)
    assert reactor.when_running == []
    assert service.stopService().called  # nothing to stop


def test_stop_without_grace_is_immediate():
    reactor, mem, service = memory_service(shutdown_grace=0)
    service.startService()
    assert service.stopService().called
    assert mem._listeners == {}


def test_listen_receives_the_limits():
    seen: List[Any] = []

    def listen(r: Any, endpoint: str, sink: Any, limits: Limits) -> Any:
        seen.append((endpoint, limits))
        return succeed(None)

    limits = Limits(max_frame=1234)
    service = BackendService(Clock(), ["a"], ["b", "c"], listen=listen, limits=limits)
    service.startService()
    assert seen == [("a", limits), ("b", limits), ("c", limits)]


# -- twistd options ---------------------------------------------------------------


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def test_options_defaults():
    o = parse()
    assert o["clients"] == [tap.DEFAULT_CLIENTS] and o["agents"] == []  # no agent endpoint: an embedded agent
    assert o["policy"] == "priority"
    s = o["settings"]
    assert (s.max_retries, s.ping_interval, s.max_missed_pongs) == (1, 1.0, 3)
    assert s.max_waiting == BackendSettings().max_waiting and s.max_waiting_per_client is None
    assert o["limits"].max_frame == DEFAULT_MAX_FRAME


def test_options_repeatable_endpoints_replace_the_defaults():
    o = parse("--clients", "tcp:2000", "-c", "unix:/tmp/c.sock", "--agents", "zmq:ipc:///tmp/a")
    assert o["clients"] == ["tcp:2000", "unix:/tmp/c.sock"]
    assert o["agents"] == ["zmq:ipc:///tmp/a"]


def test_options_values():
    o = parse(
        "--policy=fair",
        "--max-retries=0",
        "--ping-interval=0.5",
        "--max-missed-pongs=5",
        "--max-waiting=none",
        "--max-waiting-per-client=10",
        "--max-frame=1000",
        "--client-silence-timeout=12",
        "--client-idle-timeout=60",
    )
    s = o["settings"]
    assert o["policy"] == "fair"
    assert s == BackendSettings(
        max_retries=0,
        ping_interval=0.5,
        max_missed_pongs=5,
        max_waiting=None,
        max_waiting_per_client=10,
        client_silence_timeout=12,
        client_idle_timeout=60,
    )
    assert o["limits"].max_frame == 1000


@pytest.mark.parametrize(
    "argv",
    [
        ["--policy", "no-such-policy"],
        ["--max-retries", "-1"],
        ["--ping-interval", "0"],
        ["--max-missed-pongs", "0"],
        ["--max-waiting", "lots"],
        ["--max-frame", "0"],
    ],
)
def test_bad_options_are_usage_errors(argv):
    with pytest.raises(usage.UsageError):
        parse(*argv)


def test_unknown_policy_error_lists_the_policies():
    with pytest.raises(usage.UsageError) as e:
        parse("--policy", "nope")
    assert "fair" in str(e.value) and "shortest-first" in str(e.value)


def test_help_explains_every_option_and_lists_policies():
    text = str(tap.Options())
    for option in (
        "--clients",
        "--agents",
        "--policy",
        "--list-policies",
        "--max-retries",
        "--ping-interval",
        "--max-missed-pongs",
        "--max-waiting",
        "--max-waiting-per-client",
        "--max-frame",
    ):
        assert option in text
    assert "priority" in text and "fair" in text and "shortest-first" in text


def test_list_policies(capsys):
    with pytest.raises(SystemExit) as e:
        parse("--list-policies")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "priority (default):" in out and "fair:" in out and "shortest-first:" in out


def test_make_service():
    o = parse("--clients", "tcp:2000", "--agents", "unix:/run/a.sock", "--policy", "shortest-first",
              "--max-retries", "4")  # fmt: skip
    top = tap.makeService(o)
    assert isinstance(top, StartGuard)  # a failure to start ends twistd with a non-zero status
    (service,) = list(top)
    assert isinstance(service, BackendService)
    assert service.client_endpoints == ["tcp:2000"] and service.agent_endpoints == ["unix:/run/a.sock"]
    assert service.backend.policy.name == "shortest-first"
    assert service.backend.settings.max_retries == 4


def test_public_names_of_the_backend_package():
    import inginious_tx.backend as backend

    assert sorted(backend.__all__) == sorted(
        [
            "Backend",
            "BackendSettings",
            "BackendService",
            "Job",
            "ClientState",
            "AgentState",
            "DEFAULT_POLICY",
            "PriorityPolicy",
            "FairPolicy",
            "ShortestFirstPolicy",
            "available_policies",
            "load_policy",
        ]
    )
    for name in backend.__all__:
        assert getattr(backend, name) is not None


def test_stop_before_listening_completes_stops_the_late_listeners():
    reactor = FakeReactor()
    mem = MemoryTransport()
    pending: List[Any] = []

    def listen(r: Any, endpoint: str, sink: Any, limits: Limits) -> Any:
        d: Deferred = Deferred()
        pending.append((d, endpoint, sink))
        return d

    service = BackendService(reactor, ["mem:c"], ["mem:a"], listen=listen, shutdown_grace=0)
    service.startService()
    stopped = service.stopService()
    assert not stopped.called  # waits for the endpoints still coming up
    for d, endpoint, sink in pending:
        d.callback(mem.listen(reactor, endpoint, sink).result)
    assert stopped.called
    assert mem._listeners == {}  # both came up after the stop, and both were stopped
    assert service.listeners == []


def test_a_failure_nobody_waits_for_is_logged_once(log_events: Any):
    # A failed Deferred nobody consumes is logged again ("Unhandled error in
    # Deferred") when collected: the service must not keep one.
    reactor = FakeReactor()
    service = BackendService(reactor, ["mem:x"], ["mem:y"], listen=lambda *a: fail(ValueError("in use")))
    service.startService()
    assert log_events.has("backend cannot listen", "in use")
    unconsumed = [
        name for name, value in vars(service).items()
        if isinstance(value, Deferred) and value.called and isinstance(value.result, Failure)
    ]  # fmt: skip
    assert unconsumed == []
    # Whoever waits still gets the failure, each their own.
    errors: List[Any] = []
    service.ready.addErrback(errors.append)
    service.ready.addErrback(errors.append)
    assert len(errors) == 2 and all(e.check(ValueError) for e in errors)


def test_stop_reactor_only_ignores_a_reactor_that_is_not_running():
    class Stopping:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def stop(self) -> None:
            raise self.error

    stop_reactor(Stopping(ReactorNotRunning()))  # type: ignore[arg-type]
    with pytest.raises(ZeroDivisionError):
        stop_reactor(Stopping(ZeroDivisionError()))  # type: ignore[arg-type]
