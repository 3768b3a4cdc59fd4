"""Load generator for an INGInious-wire backend, over ZeroMQ or TCP.

It plays fake agents (each answers a ``backend_new_job`` at once with
``agent_job_started`` then ``agent_job_done``) and clients that keep a window
of jobs in flight until the asked number is done, all in one process around
one poller, and prints one JSON line with throughput and latency.

    python bench/loadgen_tx.py --agents-endpoint zmq:tcp://127.0.0.1:2001 \\
        --clients-endpoint zmq:tcp://127.0.0.1:2000 --agents 4 --slots 8 --clients 2 --window 64 --jobs 5000

Endpoints: ``zmq:tcp://HOST:PORT`` (DEALER sockets) or ``tcp:HOST:PORT``
(4-byte big-endian length-prefixed frames).  Plain pyzmq and sockets: it
does not use the code under test.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from typing import Dict, List

import msgpack
import zmq

_pack = msgpack.Packer(use_bin_type=True).pack


def _unpack(data: bytes) -> dict:
    return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False)


class ZmqLink:
    """One DEALER socket: a peer of the backend."""

    def __init__(self, ctx: zmq.Context, address: str):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(address)
        self.pollable = self.sock

    def send(self, payload: bytes) -> None:
        self.sock.send(payload, copy=len(payload) > 4096)

    def receive(self) -> List[bytes]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                return out

    def close(self) -> None:
        self.sock.close(0)


class TcpLink:
    """One TCP connection with length-prefixed frames."""

    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.pollable = self.sock.fileno()
        self._in = bytearray()
        self._out = bytearray()

    def send(self, payload: bytes) -> None:
        self._out += struct.pack(">I", len(payload)) + payload
        self.flush()

    def flush(self) -> None:
        while self._out:
            try:
                n = self.sock.send(self._out)
            except BlockingIOError:
                return
            del self._out[:n]

    def receive(self) -> List[bytes]:
        self.flush()
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                raise ConnectionError("backend closed the connection")
            self._in += chunk
            if len(chunk) < (1 << 20):
                break
        out = []
        buf = self._in
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = struct.unpack_from(">I", buf, pos)
            if len(buf) - pos - 4 < n:
                break
            out.append(bytes(buf[pos + 4 : pos + 4 + n]))
            pos += 4 + n
        del buf[:pos]
        return out

    def close(self) -> None:
        self.sock.close()


def open_link(ctx: zmq.Context, endpoint: str):
    if endpoint.startswith("zmq:"):
        return ZmqLink(ctx, endpoint[4:])
    if endpoint.startswith("tcp:"):
        host, port = endpoint[4:].rsplit(":", 1)
        return TcpLink(host, int(port))
    raise SystemExit(f"unsupported endpoint {endpoint!r}: use zmq:tcp://HOST:PORT or tcp:HOST:PORT")


def job_message(job_id: str, env: str) -> bytes:
    return _pack({
        "job_id": job_id, "priority": 0, "course_id": "bench", "task_id": "noop", "inputdata": {"q": "x"},
        "debug": False, "environment": env, "enable_network": False, "time_limit": 30, "hard_time_limit": None,
        "mem_limit": 100, "launcher": "loadgen-tx", "run_cmd": None, "type": "client_new_job",
    })  # fmt: skip


def done_message(job_id) -> bytes:
    return _pack({
        "job_id": job_id, "result": ("success", "ok"), "grade": 100.0, "problems": {}, "tests": {}, "custom": {},
        "state": "", "archive": None, "stdout": "", "stderr": "", "type": "agent_job_done",
    })  # fmt: skip


def run(a: argparse.Namespace) -> Dict:
    ctx = zmq.Context()
    poller = zmq.Poller()
    agents = [open_link(ctx, a.agents_endpoint) for _ in range(a.agents)]
    clients = [open_link(ctx, a.clients_endpoint) for _ in range(a.clients)]
    role = {}
    for i, link in enumerate(agents):
        role[id(link)] = "agent"
        link.send(_pack({"friendly_name": f"lg-agent-{i}", "available_job_slots": a.slots,
                         "available_containers": {a.env: {"id": "sha256:bench", "created": 0, "ports": ()}},
                         "type": "agent_hello"}))  # fmt: skip
    for i, link in enumerate(clients):
        role[id(link)] = "client"
        link.send(_pack({"name": f"lg-client-{i}", "type": "client_hello"}))
    links = {}
    for link in agents + clients:
        poller.register(link.pollable, zmq.POLLIN)
        links[link.pollable if not isinstance(link.pollable, int) else link.pollable] = link

    def poll(timeout_ms: int):
        for key, _ in poller.poll(timeout_ms):
            link = links[key]
            for payload in link.receive():
                yield link, _unpack(payload)

    pong = _pack({"type": "pong"})
    ready = set()
    deadline = time.monotonic() + 10
    while len(ready) < len(clients) and time.monotonic() < deadline:
        for link, m in poll(100):
            t = m.get("type")
            if t == "ping":
                link.send(pong)
            elif t == "backend_update_containers" and a.env in m["available_containers"]:
                ready.add(id(link))
    if len(ready) < len(clients):
        return {"error": "the backend never offered the environment"}

    sent_at: Dict[str, float] = {}
    in_flight = {id(c): 0 for c in clients}
    latencies: List[float] = []
    counters = {"submitted": 0, "done": 0, "started": 0, "non_success": 0, "duplicates": 0}
    answered = set()

    def top_up(link) -> None:
        while in_flight[id(link)] < a.window and counters["submitted"] < a.jobs:
            job_id = f"j{counters['submitted']}"
            counters["submitted"] += 1
            in_flight[id(link)] += 1
            sent_at[job_id] = time.perf_counter()
            link.send(job_message(job_id, a.env))

    started = time.perf_counter()
    for c in clients:
        top_up(c)
    give_up = started + a.timeout
    while counters["done"] < a.jobs and time.perf_counter() < give_up:
        for link, m in poll(200):
            t = m["type"]
            if t == "backend_new_job":
                job_id = m["job_id"]
                link.send(_pack({"job_id": job_id, "type": "agent_job_started"}))
                link.send(done_message(job_id))
            elif t == "backend_job_done":
                job_id = m["job_id"]
                if job_id in answered:
                    counters["duplicates"] += 1
                    continue
                answered.add(job_id)
                latencies.append(time.perf_counter() - sent_at.pop(job_id))
                counters["done"] += 1
                if m["result"][0] != "success":
                    counters["non_success"] += 1
                in_flight[id(link)] -= 1
                top_up(link)
            elif t == "backend_job_started":
                counters["started"] += 1
            elif t == "ping":
                link.send(pong)
    elapsed = time.perf_counter() - started
    for link in agents + clients:
        link.close()
    ctx.term()
    latencies.sort()

    def pct(q: float):
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 3) if latencies else None

    return {
        "jobs_asked": a.jobs, "jobs_done": counters["done"], "seconds": round(elapsed, 3),
        "jobs_per_s": round(counters["done"] / elapsed, 1), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
        "started_msgs": counters["started"], "non_success": counters["non_success"],
        "duplicates": counters["duplicates"], "lost": a.jobs - counters["done"],
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents-endpoint", required=True)
    p.add_argument("--clients-endpoint", required=True)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--env", default="default")
    result = run(p.parse_args())
    print(json.dumps(result))
    sys.stdout.flush()
    return 0 if result.get("lost") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
