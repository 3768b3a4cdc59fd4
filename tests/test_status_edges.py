"""The status page's rough edges (issue 20, item 10), on a Backend and a recorder on a ``Clock``.

Each test renders what a person would read (SVG text, table cells) and
checks it against the numbers behind it.
"""

from __future__ import annotations

import re
from typing import Any, List, Tuple

from twisted.internet.task import Clock

from inginious_tx.backend import status
from inginious_tx.backend.charts import heatmap, line_chart
from inginious_tx.backend.core import Backend, BackendSettings
from inginious_tx.backend.policies import FairPolicy
from inginious_tx.backend.status import render_charts, render_html, status_snapshot
from inginious_tx.backend.testing import FakePeer, agent_hello, job_done, new_job
from inginious_tx.backend.timeseries import StatusRecorder
from inginious_tx.messages import BackendNewJob, ClientHello


def _texts(svg: str) -> List[Tuple[float, float, str]]:
    """(x, y, text) of every ``<text>`` of an SVG."""
    out = []
    for m in re.finditer(r'<text x="([\d.]+)" y="([\d.]+)"[^>]*>([^<]*)', svg):
        out.append((float(m.group(1)), float(m.group(2)), m.group(3)))
    return out


def _legend(html: str, title: str) -> str:
    """The legend that follows the chart titled ``title``."""
    chart = html[html.index(f"<title>{title}") :]
    return chart[chart.index('<ul class="legend">') : chart.index("</ul>")]


def _world() -> Tuple[Clock, Backend, StatusRecorder]:
    clock = Clock()
    clock.advance(1000)
    backend = Backend(clock, FairPolicy(), BackendSettings(client_idle_timeout=1e9, client_silence_timeout=1e9))
    recorder = StatusRecorder(backend, clock, 600)
    recorder.start()
    return clock, backend, recorder


def test_wait_legends_give_the_windows_percentiles_and_sub_10_ms_reads_as_such() -> None:
    """Jobs that waited 5 s, then one that waited nothing: the legend is the window's p50
    (seconds, like most of the line), and a wait in the histograms' first bucket reads
    "<= 10 ms", on the legend and on the axis floor where it is drawn.

    On main the legend showed the newest point alone, made up inside the first bucket:
    "5 ms", under a line drawn at 5 s; the floor was labelled "10 ms"."""
    clock, backend, recorder = _world()
    client, agent = FakePeer(b"c", "client-peer"), FakePeer(b"a", "agent-peer")
    backend.client_handler.client_hello(client, ClientHello("front"))
    for i in range(6):
        backend.client_handler.client_new_job(client, new_job(f"slow{i}"))
    clock.advance(5)
    backend.agent_handler.agent_hello(agent, agent_hello("worker", 6, ["default"]))  # six waited 5 s
    for _ in range(30):
        clock.advance(1)
        recorder.sample()
    for m in agent.of_type(BackendNewJob):
        backend.agent_handler.agent_job_done(agent, job_done(m.job_id, "success"))
    backend.client_handler.client_new_job(client, new_job("quick"))  # starts at once
    clock.advance(1)
    recorder.sample()
    view = recorder.history.view(300)
    assert view["wait"]["p50"][-1] < 0.01  # the newest point: the quick job
    html = render_charts(view)
    wait = _legend(html, "Queue wait")
    p50 = re.search(r"p50 over the window: <b>([\d.]+) s</b>", wait)
    assert p50 is not None and 2.5 <= float(p50.group(1)) <= 5, wait  # the 5 s waits, in their bucket
    view_quick = {**view, "wait_window": {"p50": view["wait"]["p50"][-1], "p90": None, "p99": None}}
    assert "p50 over the window: <b>\u2264 10 ms</b>" in _legend(render_charts(view_quick), "Queue wait")
    svg = line_chart("w", [("p50", "#000", [0.005, 2.0])], 60, unit="s", log=True)
    floor = max((t for t in _texts(svg) if t[0] == 48), key=lambda t: t[1])  # the lowest y-axis label
    assert floor[2] == "\u2264 10 ms"


def test_count_axes_have_whole_ticks() -> None:
    """Two slots: the axis reads 0, 1, 2, 3, 4 (on main: 0, 0.5, 1, 1.5, 2)."""
    svg = line_chart("slots", [("slots", "#000", [2, 2, 1])], 60, integer=True)
    labels = [t for _, _, t in _texts(svg) if re.fullmatch(r"[\d.]+", t)]
    assert labels == ["0", "1", "2", "3", "4"], labels
    for highest in (3, 7, 13, 97, 1234):
        svg = line_chart("n", [("n", "#000", [highest])], 60, integer=True)
        ticks = [float(t) for _, _, t in _texts(svg) if re.fullmatch(r"[\d.]+", t)]
        assert all(t == int(t) for t in ticks) and ticks[-1] >= highest, (highest, ticks)


def test_the_heat_strip_legend_sits_below_its_time_axis_without_overlaps() -> None:
    svg = heatmap("Busy slots per agent", [("a1", 2, [0, 1, 2]), ("a2", 4, [None, 4, 1])], 600)
    texts = _texts(svg)
    axis = [t for t in texts if t[2] in ("now", "-10 min")]
    legend = [t for t in texts if "busy" in t[2] or t[2] == "idle"]
    assert len(axis) == 2 and len(legend) == 5
    assert max(y for _, y, _ in axis) + 10 <= min(y for _, y, _ in legend)  # a line of its own
    for (x1, _, text), (x2, _, _) in zip(legend, legend[1:], strict=False):
        assert x1 + 6 * len(text) <= x2, (text, x1, x2)  # each label ends before the next swatch
    assert max(x + 6 * len(t) for x, _, t in legend) <= 620


def test_the_default_window_covers_what_was_recorded() -> None:
    """Up for a minute: 5 min (on main: the whole hour, mostly empty)."""
    default_window = status.default_window
    assert default_window(60, 3600) == 300
    assert default_window(600, 3600) == 900
    assert default_window(5000, 3600) == 3600
    assert default_window(60, 120) == 120  # a shorter history


def test_same_named_clients_launchers_and_06_agents_are_shown_as_they_are() -> None:
    """Two clients named alike are told apart (count in the clients table, address on their
    running jobs); each running job shows its launcher; a 0.6 agent's environments are shown
    by their 0.6 names, not as docker/NAME."""
    clock, backend, recorder = _world()
    h = backend.client_handler
    first, second = FakePeer(b"c1", "tcp:10.0.0.1:5000#1"), FakePeer(b"c2", "tcp:10.0.0.2:6000#2")
    for peer in (first, second):
        h.client_hello(peer, ClientHello("frontend"))
    h.client_new_job(first, new_job("j1", launcher="webapp"))
    h.client_new_job(second, new_job("j2", launcher="lti"))
    agent = FakePeer(b"a", "agent-peer")
    backend.agent_handler.agent_hello(agent, agent_hello("mock06", 2, ["default"]))
    recorder.sample()
    snap = status_snapshot(backend, clock.seconds(), recorder=recorder)
    assert {(r["client_address"], r["launcher"]) for r in snap["running"]} == {
        ("tcp:10.0.0.1:5000#1", "webapp"),
        ("tcp:10.0.0.2:6000#2", "lti"),
    }
    html = render_html(snap, recorder.history.view(300))
    cells = re.findall(r"<td>([^<]*)</td>", html)
    assert cells.count("frontend (2 with this name)") == 2
    assert "frontend (tcp:10.0.0.1:5000#1)" in cells and "frontend (tcp:10.0.0.2:6000#2)" in cells
    assert "webapp" in cells and "lti" in cells
    agents_table = html[html.index("<h2>Agents</h2>") :]
    assert "<td>default</td>" in agents_table and "docker/default" not in agents_table
    assert "docker/default" not in _legend(html, "Jobs waiting, per environment")


def test_the_status_site_logs_under_its_own_name(tmp_path: Any) -> None:
    """twistd logs "status pages starting on ..." (on main: "_QuietSite starting on ...")."""
    import subprocess
    import sys

    from faults_support import free_port
    from subprocess_env import child_env

    port = free_port()
    program = (
        "import sys; from twisted.internet import reactor;"
        "from twisted.python import log; log.startLogging(sys.stdout);"
        "from inginious_tx.backend.core import Backend;"
        "from inginious_tx.backend.policies import FairPolicy;"
        "from inginious_tx.backend.status import StatusService;"
        f"s = StatusService(reactor, Backend(reactor, FairPolicy()), 'tcp:{port}');"
        "s.startService(); reactor.callLater(0.5, reactor.stop); reactor.run()"
    )
    run = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, env=child_env(), cwd=tmp_path
    )
    assert f"status pages starting on {port}" in run.stdout, run.stdout + run.stderr
    assert "_QuietSite" not in run.stdout
