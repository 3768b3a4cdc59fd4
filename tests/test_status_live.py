"""The live status page: ring buffers, the recorder (job observer + sampler),
the SVG charts, ``/history.json`` and the ``/events`` stream.

Unit tests drive a :class:`Backend` and a :class:`StatusRecorder` on a
``Clock``; the integration test runs a ``BackendService`` and a
``StatusService`` (sampling every 50 ms) on real sockets with fake agents and
a fake client over TCP, and reads the pages and the event stream over HTTP.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Tuple

import pytest
import pytest_twisted
from test_backend_integration import NetAgent, NetClient
from test_status import HOSTILE, fetch, running_backend
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.web.client import Agent
from zope.interface.verify import verifyObject

from inginious_tx.backend.charts import heatmap, line_chart, nice_ceiling
from inginious_tx.backend.core import TIME_BUCKETS, Backend, BackendSettings
from inginious_tx.backend.policies import FairPolicy
from inginious_tx.backend.status import StatusService, render_html, status_snapshot
from inginious_tx.backend.testing import FakePeer, agent_hello, job_done, new_job
from inginious_tx.backend.timeseries import ABSENT, OTHER, Series, SeriesGroup, StatusRecorder, percentile
from inginious_tx.interfaces import IJobObserver
from inginious_tx.messages import BackendNewJob, ClientHello, ClientKillJob

# -- ring buffers -----------------------------------------------------------------------


def test_a_series_keeps_the_newest_values_in_order_and_their_sum() -> None:
    s = Series(5)
    for tick in range(12):
        s.write(tick, tick)
    assert list(s.last(12, 5)) == [7, 8, 9, 10, 11]
    assert list(s.last(12, 2)) == [10, 11]
    assert s.total == sum([7, 8, 9, 10, 11])
    young = Series(5)
    young.write(0, 3)
    young.write(1, 4)
    assert list(young.last(2, 5)) == [3, 4]  # not more than was written


def test_a_series_group_is_bounded_and_forgets_empty_series() -> None:
    g = SeriesGroup(capacity=4, limit=2)
    g.record(0, {"a": 1, "b": 2, "c": 3, "d": 4})
    assert set(g.series) == {"a", "b", OTHER}
    assert list(g.series[OTHER].last(1, 1)) == [7]  # c + d
    for tick in range(1, 5):
        g.record(tick, {"a": 1})
    # b and (other) held only zeros for a whole history: gone
    assert set(g.series) == {"a"}
    assert g.top(5) == ["a"]


def test_busy_series_mark_absent_agents() -> None:
    g = SeriesGroup(capacity=4, limit=10, typecode="H", absent=ABSENT)
    g.record(0, {"agent": 2})
    g.record(1, {})
    assert list(g.series["agent"].last(2, 2)) == [2, ABSENT]
    assert g.series["agent"].total == 2


def test_percentiles_interpolate_within_buckets_like_prometheus() -> None:
    counts = [0.0] * (len(TIME_BUCKETS) + 1)
    assert percentile(counts, 0.5) is None
    i1 = TIME_BUCKETS.index(1)
    counts[i1] = 10  # ten jobs between 0.5 s and 1 s
    assert percentile(counts, 0.5) == pytest.approx(0.75)
    assert percentile(counts, 1.0) == pytest.approx(1.0)
    counts[-1] = 90  # beyond the last bound
    assert percentile(counts, 0.99) == TIME_BUCKETS[-1]


# -- the recorder on a fake clock ----------------------------------------------------


def recorded(seconds: int = 600) -> Tuple[Clock, Backend, StatusRecorder, FakePeer, FakePeer]:
    clock = Clock()
    clock.advance(1000)
    backend = Backend(clock, FairPolicy(), BackendSettings())
    client, agent = FakePeer(b"c", "client-peer"), FakePeer(b"a", "agent-peer")
    backend.client_handler.client_hello(client, ClientHello("the-client"))
    # jobs waiting before the recorder starts are counted once
    backend.client_handler.client_new_job(client, new_job("early", environment="py"))
    recorder = StatusRecorder(backend, clock, seconds)
    verifyObject(IJobObserver, recorder)
    recorder.start()
    return clock, backend, recorder, client, agent


def test_the_recorder_follows_every_path_of_a_job() -> None:
    clock, backend, recorder, client, agent = recorded()
    h, a = backend.client_handler, backend.agent_handler

    def agree() -> None:
        assert recorder.waiting_per_environment() == backend.waiting_per_environment()

    agree()
    for i in range(5):
        h.client_new_job(client, new_job(f"p{i}", environment="py"))
    h.client_new_job(client, new_job("kill-me", environment="py"))
    h.client_kill_job(client, ClientKillJob("kill-me"))  # killed while waiting
    agree()
    a.agent_hello(agent, agent_hello("worker", 2, ["py"]))  # two start
    agree()
    assert recorder.started == {"py": 2}
    running = agent.of_type(BackendNewJob)
    a.agent_job_done(agent, job_done(running[0].job_id, "success"))  # the next one starts
    agree()
    a.peer_disconnected(agent, "gone")  # its two jobs are queued again
    agree()
    assert recorder.requeued == 2
    other = FakePeer(b"c2", "other-client")
    h.client_hello(other, ClientHello("other"))
    h.client_new_job(other, new_job("x", environment="java"))
    h.peer_disconnected(other, "closed")  # dropped while waiting
    agree()
    backend.shutdown()  # everything answered
    agree()
    assert recorder.waiting_per_environment() == {}
    recorder.stop()


def test_history_matches_the_counters() -> None:
    clock, backend, recorder, client, agent = recorded()
    h, a = backend.client_handler, backend.agent_handler
    a.agent_hello(agent, agent_hello("worker", 3, ["py"]))
    assert len(agent.take()) == 1  # "early" runs, and stays running
    results = ["success", "failed", "success", "crash", "success", "error"]
    for second, kind in enumerate(results):
        h.client_new_job(client, new_job(f"j{second}", environment="py"))
        clock.advance(0.5)
        [sent] = [m for m in agent.take() if isinstance(m, BackendNewJob)]
        a.agent_job_done(agent, job_done(sent.job_id, kind))
        clock.advance(0.5)  # a sample
    for i in range(4):
        h.client_new_job(client, new_job(f"w{i}", environment="nobody"))
    clock.advance(1)
    view = recorder.history.view(100)  # one point per sample
    assert view["step"] == 1
    # jobs per second, summed over the points, are the finished counters
    finished = {k: round(sum(v for v in pts if v is not None) * view["step"]) for k, pts in view["finished"].items()}
    assert finished == backend.stats.finished == {"success": 3, "failed": 1, "crash": 1, "error": 1}
    assert view["queue"]["nobody"][-1] == 4
    assert view["waiting"][-1] == backend.waiting_count == 4
    assert view["totals"]["slots"][-1] == 3 and view["slots"] == {"worker": 3}
    # run times: 0.5 s each
    p50 = [v for v in view["run"]["p50"] if v is not None]
    assert p50 and all(0.25 < v <= 0.5 for v in p50)
    # the event data is the sample
    assert recorder.latest is not None and recorder.latest["totals"]["waiting"] == 4


def test_the_sampler_runs_on_the_injected_clock_and_stops() -> None:
    clock, backend, recorder, _, _ = recorded(seconds=10)
    assert recorder.history.ticks == 1  # one sample at once
    clock.advance(1)
    clock.advance(1)
    assert recorder.history.ticks == 3
    for _ in range(30):
        clock.advance(1)
    assert recorder.history.ticks == 33  # the ring keeps 11 of them
    assert len(recorder.history.view(3600)["waiting"]) == 10
    recorder.stop()
    clock.advance(5)
    assert recorder.history.ticks == 33 and not clock.getDelayedCalls()
    assert recorder not in backend._observers


def test_a_failing_listener_is_logged_and_the_others_still_hear(log_events: Any) -> None:
    clock, _, recorder, _, _ = recorded()
    heard: List[Dict[str, Any]] = []

    def broken(sample: Dict[str, Any]) -> None:
        raise RuntimeError("broken listener")

    recorder.add_listener(broken)
    recorder.add_listener(heard.append)
    clock.advance(1)
    assert len(heard) == 1 and log_events.has("status listener")


# -- the page -----------------------------------------------------------------------


def test_the_page_escapes_every_name_in_charts_and_tables() -> None:
    clock, backend, recorder, client, agent = recorded()
    h, a = backend.client_handler, backend.agent_handler
    evil = FakePeer(b"e", "evil-peer")
    h.client_hello(evil, ClientHello(HOSTILE))
    a.agent_hello(agent, agent_hello(HOSTILE, 1, [HOSTILE]))
    h.client_new_job(evil, new_job("r", environment=HOSTILE, course_id=HOSTILE))
    h.client_new_job(evil, new_job("w", environment='"><svg onload=alert(1)>', course_id="c&d"))
    clock.advance(1)
    [sent] = agent.of_type(BackendNewJob)
    a.agent_job_done(agent, job_done(sent.job_id, HOSTILE))  # an unknown result type: "other"
    clock.advance(1)
    snap = status_snapshot(backend, clock.seconds(), recorder.waiting_per_environment())
    # ("early" of the-client waits for py, which nobody offers)
    assert snap["load"]["courses"] == {"c&d": [1, 0], "course": [1, 0]}
    assert snap["load"]["clients"] == {HOSTILE: [1, 0], "the-client": [1, 0]}
    page = render_html(snap, recorder.history.view(600))
    assert page.count("<svg") >= 6 + 1  # six charts and legend swatches
    assert "<script" not in page and "onload=" not in page.replace("onload=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;svg onload=alert(1)&gt;" in page and "c&amp;d" in page
    assert "Jobs per course" in page and "Jobs per client" in page
    assert '<meta http-equiv="refresh" content="2">' in page
    assert '<meta http-equiv="refresh"' not in render_html(snap, recorder.history.view(600), refresh=0)


def test_charts_draw_the_points_they_are_given() -> None:
    svg = line_chart("t", [("a", "#000000", [None, 1.0, 2.0, None, 4.0])], 300)
    [poly] = re.findall(r'<polyline points="([^"]+)"', svg)
    assert len(poly.split()) == 2  # the run 1, 2; then 4 alone is a dot
    assert svg.count("<circle") == 1
    assert ">5<" in svg  # y axis up to the nice ceiling of 4
    assert 'cy="58.4"' in svg  # 4 / 5 of the way from the bottom (188) to the top (26)
    assert "no data yet" in line_chart("t", [("a", "#000", [None, None])], 300)
    assert nice_ceiling(3.2) == 5 and nice_ceiling(101) == 200 and nice_ceiling(0.07) == pytest.approx(0.1)
    heat = heatmap("h", [("busy", 4, [0.0, 4.0, 4.0, None])], 60)
    assert heat.count("<rect") == 2 + 5  # idle run, busy run, legend


# -- over HTTP ------------------------------------------------------------------------


class _Events(Protocol):
    """Collects server-sent events as they arrive."""

    def __init__(self) -> None:
        self.buffer = b""
        self.events: List[Dict[str, Any]] = []
        self.finished: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            lines = block.decode().split("\n")
            if "event: sample" in lines:
                [data_line] = [line for line in lines if line.startswith("data: ")]
                self.events.append(json.loads(data_line[6:]))

    def connectionLost(self, reason: Any) -> None:
        self.finished.callback(None)


@pytest_twisted.ensureDeferred
async def test_live_page_history_and_event_stream_over_http(
    closers: list, until: Any, within: Any, monkeypatch: Any
) -> None:
    from twisted.internet import reactor

    from inginious_tx.backend import status as status_module

    backend_service, c_ep, a_ep = await running_backend(reactor, closers, within)
    status = StatusService(reactor, backend_service.backend, "tcp:0", history=60, sample_interval=0.05)
    status.startService()
    closers.append(status.stopService)
    port = await within(status.ready)
    base = f"http://127.0.0.1:{port.getHost().port}"

    # an event stream, open before anything happens
    response = await within(Agent(reactor).request(b"GET", (base + "/events").encode()))
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream; charset=utf-8"]
    events = _Events()
    response.deliverBody(events)
    await until(lambda: events.events, what="a first event")
    assert events.events[-1]["totals"]["agents"] == 0

    # HEAD answers at once (no stream is opened)
    head = await within(Agent(reactor).request(b"HEAD", (base + "/events").encode()))
    assert head.code == 200

    # a second stream beyond the limit is refused
    monkeypatch.setattr(status_module._EventStream, "MAX_STREAMS", 1)
    code, _, body = await within(fetch(base + "/events"))
    assert code == 503 and b"too many" in body

    worker = NetAgent(a_ep, "worker", slots=2)
    holder = NetAgent(a_ep, HOSTILE, slots=1, envs=("evil",), answer=False)
    client = NetClient(c_ep, "client")
    for closer in (worker, holder, client):
        closers.append(closer.connection.stop)
    await until(lambda: set(client.environments) == {"default", "evil"}, what="both agents")
    for i in range(4):
        client.send(new_job(f"ok-{i}", course_id="demo", task_id="pass"))
    client.send(new_job("held", environment="evil", course_id="demo"))
    client.send(new_job("stuck", environment="nobody", course_id="other"))
    await until(lambda: len(client.results) == 4 and holder.jobs, what="4 results, 1 held job")

    # updates arrive on the stream
    def caught_up() -> bool:
        last = events.events[-1]
        return last["totals"]["waiting"] == 1 and sum(last["finished"].values()) == 0 and last["totals"]["agents"] == 2

    await until(caught_up, what="an event with the new state")
    finished_in_events = sum(e["finished"].get("success", 0) for e in events.events)
    assert finished_in_events == 4
    last = events.events[-1]
    assert last["queue"] == {"default": 0, "evil": 0, "nobody": 1}
    assert last["agents"] == {"worker": [0, 2], HOSTILE: [1, 1]}

    # the history says the same
    code, headers, body = await within(fetch(base + "/history.json?window=60"))
    view = json.loads(body)
    assert code == 200 and headers["content-type"].startswith("application/json")
    assert round(sum(v for v in view["finished"]["success"] if v is not None) * view["step"]) == 4
    assert view["queue"]["nobody"][-1] == 1 and view["waiting"][-1] == 1
    assert view["busy"][HOSTILE][-1] == 1 and view["slots"][HOSTILE] == 1

    # the page: charts, per-course and per-client load, escaped names, the same CSP
    code, headers, body = await within(fetch(base + "/?window=60&refresh=5"))
    page = body.decode()
    assert code == 200 and headers["content-security-policy"] == "default-src 'none'; style-src 'unsafe-inline'"
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "Jobs waiting, per environment" in page and "Busy slots per agent" in page
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "<td>demo</td><td>0</td><td>1</td>" in page  # course demo: 0 waiting, 1 running
    assert "<td>other</td><td>1</td><td>0</td>" in page
    assert "<td>client</td><td>1</td><td>1</td>" in page
    code, _, body = await within(fetch(base + "/status.json"))
    assert json.loads(body)["load"]["clients"] == {"client": [1, 1]}
    # a bad window is the default, not an error
    code, _, _ = await within(fetch(base + "/?window=abc&refresh=-1"))
    assert code == 200

    # stopping the service ends the stream
    await status.stopService()
    await within(events.finished)
