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
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface.verify import verifyObject

from .. import transport
from ..interfaces import IListener, IMessageSink, ISchedulingPolicy
from ..transport import Limits
from .core import Backend, BackendSettings
from .policies import DEFAULT_POLICY, load_policy

__all__ = ["BackendService", "ListenFunction"]

_DEFAULT_SETTINGS = BackendSettings()
_DEFAULT_LIMITS = Limits()

#: ``listen(reactor, endpoint, sink, limits) -> Deferred[IListener]``, like
#: :func:`inginious_tx.transport.listen` (the default).
ListenFunction = Callable[[Any, str, IMessageSink, Limits], Deferred]


def stop_reactor(reactor: Any) -> None:
    """Stop ``reactor`` unless it is stopping already (a service that cannot
    listen under twistd ends the process rather than run half-deaf)."""
    try:
        reactor.stop()
    except Exception:  # already stopping
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
        reactor: Any,
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
        transport.check_separate_credentials(client_endpoints, agent_endpoints)  # see docs/security.rst
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
        #: Every listener that is up, clients' first.
        self.listeners: List[IListener] = []
        #: Fires with :attr:`listeners` once every endpoint listens (fails
        #: if one cannot); a new Deferred each time the service starts.
        self.ready: Deferred = Deferred()

    def startService(self) -> None:
        super().startService()
        self.backend.start()
        client_sink = self.backend.client_sink()
        agent_sink = self.backend.agent_sink()
        wanted = [(ep, client_sink) for ep in self.client_endpoints] + [(ep, agent_sink) for ep in self.agent_endpoints]
        attempts = [maybeDeferred(self._listen, self._reactor, ep, sink, self.limits) for ep, sink in wanted]
        ready = self.ready
        if ready.called:
            ready = self.ready = Deferred()
        gathered = gatherResults(attempts, consumeErrors=True)
        gathered.addCallbacks(self._listening, self._not_listening, errbackArgs=(attempts,))
        gathered.chainDeferred(ready)
        ready.addErrback(self._failed)

    def _listening(self, listeners: List[IListener]) -> List[IListener]:
        self.listeners = list(listeners)
        self.log.info(
            "backend ready: clients on {clients}, agents on {agents}, policy {policy}",
            clients=self.client_endpoints,
            agents=self.agent_endpoints,
            policy=getattr(self.backend.policy, "name", type(self.backend.policy).__name__),
        )
        return self.listeners

    def _not_listening(self, failure: Any, attempts: List[Deferred]) -> Any:
        # Close whatever did start, then pass the first error on.
        for attempt in attempts:
            attempt.addCallback(lambda listener: listener.stop())
            attempt.addErrback(lambda _: None)
        return failure.value.subFailure

    def _failed(self, failure: Any) -> Any:
        self.log.critical("backend cannot listen: {error}", error=failure.getErrorMessage())
        if self._fatal:
            self._reactor.callWhenRunning(stop_reactor, self._reactor)
        return failure

    def stopService(self) -> Deferred:
        """Answer every job, give the answers time to leave, stop listening."""
        super().stopService()
        self.backend.shutdown()
        listeners, self.listeners = self.listeners, []
        if not listeners:
            return succeed(None)

        def stop(_: Any = None) -> Deferred:
            return gatherResults([maybeDeferred(listener.stop) for listener in listeners], consumeErrors=True).addBoth(
                lambda _: None
            )

        if self.shutdown_grace > 0:
            return deferLater(self._reactor, self.shutdown_grace, stop)
        return stop()
