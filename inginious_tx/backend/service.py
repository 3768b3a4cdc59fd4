"""The backend as a Twisted service, embeddable in any ``MultiService``.

:class:`BackendService` owns one :class:`~inginious_tx.backend.core.Backend`
and listens for clients and agents on any number of endpoint strings, each
through whichever transport plugin understands it (ZeroMQ, TCP, Unix
sockets, TLS, or a third-party transport)::

    from twisted.application.service import MultiService
    from inginious_tx.backend import BackendService, BackendSettings

    top = MultiService()
    BackendService(reactor, ["zmq:tcp://127.0.0.1:2000", "unix:/run/itx/clients.sock"],
                   ["zmq:tcp://127.0.0.1:2001"], policy="fair",
                   settings=BackendSettings(max_retries=2)).setServiceParent(top)
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Union

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from .. import transport
from .._reactor import CommonReactor
from .._ready import ReadyResult
from ..interfaces import IListener, IMessageSink, ISchedulingPolicy
from ..transport import Limits
from .core import Backend, BackendSettings
from .memory import MemoryTrimmer
from .policies import DEFAULT_POLICY, load_policy
from .roles import check_separate_credentials

__all__ = ["BackendService", "ListenFunction"]

_DEFAULT_SETTINGS = BackendSettings()
_DEFAULT_LIMITS = Limits()

#: ``listen(reactor, endpoint, sink, limits) -> Deferred[IListener]``, like
#: :func:`inginious_tx.transport.listen` (the default).
ListenFunction = Callable[[CommonReactor, str, IMessageSink, Limits], Deferred]


def stop_reactor(reactor: IReactorCore) -> None:
    """Stop ``reactor`` unless it is stopping already (a service that cannot
    listen under twistd ends the process rather than run half-deaf)."""
    try:
        reactor.stop()
    except ReactorNotRunning:  # already stopping
        pass


class BackendService(Service):
    """A backend listening on client and agent endpoints.

    ``policy`` is a policy name (loaded from the ``inginious_tx.policies``
    entry points) or an :class:`ISchedulingPolicy` provider.  ``listen``
    replaces the transport lookup (tests use an in-memory transport).
    ``shutdown_grace`` is how long, after every job has been answered on
    stop, the listeners stay open so that the answers leave (ZeroMQ sockets
    are closed without lingering, and stream listeners abort their
    connections).  With ``fatal``, a failure to listen stops the reactor
    (what ``twistd`` wants); otherwise it is only logged and :attr:`ready`
    fails.
    """

    name = "inginious-backend"  # type: ignore[assignment]  # Twisted's Service.name is an untyped None
    log = Logger()

    def __init__(
        self,
        reactor: CommonReactor,
        client_endpoints: Sequence[str],
        agent_endpoints: Sequence[str],
        policy: Union[str, ISchedulingPolicy] = DEFAULT_POLICY,
        settings: BackendSettings = _DEFAULT_SETTINGS,
        limits: Limits = _DEFAULT_LIMITS,
        listen: Optional[ListenFunction] = None,
        shutdown_grace: float = 0.5,
        fatal: bool = False,
    ) -> None:
        if not client_endpoints:
            raise ValueError("a backend needs at least one client endpoint")  # agents: none for an embedded one
        check_separate_credentials(client_endpoints, agent_endpoints)  # see docs/security.rst
        if isinstance(policy, str):
            policy = load_policy(policy)
        else:
            verifyObject(ISchedulingPolicy, policy)
        self._reactor = reactor
        self.client_endpoints = list(client_endpoints)
        self.agent_endpoints = list(agent_endpoints)
        self.limits = limits
        self.shutdown_grace = shutdown_grace
        self._listen = listen or transport.listen
        self._fatal = fatal
        self.backend = Backend(reactor, policy, settings)
        self.backend.add_observer(MemoryTrimmer(reactor, self.backend))  # memory back to the system after departures
        #: Every listener that is up, clients' first (once all of them are).
        self.listeners: List[IListener] = []
        #: Every listener of the current start that came up and is not stopped.
        self._up: List[IListener] = []
        self._attempts: List[Deferred] = []
        self._ready = ReadyResult()

    @property
    def ready(self) -> Deferred:
        """Fires with :attr:`listeners` once every endpoint listens, or fails
        if one cannot (for the current start; a new Deferred at each access,
        so a failure nobody waits for is only logged once, by the service)."""
        return self._ready.wait()

    def startService(self) -> None:
        super().startService()
        self.backend.start()
        client_sink = self.backend.client_sink()
        agent_sink = self.backend.agent_sink()
        wanted = [(ep, client_sink) for ep in self.client_endpoints] + [(ep, agent_sink) for ep in self.agent_endpoints]
        self._ready.reset()
        up: List[IListener] = []
        self._up = up
        self._attempts = [
            maybeDeferred(self._listen, self._reactor, ep, sink, self._limits_for(sink, client_sink))
            .addCallback(self._came_up, up)
            for ep, sink in wanted
        ]
        gathered = gatherResults(self._attempts, consumeErrors=True)
        gathered.addCallbacks(self._listening, self._not_listening)
        gathered.addErrback(self._failed)
        gathered.addBoth(self._ready.fire)

    def _limits_for(self, sink: Any, client_sink: Any) -> Limits:
        """A client endpoint's frames are bounded by the largest job accepted (transport.Limits.for_clients)."""
        return self.limits.for_clients() if sink is client_sink else self.limits

    def _came_up(self, listener: IListener, up: List[IListener]) -> IListener:
        # Whatever comes up is stopped by stopService, or once every attempt
        # has settled if another endpoint failed: even when it comes up after.
        up.append(listener)
        return listener

    def _settled(self) -> Deferred:
        """Fires once every listen attempt of the current start has succeeded or failed."""
        return DeferredList(self._attempts, consumeErrors=True)

    def _listening(self, listeners: List[IListener]) -> List[IListener]:
        if not self.running:  # stopped meanwhile: stopService stops them
            return list(listeners)
        self.listeners = list(listeners)
        self.log.info(
            "backend ready: clients on {clients}, agents on {agents}, policy {policy}",
            clients=self.client_endpoints,
            agents=self.agent_endpoints,
            policy=getattr(self.backend.policy, "name", type(self.backend.policy).__name__),
        )
        return self.listeners

    def _not_listening(self, failure: Failure) -> Failure:
        # Close whatever did start (or will), then pass the first error on.
        self._settled().addCallback(lambda _: self._stop_listeners(self._take_listeners()))
        first: Failure = failure.value.subFailure
        return first

    def _failed(self, failure: Failure) -> Failure:
        self.log.critical("backend cannot listen: {error}", error=failure.getErrorMessage())
        core = IReactorCore(self._reactor, None)
        if self._fatal and core is not None:
            core.callWhenRunning(stop_reactor, core)
        return failure

    def _take_listeners(self) -> List[IListener]:
        """The listeners of this start, which the caller stops."""
        listeners, self._up = self._up, []
        self.listeners = []
        return listeners

    def _stop_listeners(self, listeners: List[IListener]) -> Deferred:
        stops = [maybeDeferred(listener.stop) for listener in listeners]
        return gatherResults(stops, consumeErrors=True).addBoth(lambda _: None)

    def stopService(self) -> Deferred:
        """Answer every job, give the answers time to leave, stop listening
        (also on the endpoints that were still coming up)."""
        super().stopService()
        self.backend.shutdown()

        def stop(_: Any) -> Optional[Deferred]:
            listeners = self._take_listeners()
            if not listeners:
                return None
            if self.shutdown_grace > 0:
                return deferLater(self._reactor, self.shutdown_grace, self._stop_listeners, listeners)
            return self._stop_listeners(listeners)

        return self._settled().addCallback(stop)
