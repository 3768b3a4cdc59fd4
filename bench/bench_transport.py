"""Transport micro-benchmark: round trips per second on loopback.

    python bench/bench_transport.py [--seconds 2] [--window 1000] [--message job|ping]
                                    [--kinds zmq-tcp,zmq-ipc,tcp,unix] [--split]

An echo server answers every message with the same message; the client keeps
``--window`` messages in flight and sends a new one for each answer.  Each
round trip is two messages, each encoded, sent, received and decoded once.
Rates are given per wall-clock second and per CPU second of the reactor
thread (ZeroMQ's I/O threads not included), the latter being steadier when
other work shares the machine.

By default both ends share one process and one core, so the figure is a lower
bound on what one side can do.  With ``--split`` the echo server runs in a
child process (its own core), which is closer to a backend serving clients.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Tuple

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import react
from zope.interface import implementer

from inginious_tx.interfaces import IMessageSink
from inginious_tx.messages import ClientNewJob, Ping
from inginious_tx.transport import Limits
from inginious_tx.transport.stream import StreamTransport
from inginious_tx.transport.zmq import ZmqTransport

MESSAGES = {
    "ping": Ping(),
    "job": ClientNewJob(
        "6f1c", 0, "LINFO1101", "hello", {"q1": "print('hi')", "@lang": "fr"}, "default",
        False, 30, 90, 200, False, "webapp/user:alice", None,
    ),
}  # fmt: skip


def endpoints(tmp: str) -> Dict[str, Any]:
    return {
        "zmq-tcp": (ZmqTransport, "zmq:tcp://127.0.0.1:*"),
        "zmq-ipc": (ZmqTransport, f"zmq:ipc://{tmp}/bench.ipc"),
        "tcp": (StreamTransport, "tcp:0"),
        "unix": (StreamTransport, f"unix:{tmp}/bench.sock"),
    }


@implementer(IMessageSink)
class Echo:
    """Answers every message with itself."""

    def peer_connected(self, peer: Any) -> None:
        pass

    def peer_disconnected(self, peer: Any, reason: str) -> None:
        pass

    def message_received(self, peer: Any, message: Any) -> None:
        peer.send(message)


@implementer(IMessageSink)
class Pinger:
    """Keeps ``window`` messages in flight until told to stop; counts answers."""

    def __init__(self, message: Any, window: int) -> None:
        self.message = message
        self.window = window
        self.answers = 0
        self.running = True
        self.connected: Deferred = Deferred()

    def peer_connected(self, peer: Any) -> None:
        if not self.connected.called:
            self.connected.callback(peer)

    def peer_disconnected(self, peer: Any, reason: str) -> None:
        pass

    def message_received(self, peer: Any, message: Any) -> None:
        self.answers += 1
        if self.running:
            peer.send(self.message)


async def measure(
    reactor: Any, transport: Any, endpoint: str, message: Any, window: int, seconds: float
) -> Tuple[float, float]:
    """Round trips per second from a client of ``endpoint``: per wall-clock
    second, and per CPU second of the reactor thread (steadier on a busy machine)."""
    pinger = Pinger(message, window)
    conn = transport.connect(reactor, endpoint, pinger, Limits())
    peer = await pinger.connected
    for _ in range(window):  # warm up and fill the window
        peer.send(message)
    warmup: Deferred = Deferred()
    reactor.callLater(min(0.5, seconds / 4), warmup.callback, None)
    await warmup
    start_answers, start, start_cpu = pinger.answers, reactor.seconds(), time.thread_time()
    done: Deferred = Deferred()
    reactor.callLater(seconds, done.callback, None)
    await done
    answers = pinger.answers - start_answers
    rate = answers / (reactor.seconds() - start)
    cpu_rate = answers / max(time.thread_time() - start_cpu, 1e-9)
    pinger.running = False
    await conn.stop()
    return rate, cpu_rate


async def run(reactor: Any, options: argparse.Namespace) -> None:
    message = MESSAGES[options.message]
    tmp = tempfile.mkdtemp(prefix="itx-bench-")
    print(
        f"message={options.message} ({len(message.dump())} bytes) window={options.window} "
        f"seconds={options.seconds} {'server in a child process' if options.split else 'one process, one core'}"
    )
    for kind in options.kinds.split(","):
        transport_class, endpoint = endpoints(tmp)[kind]
        child = None
        listener = None
        if options.split:
            child = subprocess.Popen(
                [sys.executable, __file__, "--serve", kind, "--tmp", tmp], stdout=subprocess.PIPE, text=True
            )
            where = child.stdout.readline().strip()  # type: ignore[union-attr]
        else:
            listener = await transport_class().listen(reactor, endpoint, Echo(), Limits())
            where = listener.connect_endpoint
        try:
            rate, cpu_rate = await measure(reactor, transport_class(), where, message, options.window, options.seconds)
        finally:
            if listener is not None:
                await listener.stop()
            if child is not None:
                child.terminate()
                child.wait()
        print(
            f"{kind:8s} {rate:10,.0f} round trips/s {2 * rate:10,.0f} messages/s"
            f"   per reactor-thread CPU second: {cpu_rate:10,.0f} round trips {2 * cpu_rate:10,.0f} messages"
        )
    shutil.rmtree(tmp, ignore_errors=True)


def serve(kind: str, tmp: str) -> None:
    """Child process of ``--split``: an echo server that prints where it listens."""

    async def main(reactor: Any) -> None:
        transport_class, endpoint = endpoints(tmp)[kind]
        listener = await transport_class().listen(reactor, endpoint, Echo(), Limits())
        print(listener.connect_endpoint, flush=True)
        await Deferred()  # until terminated

    react(lambda reactor: ensureDeferred(main(reactor)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--window", type=int, default=1000, help="messages in flight")
    parser.add_argument("--message", choices=sorted(MESSAGES), default="job")
    parser.add_argument("--kinds", default="zmq-tcp,zmq-ipc,tcp,unix")
    parser.add_argument("--split", action="store_true", help="run the echo server in a child process")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        serve(options.serve, options.tmp)
        return
    react(lambda reactor: ensureDeferred(run(reactor, options)))


if __name__ == "__main__":
    main()
