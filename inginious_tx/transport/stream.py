"""The stream transport: length-prefixed messages over TCP, Unix sockets and TLS.

Endpoint strings are Twisted's (``tcp:2001``, ``tcp6:...``, ``unix:/path``,
``ssl:...``).  Each message is one frame: a 4-byte big-endian length and the
msgpack payload.  One connection is one peer, and its end is a certain
departure, unlike ZeroMQ.

Whatever a peer sends, the worst outcome is that *its* connection is
aborted with a logged reason: a frame over ``limits.max_frame``, a payload
that does not decode, or (on the sending side) more than
``limits.max_send_buffer`` bytes queued for a peer that does not read.
The exception: on a listener, a payload from an accepted peer that does not
decode is handed to the sink if it is an ``IRejectionObserver`` (the
backend answers a malformed job ``crash``), and the connection goes on.

A listener treats a new connection as a stranger until the role accepts
its hello (:meth:`StreamPeer.accepted`): until then its frames may be at
most ``limits.max_hello_frame`` bytes, it must be accepted within
``limits.hello_timeout`` seconds, and at most ``limits.max_pending`` such
connections (``limits.max_connections`` in all) are kept: further ones are
closed as soon as they are made.  So what strangers can make the backend
hold is bounded by ``max_pending * max_hello_frame`` bytes, whoever they are.

Peers that said hello may send frames up to ``limits.max_frame``; the bytes
of frames received in part are counted across every connection of the
listeners that share a :class:`PartialFrameBudget` (those of one transport
with the same ``limits.max_partial_bytes``), so many connections each
sending a large frame slowly cannot add up to ``max_connections * max_frame``.
When a frame would take the total over the budget, the connections whose
partial frames started first are aborted (with a log line) until it fits:
a peer that fills the budget and stalls loses its own connections, not the
next honest frame.  And a listener's connection must complete a frame
within ``limits.partial_frame_timeout`` seconds of its first byte, so a
stalled frame is freed even when nobody needs the room.
"""

from __future__ import annotations

import itertools
import random
import re
import struct
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from .._reactor import CommonReactor
from ..interfaces import (
    IConnection,
    IEndpointCheck,
    IListener,
    IMessageSink,
    IPeer,
    IRejectionObserver,
    ITransport,
)
from ..messages import MessageError, load_any
from . import Limits, tls

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConsumer, ITCPTransport

    class _IConnected(ITCPTransport, IConsumer):
        """For the type checker: what a :class:`MessageProtocol`'s transport is.

        TCP, UNIX and TLS connections all have ITCPTransport's methods and
        are consumers; Twisted only promises an optional ITransport.
        """


__all__ = [
    "StreamTransport",
    "StreamListener",
    "StreamConnection",
    "StreamPeer",
    "StreamServerPeer",
    "MessageProtocol",
    "PartialFrameBudget",
    "IPartialHolder",
    "default_retry_policy",
]

log = Logger()
_DEFAULT_LIMITS = Limits()

PREFIXES = ("tcp:", "tcp6:", "unix:", "ssl:")
#: Seconds :meth:`StreamConnection.stop` lets a graceful close flush before aborting.
STOP_GRACE = 5.0
#: Connections refused for being over a listener's caps are logged at most once per this many seconds.
REFUSAL_LOG_INTERVAL = 10.0

_HEADER = struct.Struct(">I")
_pack = _HEADER.pack
_unpack_from = _HEADER.unpack_from
_MAX_FRAME_FIELD = 0xFFFFFFFF
_load = load_any
_ids = itertools.count(1)
_UNESCAPED_COLON = re.compile(r"(?<!\\):")


def default_retry_policy() -> Callable[[int], float]:
    """Reconnect after 0.3 s, then back off by 1.5 up to 10 s, with up to 0.3 s of jitter."""
    return backoffPolicy(initialDelay=0.2, maxDelay=10.0, factor=1.5, jitter=lambda: random.random() * 0.3)


def listening_endpoint(endpoint: str) -> str:
    """``endpoint`` with ``interface=`` set to loopback when a TCP/TLS string names none.

    Listening on every interface must be asked for (``interface=0.0.0.0``).
    """
    kind, _, rest = endpoint.partition(":")
    if kind not in ("tcp", "tcp6", "ssl"):
        return endpoint
    if any(arg.startswith("interface=") for arg in _UNESCAPED_COLON.split(rest)):
        return endpoint
    loopback = r"\:\:1" if kind == "tcp6" else "127.0.0.1"
    log.info(
        "{endpoint} names no interface: listening on {loopback} only (add :interface=0.0.0.0 to listen on all)",
        endpoint=endpoint,
        loopback=loopback.replace("\\", ""),
    )
    return f"{endpoint}:interface={loopback}"


class IPartialHolder(Interface):
    """A connection holding a frame received in part, as a :class:`PartialFrameBudget` sees it."""

    def evicted(limit: int) -> None:
        """Its partial frame was dropped to make room (the budget has already uncounted it): close."""


class PartialFrameBudget:
    """The bytes of incoming frames received in part, summed over many connections, and their bound.

    Holders are kept in the order their partial frames started.  When a
    frame needs room, the oldest holders are evicted first: the one that
    fills the budget and stalls pays, and a newcomer's frame (an honest
    client's job arriving at full speed) gets through unless the hostile
    side can re-send the whole budget while it is in flight.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: Bytes of partial frames held now.
        self.used = 0
        #: Frames refused: larger than the whole budget, or their holder was the oldest (tests, metrics).
        self.exceeded = 0
        #: Holders evicted to make room for another's frame (tests, metrics).
        self.evictions = 0
        self._held: Dict[Any, int] = {}  # holder -> bytes, in the order their frames started

    def take(self, holder: Any, n: int) -> bool:
        """Count ``n`` more bytes for ``holder``, evicting the oldest other holders if needed.

        False (and nothing counted) if ``holder`` would hold more than the
        whole budget, or is itself the oldest holder when room is needed.
        """
        held = self._held.get(holder, 0)
        if held + n > self.limit:
            self.exceeded += 1
            return False
        while self.used + n > self.limit:
            oldest = next(iter(self._held))
            if oldest is holder:
                self.exceeded += 1
                return False
            self.used -= self._held.pop(oldest)
            self.evictions += 1
            oldest.evicted(self.limit)
        self._held[holder] = held + n
        self.used += n
        return True

    def give(self, holder: Any) -> None:
        """Uncount everything ``holder`` held (its frame completed, or it closed)."""
        self.used -= self._held.pop(holder, 0)

    def holders(self) -> int:
        """How many connections hold a partial frame now."""
        return len(self._held)


def _reason(failure: Any) -> str:
    if isinstance(failure, Failure):
        return failure.getErrorMessage()
    return str(failure)


@implementer(IPushProducer)
class _SendBufferWatch:
    """Learns from the transport when its send buffer is full and when it drains.

    While it is full, :class:`MessageProtocol` counts the bytes it adds; a
    peer whose buffer never drains is dropped past ``max_send_buffer``.
    """

    def __init__(self, protocol: MessageProtocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol.congested = True

    def resumeProducing(self) -> None:
        self._protocol.congested = False
        self._protocol.queued = 0

    def stopProducing(self) -> None:
        pass


class IProtocolOwner(Interface):
    """What a :class:`MessageProtocol` reports to: the listener that accepted
    the connection, or the connecting side.  It sets the protocol's ``peer``
    and ``sink`` when the connection is made."""

    def connection_made(protocol: MessageProtocol) -> None:
        """``protocol``'s connection is up."""

    def connection_accepted(protocol: MessageProtocol) -> None:
        """The role accepted the hello on ``protocol``: its pre-hello limits are lifted."""

    def connection_lost(protocol: MessageProtocol, reason: str) -> None:
        """``protocol``'s connection (made before) is closed, for ``reason``."""


@implementer(IPartialHolder)
class MessageProtocol(Int32StringReceiver):
    """Frames, decodes and delivers the messages of one connection.

    ``owner`` (an :class:`IProtocolOwner`) is told of the connection's start,
    acceptance and end; it sets ``peer`` and ``sink``.
    Reading is linear in the bytes received even for frames of many
    megabytes (Int32StringReceiver re-joins its whole buffer on every read).
    """

    peer: Any = None
    sink: Any = None
    # Set by makeConnection; every use comes after connectionMade.
    transport: _IConnected

    #: Listening side: an undecodable frame from an accepted peer is handed to
    #: an IRejectionObserver sink instead of closing the connection.
    answers_rejects = False

    def __init__(self, owner: IProtocolOwner, limits: Limits, accepted: bool = True) -> None:
        self._max_frame = limits.max_frame
        #: False until the role accepted the peer's hello (listening side only).
        self.accepted = accepted
        self.MAX_LENGTH = limits.max_frame if accepted else min(limits.max_hello_frame, limits.max_frame)
        self._owner = owner
        self._max_send_buffer = limits.max_send_buffer
        self.congested = False
        self.queued = 0
        self.closing = False
        self._made = False
        self.close_reason: Optional[str] = None
        self.lost: Deferred = Deferred()
        self._rest = b""
        self._chunks: List[bytes] = []
        self._chunks_len = 0
        self._needed = 0
        #: Where the bytes of a partial frame are counted (listening side), and how many are.
        self.budget: Optional[PartialFrameBudget] = None
        self._charged = 0
        #: Listening side: a partial frame must complete within ``partial_timeout`` s of ``clock``.
        self.clock: Optional[IReactorTime] = None
        self.partial_timeout = limits.partial_frame_timeout
        self._partial_deadline: Optional[IDelayedCall] = None

    # -- connection ------------------------------------------------------------

    def connectionMade(self) -> None:
        # Messages are small and latency matters (a job is a few round
        # trips): do not let Nagle's algorithm hold them back.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.transport.registerProducer(_SendBufferWatch(self), True)
        self._made = True
        self._owner.connection_made(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closing = True
        self._release()
        self._chunks = []
        text = self.close_reason or _reason(reason)
        refused = tls.tls_failure(reason)
        if refused is not None:  # a peer without acceptable credentials, or a server we do not trust
            log.warn("{peer}: TLS failed: {error}", peer=self._describe(), error=refused)
        try:
            if self._made:
                self._owner.connection_lost(self, text)
        finally:
            self.lost.callback(None)

    def abort(self, reason: str) -> None:
        """Close at once, dropping what is queued; ``reason`` is logged and given to the sink."""
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        log.warn("{peer}: {reason}; closing the connection", peer=self._describe(), reason=reason)
        self.transport.abortConnection()

    def _describe(self) -> str:
        return self.peer.description if self.peer is not None else repr(self.transport.getPeer())

    def accept(self) -> None:
        """Lift the pre-hello limits (idempotent)."""
        if self.accepted:
            return
        self.accepted = True
        self.MAX_LENGTH = self._max_frame
        self._owner.connection_accepted(self)

    # -- receiving -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self._parse(data)
        except Exception:
            log.failure("{peer}: error while reading", peer=self._describe())
            self.abort("internal error while reading")

    def _charge(self, n: int) -> bool:
        """Count ``n`` more bytes of a partial frame; abort and return False if over the budget."""
        budget = self.budget
        if budget is None:
            return True
        if not budget.take(self, n):
            why = "it alone would exceed them" if self._charged + n > budget.limit else "it is the oldest"
            self.abort(
                f"a partial frame of {self._chunks_len + n} bytes (of {self._needed}) would take the bytes held in "
                f"partial frames over {budget.limit} (limits.max_partial_bytes), and {why}"
            )
            self._drop_partial()
            return False
        self._charged += n
        return True

    def evicted(self, limit: int) -> None:
        """Another connection's frame needs the room our older partial frame holds: close, free it."""
        self._charged = 0  # the budget has uncounted it
        held, needed = self._chunks_len, self._needed
        self._drop_partial()
        self.abort(
            f"its partial frame of {held} bytes (of {needed}) was the oldest when the bytes held in partial "
            f"frames reached {limit} (limits.max_partial_bytes)"
        )

    def _stalled(self) -> None:
        self._partial_deadline = None
        held, needed = self._chunks_len, self._needed
        self._drop_partial()
        self.abort(
            f"a frame was not completed within {self.partial_timeout:g} s ({held} of {needed} bytes received; "
            "limits.partial_frame_timeout)"
        )

    def _drop_partial(self) -> None:
        """Forget the partial frame: its bytes, its budget, its deadline."""
        self._chunks = []
        self._chunks_len = 0
        self._release()

    def _release(self) -> None:
        if self._charged:
            assert self.budget is not None
            self.budget.give(self)
            self._charged = 0
        deadline = self._partial_deadline
        if deadline is not None:
            self._partial_deadline = None
            if deadline.active():
                deadline.cancel()

    def _parse(self, data: bytes) -> None:
        if self._chunks:
            # In the middle of a large frame: only join once it is complete.
            if not self._charge(len(data)):
                return
            self._chunks.append(data)
            self._chunks_len += len(data)
            if self._chunks_len < self._needed:
                return
            data = b"".join(self._chunks)
            self._chunks = []
            self._chunks_len = 0
            self._release()
        elif self._rest:
            data = self._rest + data
            self._rest = b""
        size = len(data)
        offset = 0
        while size - offset >= 4:
            (length,) = _unpack_from(data, offset)
            # Read each time: the previous frame (a hello) may have lifted the limit.
            if length > self.MAX_LENGTH:
                self.lengthLimitExceeded(length)
                return
            end = offset + 4 + length
            if end > size:
                rest = data[offset:]
                self._needed = 4 + length
                self._chunks_len = 0
                if not self._charge(len(rest)):
                    return
                self._chunks = [rest]
                self._chunks_len = len(rest)
                if self.clock is not None and self._partial_deadline is None:
                    self._partial_deadline = self.clock.callLater(self.partial_timeout, self._stalled)
                return
            self.stringReceived(data[offset + 4 : end])
            if self.closing:
                return
            offset = end
        if offset < size:
            self._rest = data[offset:]

    def lengthLimitExceeded(self, length: int) -> None:
        if self.accepted:
            self.abort(f"frame of {length} bytes exceeds the maximum of {self.MAX_LENGTH} bytes")
        else:
            self.abort(
                f"frame of {length} bytes before an accepted hello exceeds the maximum of {self.MAX_LENGTH} bytes "
                "(limits.max_hello_frame)"
            )

    def stringReceived(self, data: bytes) -> None:
        try:
            message = _load(data)
        except MessageError as e:
            sink = self.sink
            if self.accepted and self.answers_rejects and IRejectionObserver.providedBy(sink):
                # The framing is intact, so the connection can go on: a peer
                # we know is told what was wrong (e.g. its job is answered
                # crash) instead of losing its connection and every job on it.
                log.warn("{peer}: dropped an undecodable message: {error}", peer=self._describe(), error=str(e))
                try:
                    sink.message_rejected(self.peer, e, data)
                except Exception:
                    log.failure("{peer}: handler failed on a rejected frame", peer=self._describe())
                return
            self.abort(f"undecodable message: {e}")
            return
        try:
            self.sink.message_received(self.peer, message)
        except Exception:
            log.failure("{peer}: handler failed on {message!r}", peer=self.peer.description, message=message)

    # -- sending ---------------------------------------------------------------

    def send_data(self, data: bytes) -> None:
        """Queue one encoded message."""
        if self.closing:
            log.debug("{peer} is closing: dropped a message", peer=self._describe())
            return
        length = len(data)
        if length > _MAX_FRAME_FIELD:
            raise MessageError(f"message of {length} bytes cannot be framed (4-byte length)")
        if self.congested:
            self.queued += length + 4
            if self.queued > self._max_send_buffer:
                self.abort(
                    f"more than {self._max_send_buffer} bytes queued for a peer that does not read "
                    "(limits.max_send_buffer)"
                )
                return
        self.transport.write(_pack(length) + data)

    def sendString(self, string: bytes) -> None:
        self.send_data(string)


# ---------------------------------------------------------------------------
# Listening side
# ---------------------------------------------------------------------------


@implementer(IPeer)
class StreamPeer:
    """One accepted connection.  Compares by identity: one object per connection."""

    def __init__(self, protocol: MessageProtocol, address: bytes, description: str) -> None:
        self._protocol = protocol
        self.address = address
        self.description = description

    @property
    def connected(self) -> bool:
        return not self._protocol.closing

    def send(self, message: Any) -> None:
        self._protocol.send_data(message.dump())

    def disconnect(self, reason: str = "disconnected") -> None:
        self._protocol.abort(reason)

    def accepted(self) -> None:
        """Lift the pre-hello frame limit and deadline of this connection."""
        self._protocol.accept()

    def __repr__(self) -> str:
        return f"<StreamPeer {self.description}>"


class _Refused(Protocol):
    """Stands in for a connection over a listener's caps: closed as soon as made."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]


class _ServerFactory(Factory):
    def __init__(self, listener: StreamListener) -> None:
        self._listener = listener

    def buildProtocol(self, addr: Any) -> Protocol:
        listener = self._listener
        refusal = listener._over_caps()
        if refusal is not None:
            listener._refuse(addr, refusal)
            return _Refused()
        protocol = MessageProtocol(listener, listener._limits, accepted=False)
        protocol.answers_rejects = True
        protocol.budget = listener.budget
        protocol.clock = listener._reactor
        return protocol


@implementer(IListener, IProtocolOwner)
class StreamListener:
    """A listening port; aborts its connections when stopped."""

    def __init__(
        self,
        endpoint: str,
        sink: IMessageSink,
        limits: Limits,
        reactor: Optional[IReactorTime] = None,
        budget: Optional[PartialFrameBudget] = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _global

            reactor = _global
        self.description = endpoint
        self.connect_endpoint = endpoint
        self._reactor: IReactorTime = reactor
        self._kind = endpoint.partition(":")[0]
        self._sink = sink
        self._limits = limits
        self._port: Any = None
        #: Bytes of partial frames, shared with the transport's other listeners of the same bound.
        self.budget = budget if budget is not None else PartialFrameBudget(limits.max_partial_bytes)
        self.protocols: Set[MessageProtocol] = set()
        #: Connections whose hello is not accepted yet -> their hello deadline.
        self.pending: Dict[MessageProtocol, IDelayedCall] = {}
        #: Connections closed at once for being over a cap (tests, metrics).
        self.refused = 0
        self._refusals_logged_at = -REFUSAL_LOG_INTERVAL
        self._refusals_unlogged = 0

    def _over_caps(self) -> Optional[str]:
        """Why one more connection is refused now, if it is."""
        limits = self._limits
        if len(self.protocols) >= limits.max_connections:
            return f"{len(self.protocols)} connections are open (limits.max_connections)"
        if len(self.pending) >= limits.max_pending:
            return f"{len(self.pending)} connections have not said hello yet (limits.max_pending)"
        return None

    def _refuse(self, addr: Any, reason: str) -> None:
        """Count a refused connection; log at most once per REFUSAL_LOG_INTERVAL (a flood must not flood the log)."""
        self.refused += 1
        self._refusals_unlogged += 1
        now = self._reactor.seconds()
        if now - self._refusals_logged_at < REFUSAL_LOG_INTERVAL:
            return
        log.warn(
            "{listener}: refused {n} connection(s), the last from {addr}: {reason}",
            listener=self.connect_endpoint,
            n=self._refusals_unlogged,
            addr=addr,
            reason=reason,
        )
        self._refusals_logged_at = now
        self._refusals_unlogged = 0

    def _listening(self, port: Any) -> StreamListener:
        self._port = port
        host = port.getHost()
        if isinstance(host, IPv4Address):
            self.connect_endpoint = f"{'ssl' if self._kind == 'ssl' else 'tcp'}:host={host.host}:port={host.port}"
        elif isinstance(host, IPv6Address):
            escaped = host.host.replace(":", r"\:")
            self.connect_endpoint = f"{'ssl' if self._kind == 'ssl' else 'tcp'}:host={escaped}:port={host.port}"
        elif isinstance(host, UNIXAddress) and host.name:
            name = host.name.decode() if isinstance(host.name, bytes) else host.name
            self.connect_endpoint = f"unix:{name}"
        log.info("listening on {endpoint}", endpoint=self.connect_endpoint)
        return self

    def _describe_peer(self, protocol: MessageProtocol) -> str:
        addr = protocol.transport.getPeer()
        if isinstance(addr, IPv4Address):
            return f"{self._kind}:{addr.host}:{addr.port}"
        if isinstance(addr, IPv6Address):
            return f"{self._kind}:[{addr.host}]:{addr.port}"
        return self.connect_endpoint

    def connection_made(self, protocol: MessageProtocol) -> None:
        description = f"{self._describe_peer(protocol)}#{next(_ids)}"
        protocol.peer = StreamPeer(protocol, description.encode(), description)
        protocol.sink = self._sink
        self.protocols.add(protocol)
        if not protocol.accepted:
            timeout = self._limits.hello_timeout
            self.pending[protocol] = self._reactor.callLater(
                timeout, protocol.abort, f"no accepted hello within {timeout:g} s (limits.hello_timeout)"
            )
        try:
            self._sink.peer_connected(protocol.peer)
        except Exception:
            log.failure("handler failed on connection of {peer}", peer=description)

    def connection_accepted(self, protocol: MessageProtocol) -> None:
        deadline = self.pending.pop(protocol, None)
        if deadline is not None and deadline.active():
            deadline.cancel()

    def connection_lost(self, protocol: MessageProtocol, reason: str) -> None:
        self.protocols.discard(protocol)
        self.connection_accepted(protocol)  # its hello deadline goes
        try:
            self._sink.peer_disconnected(protocol.peer, reason)
        except Exception:
            log.failure("handler failed on disconnection of {peer}", peer=protocol.peer.description)

    def stop(self) -> Deferred:
        waits = [maybeDeferred(self._port.stopListening)] if self._port is not None else []
        self._port = None
        for protocol in list(self.protocols):
            waits.append(protocol.lost)
            protocol.abort("listener stopped")
        log.info("stopped listening on {endpoint}", endpoint=self.connect_endpoint)
        return gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    def __repr__(self) -> str:
        return f"<StreamListener {self.connect_endpoint}>"


# ---------------------------------------------------------------------------
# Connecting side
# ---------------------------------------------------------------------------


@implementer(IPeer)
class StreamServerPeer:
    """The server as a :class:`StreamConnection` sees it; the same object across reconnections."""

    def __init__(self, connection: StreamConnection, endpoint: str) -> None:
        self._connection = connection
        self.address = endpoint.encode()
        self.description = endpoint

    def send(self, message: Any) -> None:
        data = message.dump()
        protocol = self._connection.protocol
        if protocol is None:
            log.debug("not connected to {peer}: dropped {msgtype}", peer=self.description, msgtype=message.msgtype)
            return
        protocol.send_data(data)

    def disconnect(self, reason: str = "disconnected") -> None:
        """Drop the current link (the connection makes a new one; use ``stop`` to end for good)."""
        protocol = self._connection.protocol
        if protocol is not None:
            protocol.abort(reason)

    def accepted(self) -> None:
        """Nothing to lift: a connecting side trusts the server it chose."""

    def __repr__(self) -> str:
        return f"<StreamServerPeer {self.description}>"


class _ClientFactory(Factory):
    noisy = False  # no "Starting factory" / "Stopping factory" at every reconnection attempt

    def __init__(self, connection: StreamConnection) -> None:
        self._connection = connection

    def buildProtocol(self, addr: Any) -> MessageProtocol:
        protocol = MessageProtocol(self._connection, self._connection._limits)
        protocol.peer = self._connection.peer
        protocol.sink = self._connection._sink
        return protocol


@implementer(IConnection, IProtocolOwner)
class StreamConnection:
    """A ``ClientService`` that keeps one connection up, with backoff between attempts."""

    def __init__(
        self,
        reactor: CommonReactor,
        endpoint: str,
        sink: IMessageSink,
        limits: Limits,
        retry_policy: Callable[[int], float],
    ) -> None:
        self._reactor = reactor
        self._sink = sink
        self._limits = limits
        self.peer = StreamServerPeer(self, endpoint)
        #: The live connection's protocol, or None between connections.
        self.protocol: Optional[MessageProtocol] = None
        self.stopped = False
        self._service = ClientService(
            tls.client_endpoint(reactor, endpoint), _ClientFactory(self), retryPolicy=retry_policy, clock=reactor
        )
        self._service.startService()

    def connection_made(self, protocol: MessageProtocol) -> None:
        self.protocol = protocol
        log.info("connected to {peer}", peer=self.peer.description)
        try:
            self._sink.peer_connected(self.peer)
        except Exception:
            log.failure("handler failed on connection to {peer}", peer=self.peer.description)

    def connection_accepted(self, protocol: MessageProtocol) -> None:
        """Nothing to do: a connecting side has no pre-hello limits."""

    def connection_lost(self, protocol: MessageProtocol, reason: str) -> None:
        if self.protocol is protocol:
            self.protocol = None
        log.info("connection to {peer} lost: {reason}", peer=self.peer.description, reason=reason)
        try:
            self._sink.peer_disconnected(self.peer, reason)
        except Exception:
            log.failure("handler failed on disconnection from {peer}", peer=self.peer.description)

    def reconnect(self) -> None:
        if self.protocol is not None:
            self.protocol.abort("reconnect requested")

    def stop(self) -> Deferred:
        self.stopped = True
        if self.protocol is not None:
            # TLS holds its close_notify (and so the close) back while a producer is registered.
            self.protocol.transport.unregisterProducer()
        done = self._service.stopService()
        protocol = self.protocol
        if protocol is not None and not done.called:
            # A graceful close waits for the send buffer to drain: bound it.
            timer = self._reactor.callLater(STOP_GRACE, protocol.abort, "connection stopped")

            def cancel(result: Any) -> Any:
                if timer.active():
                    timer.cancel()
                return result

            done.addBoth(cancel)
        return done

    def __repr__(self) -> str:
        return f"<StreamConnection {self.peer.description}>"


# ---------------------------------------------------------------------------
# The plugin
# ---------------------------------------------------------------------------


_NOT_INT = re.compile(r"invalid literal for int\(\) with base 10: (.*)")


def _parse_error(error: Exception) -> str:
    """What Twisted's endpoint parser meant, in words (it raises whatever the endpoint's constructor raised)."""
    text = str(error)
    match = _NOT_INT.fullmatch(text)
    if match:
        return f"{match.group(1)} is not a whole number (a port?)"
    if isinstance(error, TypeError) and "missing" in text:
        return "no " + " nor ".join(re.findall(r"'(\w+)'", text.split("missing", 1)[1]) or ["value for a part"])
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return text or type(error).__name__


def check_stream_endpoint(endpoint: str, listening: bool) -> None:
    """Parse ``endpoint`` as Twisted would (and read the TLS files it names); ValueError if it cannot be used."""
    from twisted.internet.endpoints import clientFromString, serverFromString

    try:
        if tls.verifies_peers(endpoint):  # our own parsing, whose ValueErrors name the file or the part
            if listening:
                tls.server_endpoint(None, endpoint)  # type: ignore[arg-type]  # parsing needs no reactor
            else:
                tls.client_options(endpoint)
        elif listening:
            serverFromString(None, endpoint)
        else:
            clientFromString(None, endpoint)
    except ValueError as e:
        if tls.verifies_peers(endpoint):
            raise
        raise ValueError(f"bad endpoint {endpoint!r}: {_parse_error(e)}") from None
    except Exception as e:
        raise ValueError(f"bad endpoint {endpoint!r}: {_parse_error(e)}") from None


@implementer(ITransport, IEndpointCheck)
class StreamTransport:
    """Endpoints ``tcp:``, ``tcp6:``, ``unix:`` and ``ssl:`` (Twisted endpoint syntax).

    ``retry_policy`` (attempt number -> seconds) spaces reconnection attempts.
    """

    name = "stream"

    def __init__(self, retry_policy: Optional[Callable[[int], float]] = None) -> None:
        self._retry_policy = retry_policy
        #: limits.max_partial_bytes -> the budget its listeners share
        self._budgets: Dict[int, PartialFrameBudget] = {}

    def handles(self, endpoint: str) -> bool:
        return isinstance(endpoint, str) and endpoint.startswith(PREFIXES)

    def check(self, endpoint: str, listening: bool) -> None:
        check_stream_endpoint(endpoint, listening)

    def listen(
        self, reactor: CommonReactor, endpoint: str, sink: IMessageSink, limits: Limits = _DEFAULT_LIMITS
    ) -> Deferred:
        endpoint = listening_endpoint(endpoint)
        budget = self._budgets.get(limits.max_partial_bytes)
        if budget is None:
            budget = self._budgets[limits.max_partial_bytes] = PartialFrameBudget(limits.max_partial_bytes)
        listener = StreamListener(endpoint, sink, limits, reactor, budget)
        d = maybeDeferred(lambda: tls.server_endpoint(reactor, endpoint).listen(_ServerFactory(listener)))
        return d.addCallback(listener._listening)

    def connect(
        self, reactor: CommonReactor, endpoint: str, sink: IMessageSink, limits: Limits = _DEFAULT_LIMITS
    ) -> StreamConnection:
        policy = self._retry_policy or default_retry_policy()
        return StreamConnection(reactor, endpoint, sink, limits, policy)
