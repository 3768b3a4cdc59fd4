"""The client side of the protocol: submit jobs to a backend from a Twisted application.

Example::

    client = Client(reactor, "zmq:tcp://127.0.0.1:2000", name="my-app").start()
    result = await client.new_job("course", "task", {"q1": "42"})
    print(result.result, result.grade)
"""

from .core import BackendUnavailable, Client, EnvironmentUnavailable, connect_client
from .result import UNAVAILABLE, ClientJobResult, QueueSnapshot, RunningJob, WaitingJob

__all__ = [
    "Client",
    "connect_client",
    "BackendUnavailable",
    "EnvironmentUnavailable",
    "ClientJobResult",
    "QueueSnapshot",
    "RunningJob",
    "WaitingJob",
    "UNAVAILABLE",
]
