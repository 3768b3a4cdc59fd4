"""A malformed job from a ZeroMQ client gets a clear answer, and nothing else changes.

On ZeroMQ the backend cannot drop one peer's connection (one socket serves
them all), so it must not leave the client waiting forever either: the job
is answered ``crash`` with the decode error, naming the field at fault.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest_twisted
import zmq
from test_backend_core import World, new_jobs
from zope.interface.verify import verifyObject

from inginious_tx.backend.service import BackendService
from inginious_tx.backend.testing import job_done, new_job
from inginious_tx.dispatch import Dispatcher
from inginious_tx.interfaces import IBackendClientHandler, IRejectionObserver
from inginious_tx.messages import BackendJobDone, MessageError, MessageMeta, Unknown


def bad_job(job_id: Any = "bad", **wrong: Any) -> bytes:
    """The encoding of ``new_job(job_id)`` with some fields replaced."""
    fields = dict(new_job("placeholder").__dict__, job_id=job_id, **wrong)
    return msgpack.packb({**fields, "type": "client_new_job"}, use_bin_type=True)


def rejection(payload: bytes) -> MessageError:
    try:
        MessageMeta.load(payload)
    except MessageError as e:
        return e
    raise AssertionError("the payload decoded")


def reject(world: World, client: Any, payload: bytes) -> None:
    world.backend.client_sink().message_rejected(client.backend_peer, rejection(payload), payload)
    world.pump()


def test_the_client_handler_and_dispatcher_observe_rejections():
    world = World()
    verifyObject(IRejectionObserver, world.backend.client_handler)
    verifyObject(IBackendClientHandler, world.backend.client_handler)
    assert IRejectionObserver.providedBy(Dispatcher(world.backend.client_handler, IBackendClientHandler))


def test_a_malformed_job_is_answered_crash_naming_the_field():
    world = World()
    agent = world.agent(slots=1)
    c = world.client()
    c.send(new_job("good"))
    c.take()
    reject(world, c, bad_job("bad", time_limit="thirty"))
    (answer,) = c.take()
    assert isinstance(answer, BackendJobDone) and answer.job_id == "bad"
    assert answer.result[0] == "crash"
    assert "invalid job" in answer.result[1] and "time_limit" in answer.result[1]
    # nothing else moved: the good job still runs, nothing was queued
    assert new_jobs(agent) == [(c.address, "good")]
    assert world.backend.waiting_count == 0 and world.backend.running_count == 1
    agent.send(job_done((c.address, "good")))
    assert c.results() == {"good": ("success", "ok")}


def test_no_answer_when_there_is_nobody_or_nothing_to_answer():
    world = World()
    world.agent(slots=1)
    c = world.client()
    c.send(new_job("running"))
    c.take()
    reject(world, c, bad_job("running", priority="high"))  # its id is a job it has: leave that job alone
    reject(world, c, bad_job(12, priority="high"))  # no usable id
    reject(world, c, b"\x81\xa4type\xa9ping-pong")  # not a job at all
    assert c.take() == []
    assert world.backend.running_count == 1
    stranger = world.client("stranger", hello=False)
    reject(world, stranger, bad_job("x", priority="high"))
    assert stranger.take() == [Unknown()]


@pytest_twisted.ensureDeferred
async def test_over_zeromq_an_inginious_client_gets_an_answer(until: Any, closers: list) -> None:
    from twisted.internet import reactor

    service = BackendService(reactor, ["zmq:tcp://127.0.0.1:*"], ["zmq:tcp://127.0.0.1:*"], shutdown_grace=0)
    service.startService()
    closers.append(service.stopService)
    clients, agents = await service.ready
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    closers.append(sock.close)
    sock.connect(clients.connect_endpoint[len("zmq:") :])
    got: list = []

    def received() -> bool:
        while True:
            try:
                got.append(msgpack.unpackb(sock.recv(zmq.NOBLOCK), raw=False))
            except zmq.Again:
                return any(m["type"] == "backend_job_done" for m in got)

    sock.send(msgpack.packb({"type": "client_hello", "name": "raw"}))
    await until(lambda: received() or any(m["type"] == "backend_update_containers" for m in got), 5, "hello")
    sock.send(bad_job("raw-1", inputdata=["not", "a", "dict"]))
    await until(received, 5, "the answer to the malformed job")
    (done,) = [m for m in got if m["type"] == "backend_job_done"]
    assert done["job_id"] == "raw-1" and done["result"][0] == "crash"
    assert "inputdata" in done["result"][1]
    assert service.backend.waiting_count == 0
