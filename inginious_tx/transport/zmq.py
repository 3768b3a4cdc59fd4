"""The ZeroMQ transport: INGInious 0.6's own wire (``zmq:tcp://...``, ``zmq:ipc://...``).

A listener binds a ROUTER socket.  A peer is a *session*: a routing id on
one connection, announced on its first valid message.  Sessions are bound
to their connection, not to the routing id alone (which anyone may claim):

* ``ROUTER_HANDOVER`` is off, so a connection claiming the routing id of a
  connected peer is ignored by ZeroMQ;
* every connection gets a User-Id of its own from the ZAP handler
  (:mod:`.curve`; with CurveZMQ it also names the peer's key), read from
  each message: a message whose routing id is known but whose User-Id is
  not that session's comes from a new connection, so the old session is
  over (reported with ``peer_disconnected``) and a new peer starts;
* a send that finds the routing id unconnected ends the session as well;
* the routing id never leaves this module: ``address`` and ``description``
  are names of our own, and the ids ZeroMQ assigns are made unpredictable
  (:func:`_seed_routing_ids`).

Other departures are not seen (heartbeats decide them).

Strangers: the listener follows its connections through its socket monitor
(:class:`_ConnectionWatch`).  A connection beyond ``Limits.max_connections``,
or beyond ``Limits.zmq_max_pending`` connections whose hello is not accepted
yet, is shut down as soon as it is made; one that gets no hello accepted
(:meth:`ZmqPeer.accepted`) within ``Limits.hello_timeout`` is shut down
then, which makes ZeroMQ drop it and whatever it was receiving.  Until then
its frames over ``Limits.max_hello_frame`` are dropped.

A connection is a DEALER socket sending single-frame messages, which is
exactly what an INGInious 0.6 client or agent does.

Sockets are txzmq connections adapted so that everything runs on the
injected reactor (txzmq itself reaches for the global one), and whose read
loop is kept short: a frame goes from ``recv`` through ``load_any``
to the sink with no per-message scheduling.

High-water marks: a single client of the backend keeps 10,000-20,000 jobs
(a few messages each) in flight over one socket, so the HWMs are
:data:`HIGH_WATER_MARK` (one million messages, about 50 times the largest
burst the benchmark makes; a listener's send HWM is
``Limits.zmq_send_hwm``) rather than ZeroMQ's default of 1,000.
``ROUTER_MANDATORY`` is on, so that reaching it (or sending to an identity
that left) is seen instead of a silent drop: a peer whose queue is full has
stopped reading, and its session ends there (as a stream peer's does past
``Limits.max_send_buffer``).

Known limit: ZeroMQ counts queued messages, not bytes, and cannot tell that
a peer has stopped reading.  A ZeroMQ *client* that submits jobs and never
reads its answers therefore makes the backend hold up to ``zmq_send_hwm``
answers (about 100 MB per 1,000 results of 100 KB), and ZeroMQ keeps them
until then; on reaching it, its connection is shut down, which frees them.
Lower ``zmq_send_hwm`` to lower that bound, admit only known clients on
ZeroMQ (CurveZMQ), or use a stream transport, whose peers are cut off once
``Limits.max_send_buffer`` bytes are queued for them.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import secrets
import socket as socket_module
import struct
from typing import Any, Callable, Dict, Optional, Set, Tuple

import zmq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

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
from . import Limits, curve

__all__ = ["ZmqTransport", "ZmqListener", "ZmqConnection", "ZmqPeer", "ZmqServerPeer", "HIGH_WATER_MARK"]

log = Logger()
_DEFAULT_LIMITS = Limits()

PREFIX = "zmq:"
#: Send and receive high-water mark of every socket, in messages (see the module docstring).
HIGH_WATER_MARK = 1_000_000
#: Longest pause between two reconnection attempts of a connecting socket, in ms.
RECONNECT_MAX_MS = 5000
#: Longest time :meth:`ZmqConnection.stop` lets queued messages leave, in seconds.
FLUSH_GRACE = 5.0
#: How often a stopping connection looks whether its socket is gone, in seconds.
_FLUSH_POLL = 0.005
#: Most messages handled in one go before yielding to the reactor, so that a
#: peer that never stops sending cannot starve timers and other sockets.
READ_BATCH = 4096
#: Large frames dropped from strangers are logged at most once per this many seconds.
DROP_LOG_INTERVAL = 10.0
_sessions = itertools.count(1)
_seeded = False


def _seed_routing_ids() -> None:
    """Make the routing ids ZeroMQ assigns unpredictable, once per process.

    A ROUTER gives a peer that sets no routing id of its own (every
    INGInious 0.6 client and agent) a zero byte and a 32-bit counter; the
    counter starts at a value drawn from the C library's ``rand()``, which
    nothing seeds: without this, the first peer of every fresh backend got
    the same id (``006b8b4567``).  Seeded from the system's random source,
    the start is one of 2^32 values an attacker cannot see.  It also guards
    the process: libzmq does not check that the id it assigns is free, and
    aborts when a peer that chose that id itself is already connected.
    """
    global _seeded
    if _seeded:
        return
    _seeded = True
    try:
        ctypes.CDLL(None).srand(secrets.randbits(32))
    except (OSError, AttributeError) as e:  # pragma: no cover - a C library without srand
        log.warn("cannot seed ZeroMQ's routing ids: {error}", error=str(e))

# The per-message path calls pyzmq's backend socket methods with plain ints:
# the convenience layer above them converts flags and options to enums on
# every call, which costs more than the call itself.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.NOBLOCK | zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_recv = zmq.backend.Socket.recv
_send = zmq.backend.Socket.send
_get = zmq.backend.Socket.get
_Again = zmq.Again
_load = load_any

_classes: Optional[Tuple[type, type]] = None


def _txzmq() -> Tuple[type, type]:
    """txzmq's factory and connection classes, adapted to an injected reactor.

    Built on first use: importing txzmq imports the global reactor, which
    must not happen before the application has chosen its reactor.
    """
    global _classes
    if _classes is not None:
        return _classes
    from txzmq import ZmqConnection as _TxConnection
    from txzmq import ZmqFactory as _TxFactory

    class Factory(_TxFactory):
        """One socket's factory: the injected reactor and the transport's context.

        ``reactor`` is a class attribute in txzmq (the global reactor); the
        instance attribute set here takes precedence for this factory.
        """

        lingerPeriod = 0  # LINGER 0: closing a socket never waits

        def __init__(self, reactor: Any, context: zmq.Context) -> None:
            self.reactor = reactor
            self.context = context
            self.connections: Set[Any] = set()

    class Socket(_TxConnection):
        """A txzmq connection whose reading is done by ``reader``.

        ``reader(socket)`` handles up to :data:`READ_BATCH` messages and
        returns True when it stopped before the socket was empty.
        """

        highWaterMark = HIGH_WATER_MARK

        def __init__(self, factory: Any, socket_type: int, reader: Callable[[zmq.Socket], bool]) -> None:
            self.socketType = socket_type
            self._reader = reader
            self.read_scheduled = None
            super().__init__(factory)

        def doRead(self) -> None:
            scheduled = self.read_scheduled
            if scheduled is not None:
                self.read_scheduled = None
                if scheduled.active():
                    scheduled.cancel()
            socket = self.socket
            if socket is None:
                return
            try:
                more = self._reader(socket)
            except Exception:
                if self.socket is None:  # closed by a handler while reading
                    return
                log.failure("error while reading ZeroMQ socket {socket!r}", socket=self)
                return
            if more and self.socket is not None:
                self.schedule_read()

        def schedule_read(self) -> None:
            """Look at the socket again on the next reactor turn.

            ZeroMQ's file descriptor is edge-triggered: a send may consume the
            notification of messages that arrived meanwhile, so after sending
            (or after a partial read) the socket must be checked once more.
            At most one check is pending, however many messages are sent.
            """
            if self.read_scheduled is None and self.factory is not None:
                self.read_scheduled = self.factory.reactor.callLater(0, self.doRead)

        def send(self, message: Any) -> None:
            # txzmq's send schedules its read check on the global reactor.
            parts = [message] if isinstance(message, bytes) else list(message)
            for part in parts[:-1]:
                self.socket.send(part, _SNDMORE_NOBLOCK)
            self.socket.send(parts[-1], _NOBLOCK)
            self.schedule_read()

        def shutdown(self) -> None:
            if self.socket is not None:
                super().shutdown()

        def logPrefix(self) -> str:
            return "ZMQ"

    _classes = (Factory, Socket)
    return _classes


def _discard_rest(socket: zmq.Socket) -> int:
    """Read and drop the remaining frames of a message; returns how many."""
    n = 0
    while socket.get(_RCVMORE):
        socket.recv(_NOBLOCK)
        n += 1
    return n


def _zmq_address(endpoint: str) -> str:
    """``zmq:tcp://h:p`` -> ``tcp://h:p``, with a clear error for anything else."""
    if not endpoint.startswith(PREFIX) or "://" not in endpoint:
        raise ValueError(f"not a ZeroMQ endpoint: {endpoint!r} (expected zmq:tcp://HOST:PORT or zmq:ipc:///PATH)")
    return endpoint[len(PREFIX) :]


def _new_socket(reactor: Any, context: zmq.Context, socket_type: int, reader: Callable, limits: Limits) -> Any:
    factory_class, socket_class = _txzmq()
    conn = socket_class(factory_class(reactor, context), socket_type, reader)
    conn.socket.set(zmq.MAXMSGSIZE, int(limits.max_frame))
    return conn


# ---------------------------------------------------------------------------
# Listening side: ROUTER
# ---------------------------------------------------------------------------


_EVENT_HEADER = struct.Struct("=hi")


def _monitor_event(monitor: zmq.Socket, flags: int) -> Tuple[int, int]:
    """``(event, value)`` of the next message of a monitor socket (libzmq's 4.x event format).

    Parsed here rather than by ``zmq.utils.monitor``, whose first call checks
    the frames against ``Awaitable``: an ABC subclass walk that cost 35 ms of
    reactor time at the first connection.
    """
    frames = monitor.recv_multipart(flags)
    if len(frames) != 2 or len(frames[0]) != _EVENT_HEADER.size:
        raise zmq.ZMQError(msg=f"unexpected monitor message of {len(frames)} frames")
    event, value = _EVENT_HEADER.unpack(frames[0])
    return event, value


@implementer(IReadDescriptor)
class _ConnectionWatch:
    """Follows a ROUTER's connections from its monitor events, on the reactor.

    A ROUTER accepts every connection by itself and offers no way to close
    one.  This keeps each connection's file descriptor (from the monitor,
    and on every message as ``ZMQ_SRCFD``), so that the listener can count
    them (the ZAP handler refuses handshakes over the caps) and close one
    that has not had its hello accepted in time: shutting its socket down
    makes ZeroMQ drop the connection, and whatever it was receiving.
    """

    def __init__(
        self,
        reactor: Any,
        socket: zmq.Socket,
        limits: Limits,
        description: str,
        on_closed: Optional[Callable[[int, float], None]] = None,
    ) -> None:
        self._reactor = reactor
        self._socket = socket
        self._limits = limits
        #: Called with (descriptor, when it was opened) when a connection closes.
        self._on_closed = on_closed
        self._hello_timeout = limits.hello_timeout
        self._description = description
        self.monitor: Optional[zmq.Socket] = socket.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._fd = int(self.monitor.get(zmq.FD))
        #: file descriptor -> its hello deadline (a delayed call), for every open connection not accepted yet
        self.pending: Dict[int, Any] = {}
        #: file descriptors of the open connections whose hello was accepted
        self.accepted: Set[int] = set()
        #: file descriptor -> when its connection was accepted, for every open connection
        self.opened: Dict[int, float] = {}
        #: connections closed for missing the hello deadline (tests, metrics)
        self.timed_out = 0
        #: connections closed as soon as made, for being over a cap (tests, metrics)
        self.refused = 0
        self._refusals_logged_at = -DROP_LOG_INTERVAL
        self._refusals_unlogged = 0
        reactor.addReader(self)
        # ZeroMQ's descriptor is edge-triggered: look once now, or a
        # notification given before we listened would never come again.
        self.doRead()

    def count(self) -> Tuple[int, int]:
        """(open connections, open connections not accepted yet)."""
        self.doRead()
        return len(self.opened), len(self.pending)

    def accept(self, fd: int) -> None:
        """The connection on ``fd`` had a hello accepted: no deadline for it any more."""
        self.doRead()
        deadline = self.pending.pop(fd, None)
        if deadline is not None:
            if deadline.active():
                deadline.cancel()
            self.accepted.add(fd)

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        monitor = self.monitor
        while monitor is not None:
            try:
                event, fd = _monitor_event(monitor, _NOBLOCK)
            except _Again:
                return
            if event == zmq.EVENT_ACCEPTED:
                refusal = self._over_caps()
                if refusal is not None:
                    self._refuse(fd, refusal)
                    continue
                self.opened[fd] = self._reactor.seconds()
                self.pending[fd] = self._reactor.callLater(self._hello_timeout, self._expire, fd)
            elif event == zmq.EVENT_DISCONNECTED:
                self._forget(fd)

    def _over_caps(self) -> Optional[str]:
        limits = self._limits
        if len(self.opened) >= limits.max_connections:
            return f"{len(self.opened)} connections are open (limits.max_connections)"
        if len(self.pending) >= limits.zmq_max_pending:
            return f"{len(self.pending)} connections have not said hello yet (limits.zmq_max_pending)"
        return None

    def _refuse(self, fd: int, reason: str) -> None:
        """Close a connection over a cap at once; logged at most once per DROP_LOG_INTERVAL."""
        self._shut_down(fd)
        self.refused += 1
        self._refusals_unlogged += 1
        now = self._reactor.seconds()
        if now - self._refusals_logged_at < DROP_LOG_INTERVAL:
            return
        log.warn(
            "{listener}: refused {n} connection(s): {reason}",
            listener=self._description,
            n=self._refusals_unlogged,
            reason=reason,
        )
        self._refusals_logged_at = now
        self._refusals_unlogged = 0

    def _forget(self, fd: int) -> None:
        deadline = self.pending.pop(fd, None)
        if deadline is not None and deadline.active():
            deadline.cancel()
        self.accepted.discard(fd)
        opened = self.opened.pop(fd, None)
        if opened is not None and self._on_closed is not None:
            self._on_closed(fd, opened)

    def poll(self) -> None:
        """Handle pending monitor events, cheaply when there are none (before a send)."""
        monitor = self.monitor
        if monitor is not None and int(_get(monitor, _EVENTS)) & _POLLIN:
            self.doRead()

    def _expire(self, fd: int) -> None:
        self.doRead()  # it may have closed meanwhile (and its descriptor been reused)
        if fd not in self.pending:
            return
        del self.pending[fd]
        self.timed_out += 1
        self._shut_down(fd)

    def close(self, fd: int, since: float) -> bool:
        """Close the connection on ``fd`` if it is still the one that was open at ``since``."""
        self.doRead()
        if self.opened.get(fd, float("inf")) > since:
            return False  # gone (its descriptor maybe reused by a newer connection)
        self._shut_down(fd)
        return True

    @staticmethod
    def _shut_down(fd: int) -> None:
        try:
            # Shut down a duplicate: the descriptor stays ZeroMQ's to close,
            # and ZeroMQ drops the connection (and what it holds for it).
            with socket_module.socket(fileno=os.dup(fd)) as connection:
                connection.shutdown(socket_module.SHUT_RDWR)
        except OSError as e:
            log.debug("cannot shut down connection {fd}: {error}", fd=fd, error=str(e))

    def connectionLost(self, reason: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return "ZMQ monitor"

    def stop(self) -> None:
        """Stop watching (before the ROUTER is closed)."""
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        for deadline in self.pending.values():
            if deadline.active():
                deadline.cancel()
        self.pending.clear()
        self._reactor.removeReader(self)
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        monitor.close(linger=0)


@implementer(IPeer)
class ZmqPeer:
    """One session of a listener: a ZeroMQ routing id *on one connection*.

    The routing id (what the ROUTER sends to) stays private: ``address``
    and ``description`` are names of our own that reveal nothing an impostor
    could use.  Peers compare by identity: a later connection that reuses
    the routing id is another peer.
    """

    def __init__(self, listener: ZmqListener, routing_id: bytes, user_id: Optional[str], origin: str) -> None:
        self._listener = listener
        self._routing_id = routing_id
        #: The connection's User-Id from the ZAP handler (a token of its own, and its CurveZMQ key if any).
        self.user_id = user_id
        #: The CurveZMQ public key (z85) the peer proved it holds, or None.
        self.curve_key = curve.user_key(user_id)
        n = next(_sessions)
        self.address = b"zmq-%d" % n
        self.description = f"{listener.description}#{n} ({origin})"
        self.forgotten = False
        #: True once the role accepted this peer's hello (see :meth:`accepted`).
        self.is_accepted = False
        #: When the peer was first heard from (reactor seconds).
        self.since = 0.0
        #: The file descriptor of its connection when first heard from (ZMQ_SRCFD), or -1.
        self.fd = -1

    def send(self, message: Any) -> None:
        data = message.dump()
        if self.forgotten:
            log.debug("dropped {msgtype} to forgotten peer {peer}", msgtype=message.msgtype, peer=self.description)
            return
        self._listener._send_to(self, data)

    def disconnect(self, reason: str = "disconnected") -> None:
        self._listener._forget(self, reason)

    def accepted(self) -> None:
        """Lift the pre-hello frame limit and the hello deadline of this session."""
        if not self.is_accepted:
            self.is_accepted = True
            self._listener._accepted(self)

    def __repr__(self) -> str:
        return f"<ZmqPeer {self.description}>"


@implementer(IListener)
class ZmqListener:
    """A bound ROUTER socket; one :class:`ZmqPeer` per identity heard from."""

    def __init__(self, reactor: Any, context: zmq.Context, endpoint: str, sink: IMessageSink, limits: Limits) -> None:
        endpoint, curve_settings = curve.server_settings(endpoint)  # the ?curve-... query, see curve.py
        address = _zmq_address(endpoint)
        self.description = endpoint
        self._reactor = reactor
        self._sink = sink
        self._limits = limits
        self._curve = curve_settings
        #: routing id -> its current session
        self._peers: Dict[bytes, ZmqPeer] = {}
        #: routing id -> session whose hello is not accepted yet, oldest first
        self._strangers: Dict[bytes, ZmqPeer] = {}
        #: connection's file descriptor -> the sessions heard on it
        self._by_fd: Dict[int, Set[ZmqPeer]] = {}
        #: Frames dropped for coming from a stranger and being over ``limits.max_hello_frame``.
        self.dropped_large = 0
        self._dropped_logged_at = -DROP_LOG_INTERVAL
        self._dropped_unlogged = 0
        _seed_routing_ids()  # before the ROUTER exists: it draws its first id when made
        self._conn = _new_socket(reactor, context, zmq.ROUTER, self._read, limits)
        sock = self._conn.socket
        sock.set(zmq.ROUTER_MANDATORY, 1)  # errors instead of silent drops on send
        # Never let a new connection take over a live routing id: whoever
        # knows (or guesses) a peer's id could otherwise receive its messages.
        sock.set(zmq.ROUTER_HANDOVER, 0)
        sock.set(zmq.SNDHWM, int(limits.zmq_send_hwm))  # per peer; before bind, so every pipe has it
        self._release_curve: Optional[Callable[[], None]] = None
        self._watch: Optional[_ConnectionWatch] = None
        try:
            self._watch = _ConnectionWatch(reactor, sock, limits, endpoint, self._connection_closed)
            # Always under the ZAP handler: it lets only allowed CurveZMQ keys
            # in, and gives every connection a User-Id that sessions are bound to.
            self._release_curve = curve.guard_listener(reactor, context, sock, curve_settings, endpoint)
            sock.bind(address)
        except (zmq.ZMQError, ValueError) as e:
            if self._watch is not None:
                self._watch.stop()
            self._conn.shutdown()
            if self._release_curve is not None:
                self._release_curve()
            raise ValueError(f"cannot listen on {endpoint}: {e}") from e
        last = sock.get(zmq.LAST_ENDPOINT)
        #: An endpoint string that connects to this listener (the real port if ``*`` or 0 was asked).
        self.connect_endpoint = PREFIX + (last.decode() if isinstance(last, bytes) else str(last))
        self.description = self.connect_endpoint
        log.info("listening on {endpoint} (ZeroMQ ROUTER)", endpoint=self.connect_endpoint)

    @property
    def peers(self) -> Dict[bytes, ZmqPeer]:
        """Routing id -> its session, for every routing id heard from (and not forgotten)."""
        return self._peers

    @property
    def connections(self) -> int:
        """Open connections (including ones still in their handshake)."""
        return self._watch.count()[0] if self._watch is not None else 0

    @property
    def timed_out(self) -> int:
        """Connections closed so far for not having a hello accepted within ``limits.hello_timeout``."""
        return self._watch.timed_out if self._watch is not None else 0

    @property
    def refused(self) -> int:
        """Connections closed as soon as made, for being over ``max_connections`` or ``max_pending``."""
        return self._watch.refused if self._watch is not None else 0

    def _read(self, socket: zmq.Socket) -> bool:
        peers = self._peers
        sink = self._sink
        hello_limit = self._limits.max_hello_frame
        for _ in range(READ_BATCH):
            try:
                frame = _recv(socket, _NOBLOCK, False)
            except _Again:
                return False
            routing_id = frame.bytes
            user_id = frame.get("User-Id") or None
            if not _get(socket, _RCVMORE):
                log.warn("{listener}: dropped a message with no payload frame", listener=self.description)
                continue
            payload = _recv(socket, _NOBLOCK)
            peer = peers.get(routing_id)
            if peer is not None and peer.user_id != user_id:
                # With ROUTER_HANDOVER off, a routing id is on a new
                # connection only once its old connection is gone.
                self._ended(peer, "its connection closed (its routing id is now used by another connection)")
                peer = None
            if _get(socket, _RCVMORE):
                n = 2 + _discard_rest(socket)
                log.warn(
                    "{listener}: dropped a message of {frames} frames from {peer} (expected one payload frame)",
                    listener=self.description,
                    frames=n - 1,
                    peer=peer.description if peer is not None else "a new peer",
                )
                continue
            if len(payload) > hello_limit and (peer is None or not peer.is_accepted):
                self._drop_large(peer, frame, len(payload))
                continue
            try:
                message = _load(payload)
            except MessageError as e:
                log.warn(
                    "{listener}: dropped an undecodable message from {peer}: {error}",
                    listener=self.description,
                    peer=peer.description if peer is not None else "a new peer",
                    error=str(e),
                )
                if IRejectionObserver.providedBy(sink):
                    self._rejected(peer, routing_id, frame, e, payload)
                continue
            try:
                if peer is None:
                    peer = self._new_peer(routing_id, frame)
                sink.message_received(peer, message)
            except Exception:
                log.failure("{listener}: handler failed on {message!r}", listener=self.description, message=message)
            if self._conn.socket is None:  # a handler stopped the listener
                return False
        return True

    def _new_peer(self, routing_id: bytes, frame: Any) -> ZmqPeer:
        """A new session for ``routing_id`` (the connection ``frame`` came on), announced to the sink."""
        user_id = frame.get("User-Id") or None
        key = curve.user_key(user_id)
        if key is not None and self._curve is not None:
            origin = os.path.basename(self._curve.allowed.get(key, "?"))
        else:
            origin = frame.get("Peer-Address") or "?"
        if self._watch is not None:
            self._watch.doRead()  # its connection is known before the session starts (see close())
        peer = ZmqPeer(self, routing_id, user_id, origin)
        peer.since = self._reactor.seconds()
        try:
            peer.fd = int(frame.get(zmq.SRCFD))
        except (zmq.ZMQError, TypeError, ValueError):
            pass
        self._peers[routing_id] = peer
        if peer.fd >= 0:
            self._by_fd.setdefault(peer.fd, set()).add(peer)
        self._admit_stranger(peer)
        self._sink.peer_connected(peer)
        return peer

    def _admit_stranger(self, peer: ZmqPeer) -> None:
        """Keep at most ``limits.zmq_max_pending`` sessions without an accepted hello, none older than
        ``limits.hello_timeout``: a peer cycling routing ids must not make us hold a session for each."""
        strangers = self._strangers
        limits = self._limits
        too_old = self._reactor.seconds() - limits.hello_timeout
        while strangers:
            oldest = next(iter(strangers.values()))
            if len(strangers) < limits.zmq_max_pending and oldest.since > too_old:
                break
            self._ended(oldest, "no accepted hello in time (limits.hello_timeout, limits.zmq_max_pending)")
        strangers[peer._routing_id] = peer

    def _drop_large(self, peer: Optional[ZmqPeer], frame: Any, size: int) -> None:
        """Drop a large frame from a stranger; logged at most once per DROP_LOG_INTERVAL."""
        self.dropped_large += 1
        self._dropped_unlogged += 1
        now = self._reactor.seconds()
        if now - self._dropped_logged_at < DROP_LOG_INTERVAL:
            return
        log.warn(
            "{listener}: dropped {n} message(s) over {limit} bytes from peers that have not said hello, "
            "the last of {size} bytes from {origin} (limits.max_hello_frame)",
            listener=self.description,
            n=self._dropped_unlogged,
            limit=self._limits.max_hello_frame,
            size=size,
            origin=peer.description if peer is not None else (frame.get("Peer-Address") or "?"),
        )
        self._dropped_logged_at = now
        self._dropped_unlogged = 0

    def _ended(self, peer: ZmqPeer, reason: str) -> None:
        """``peer``'s session is over for certain: forget it and tell the sink."""
        if peer.forgotten:
            return
        self._forget(peer, reason)
        try:
            self._sink.peer_disconnected(peer, reason)
        except Exception:
            log.failure("{listener}: handler failed on the departure of {peer}", listener=self.description, peer=peer)

    def _rejected(
        self, peer: Optional[ZmqPeer], routing_id: bytes, frame: Any, error: MessageError, payload: bytes
    ) -> None:
        """Let the sink answer a bad frame: the peer stays, so it can be told."""
        sink = self._sink
        assert IRejectionObserver.providedBy(sink)  # only called for such a sink (see _read)
        try:
            if peer is None:
                peer = self._new_peer(routing_id, frame)
            sink.message_rejected(peer, error, payload)
        except Exception:
            log.failure("{listener}: handler failed on a rejected frame", listener=self.description)

    def _connection_closed(self, fd: int, opened: float) -> None:
        """The monitor saw the connection on ``fd`` close: its sessions are over, at once, so
        that a later connection reusing their routing id cannot receive what was meant for them."""
        for peer in list(self._by_fd.pop(fd, ())):
            if peer.since >= opened and not peer.forgotten:
                self._forget(peer, "its connection closed")
                self._reactor.callLater(0, self._tell_gone, peer, "its connection closed")

    def _send_to(self, peer: ZmqPeer, data: bytes) -> None:
        conn = self._conn
        sock = conn.socket
        if sock is None:
            log.debug("{listener} is stopped: dropped a message", listener=self.description)
            return
        watch = self._watch
        if watch is not None and peer.fd >= 0:
            # A departure the monitor has reported but we have not read yet
            # must end the session before anything is sent to its routing id.
            watch.poll()
            if peer.forgotten:
                return
        try:
            _send(sock, peer._routing_id, _SNDMORE_NOBLOCK)
            _send(sock, data, _NOBLOCK)
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                # Its connection is gone, so is the session: a later connection
                # with the same routing id must not get what was meant for it.
                log.debug("{peer} is not connected: dropped a message", peer=peer.description)
                self._forget(peer, "its connection closed")
                self._reactor.callLater(0, self._tell_gone, peer, "its connection closed")
            elif e.errno == zmq.EAGAIN:
                # It does not read: stop here rather than let it make us hold more,
                # and let the role handle it as a departure (as a stream peer's).
                reason = (
                    f"{self._limits.zmq_send_hwm} messages are queued for it and it does not read "
                    "(limits.zmq_send_hwm)"
                )
                log.warn("{peer}: {reason}; its session ends", peer=peer.description, reason=reason)
                self._forget(peer, reason)
                # ...and its connection, so that ZeroMQ lets go of what is queued for it.
                if self._watch is not None and peer.fd >= 0:
                    self._watch.close(peer.fd, peer.since)
                self._reactor.callLater(0, self._tell_gone, peer, reason)
            else:
                log.warn("cannot send to {peer}: {error}", peer=peer.description, error=str(e))
        # Any send, failed or not, may consume the edge-triggered read
        # notification: always look at the socket again.
        if conn.read_scheduled is None:
            conn.schedule_read()

    def _accepted(self, peer: ZmqPeer) -> None:
        self._strangers.pop(peer._routing_id, None)
        if self._watch is not None and peer.fd >= 0 and not peer.forgotten:
            self._watch.accept(peer.fd)

    def _tell_gone(self, peer: ZmqPeer, reason: str) -> None:
        """The sink learns (on its own reactor turn, not inside a send) that ``peer`` is gone."""
        try:
            self._sink.peer_disconnected(peer, reason)
        except Exception:
            log.failure("{listener}: handler failed on the departure of {peer}", listener=self.description, peer=peer)

    def _forget(self, peer: ZmqPeer, reason: str) -> None:
        routing_id = peer._routing_id
        if self._peers.get(routing_id) is peer:
            del self._peers[routing_id]
            log.info("{peer} forgotten: {reason}", peer=peer.description, reason=reason)
        if self._strangers.get(routing_id) is peer:
            del self._strangers[routing_id]
        on_fd = self._by_fd.get(peer.fd)
        if on_fd is not None:
            on_fd.discard(peer)
            if not on_fd:
                del self._by_fd[peer.fd]
        peer.forgotten = True

    def stop(self) -> Deferred:
        for peer in self._peers.values():
            peer.forgotten = True
        self._peers.clear()
        self._strangers.clear()
        self._by_fd.clear()
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._conn.socket is not None:
            self._conn.shutdown()
            log.info("stopped listening on {endpoint}", endpoint=self.connect_endpoint)
        release, self._release_curve = self._release_curve, None
        if release is not None:
            release()
        return succeed(None)

    def __repr__(self) -> str:
        return f"<ZmqListener {self.connect_endpoint}>"


# ---------------------------------------------------------------------------
# Connecting side: DEALER
# ---------------------------------------------------------------------------


@implementer(IPeer)
class ZmqServerPeer:
    """The server as a :class:`ZmqConnection` sees it; the same object across reconnections."""

    def __init__(self, connection: ZmqConnection, endpoint: str) -> None:
        self._connection = connection
        self.address = endpoint.encode()
        self.description = endpoint

    def send(self, message: Any) -> None:
        self._connection._send(message.dump())

    def disconnect(self, reason: str = "disconnected") -> None:
        """Drop the current link; like :meth:`ZmqConnection.reconnect` (use ``stop`` to end for good)."""
        log.info("dropping the link to {peer}: {reason}", peer=self.description, reason=reason)
        self._connection.reconnect()

    def accepted(self) -> None:
        """Nothing to lift: a connecting side trusts the server it chose."""

    def __repr__(self) -> str:
        return f"<ZmqServerPeer {self.description}>"


@implementer(IConnection)
class ZmqConnection:
    """A DEALER socket connected to a ROUTER; ZeroMQ itself reconnects it.

    ``peer_connected`` comes on the next reactor turn after the socket is
    opened (at creation and after each :meth:`reconnect`, which opens a fresh
    socket, i.e. a new identity); ``peer_disconnected`` comes at once when
    :meth:`reconnect` or :meth:`stop` closes the socket.
    """

    def __init__(self, reactor: Any, context: zmq.Context, endpoint: str, sink: IMessageSink, limits: Limits) -> None:
        address, self._curve = curve.client_settings(endpoint)  # the ?curve-... query, see curve.py
        self._address = _zmq_address(address)
        self._reactor = reactor
        self._context = context
        self._sink = sink
        self._limits = limits
        self._conn: Any = None
        self._generation = 0
        #: The server has said something on the current socket (so it is there).
        self._heard = False
        self.stopped = False
        self.peer = ZmqServerPeer(self, endpoint)
        self._open()

    def _open(self) -> None:
        conn = _new_socket(self._reactor, self._context, zmq.DEALER, self._read, self._limits)
        # ZeroMQ reconnects by itself; back off (doubling from 100 ms) to
        # RECONNECT_MAX_MS while the backend is away, instead of retrying
        # every 100 ms forever.
        conn.socket.set(zmq.RECONNECT_IVL, 100)
        conn.socket.set(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
        try:
            if self._curve is not None:
                curve.secure_connection(conn.socket, self._curve)
            conn.socket.connect(self._address)
        except zmq.ZMQError as e:
            conn.shutdown()
            raise ValueError(f"cannot connect to {self.peer.description}: {e}") from e
        self._conn = conn
        self._heard = False
        self._generation += 1
        self._reactor.callLater(0, self._announce, self._generation)

    def _announce(self, generation: int) -> None:
        if generation != self._generation or self._conn is None:
            return  # that socket was closed before it could be announced
        try:
            self._sink.peer_connected(self.peer)
        except Exception:
            log.failure("handler failed on connection to {peer}", peer=self.peer.description)

    def _close(self, reason: str) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.shutdown()
        try:
            self._sink.peer_disconnected(self.peer, reason)
        except Exception:
            log.failure("handler failed on disconnection from {peer}", peer=self.peer.description)

    def _read(self, socket: zmq.Socket) -> bool:
        sink = self._sink
        peer = self.peer
        for _ in range(READ_BATCH):
            try:
                payload = _recv(socket, _NOBLOCK)
            except _Again:
                return False
            if _get(socket, _RCVMORE):
                n = 1 + _discard_rest(socket)
                log.warn(
                    "{peer}: dropped a message of {frames} frames (expected one)",
                    peer=peer.description,
                    frames=n,
                )
                continue
            self._heard = True
            try:
                message = _load(payload)
            except MessageError as e:
                log.warn("{peer}: dropped an undecodable message: {error}", peer=peer.description, error=str(e))
                continue
            try:
                sink.message_received(peer, message)
            except Exception:
                log.failure("{peer}: handler failed on {message!r}", peer=peer.description, message=message)
            if self._conn is None or self._conn.socket is not socket:  # reconnected or stopped meanwhile
                return False
        return True

    def _send(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            log.debug("connection to {peer} is stopped: dropped a message", peer=self.peer.description)
            return
        try:
            _send(conn.socket, data, _NOBLOCK)
        except zmq.ZMQError as e:
            log.warn("cannot send to {peer}: {error}; dropped a message", peer=self.peer.description, error=str(e))
        if conn.read_scheduled is None:  # see ZmqListener._send_to
            conn.schedule_read()

    def reconnect(self) -> None:
        if self.stopped:
            return
        self._close("reconnecting")
        if self._conn is None and not self.stopped:  # a handler may have reconnected already
            self._open()

    def stop(self) -> Deferred:
        """Close for good; fires once what was sent has been written out.

        ZeroMQ cannot tell whether a server is there, so the socket lingers
        (at most :data:`FLUSH_GRACE` seconds) only if the server has spoken on
        it: stopping towards an absent server stays immediate.  The socket's
        monitor reports when libzmq has finished with it.
        """
        self.stopped = True
        conn = self._conn
        if conn is None or not self._heard:
            self._close("connection stopped")
            return succeed(None)
        monitor = conn.socket.get_monitor_socket(zmq.EVENT_MONITOR_STOPPED)
        conn.socket.set(zmq.LINGER, int(FLUSH_GRACE * 1000))
        self._close("connection stopped")
        return _socket_gone(self._reactor, monitor, FLUSH_GRACE + 1.0)

    def __repr__(self) -> str:
        return f"<ZmqConnection {self.peer.description}>"


def _socket_gone(reactor: Any, monitor: zmq.Socket, timeout: float) -> Deferred:
    """Fires once the closed socket ``monitor`` watches is destroyed (queued
    messages written, or its linger over), or after ``timeout`` seconds."""
    done: Deferred = Deferred()
    deadline = reactor.seconds() + timeout

    def check() -> None:
        try:
            while monitor.poll(0):
                if _monitor_event(monitor, 0)[0] == zmq.EVENT_MONITOR_STOPPED:
                    break
            else:
                if reactor.seconds() < deadline:
                    reactor.callLater(_FLUSH_POLL, check)
                    return
                log.warn("a stopped ZeroMQ socket was still flushing after {timeout} s", timeout=timeout)
        except zmq.ZMQError as e:
            log.warn("cannot watch a stopped ZeroMQ socket: {error}", error=str(e))
        monitor.close(linger=0)
        done.callback(None)

    check()
    return done


# ---------------------------------------------------------------------------
# The plugin
# ---------------------------------------------------------------------------


def check_zmq_endpoint(endpoint: str, listening: bool) -> None:
    """ValueError if ``endpoint`` is not a usable ZeroMQ address (and its CurveZMQ files unreadable)."""
    base, _ = curve.server_settings(endpoint) if listening else curve.client_settings(endpoint)
    address = _zmq_address(base)
    scheme, _, rest = address.partition("://")
    if scheme in ("tcp", "ws", "wss"):
        host, sep, port = rest.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad endpoint {endpoint!r}: no port (expected zmq:{scheme}://HOST:PORT)")
        port = port.split("/", 1)[0]
        if listening and port == "*":
            return
        if not port.isdigit() or int(port) > 65535 or (int(port) == 0 and not listening):
            raise ValueError(f"bad endpoint {endpoint!r}: {port!r} is not a port (expected zmq:{scheme}://HOST:PORT)")
    elif scheme in ("ipc", "inproc"):
        if not rest:
            raise ValueError(f"bad endpoint {endpoint!r}: no path (expected zmq:{scheme}:///PATH)")
    else:
        raise ValueError(
            f"bad endpoint {endpoint!r}: unsupported ZeroMQ transport {scheme!r} "
            "(expected zmq:tcp://HOST:PORT or zmq:ipc:///PATH)"
        )


@implementer(ITransport, IEndpointCheck)
class ZmqTransport:
    """Endpoints ``zmq:<ZeroMQ address>``; one ZeroMQ context per instance, made on first use."""

    name = "zmq"

    def __init__(self, context: Optional[zmq.Context] = None) -> None:
        self._context = context

    @property
    def context(self) -> zmq.Context:
        if self._context is None:
            self._context = zmq.Context(io_threads=1)
        return self._context

    def handles(self, endpoint: str) -> bool:
        return isinstance(endpoint, str) and endpoint.startswith(PREFIX)

    def check(self, endpoint: str, listening: bool) -> None:
        check_zmq_endpoint(endpoint, listening)

    def listen(self, reactor: Any, endpoint: str, sink: IMessageSink, limits: Limits = _DEFAULT_LIMITS) -> Deferred:
        try:
            return succeed(ZmqListener(reactor, self.context, endpoint, sink, limits))
        except ValueError:
            return fail()

    def connect(
        self, reactor: Any, endpoint: str, sink: IMessageSink, limits: Limits = _DEFAULT_LIMITS
    ) -> ZmqConnection:
        return ZmqConnection(reactor, self.context, endpoint, sink, limits)

    def close(self) -> None:
        """Terminate the context (every socket made through it must be closed first)."""
        if self._context is not None:
            self._context.term()
            self._context = None
