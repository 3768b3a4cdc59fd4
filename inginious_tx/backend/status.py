"""The backend's status over HTTP (``--status ENDPOINT``), with twisted.web.

Pages, all read from the backend on the reactor thread when asked:

- ``/``: a page for people that reloads itself (every 2 s by default, no
  script: the same strict CSP as ever) with inline SVG charts of the last
  hour (queue depth per environment, jobs finished per second by result,
  queue-wait and run-time percentiles, busy slots in total and per agent)
  and tables (jobs per course and per client, queues, agents, running
  jobs); everything that comes from peers is escaped;
- ``/status.json``: agents, jobs waiting per environment, running jobs, load
  per course and client, totals (:func:`status_snapshot`);
- ``/history.json?window=SECONDS``: the numbers the charts draw;
- ``/events``: one server-sent event per sample (once a second);
- ``/metrics``: Prometheus metrics (:mod:`inginious_tx.backend.metrics`).

The history is kept by a :class:`~inginious_tx.backend.timeseries.StatusRecorder`
that :class:`StatusService` runs.  There is no authentication: the endpoint
listens on 127.0.0.1 unless an interface is named (:func:`status_endpoint`).
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from .. import __version__
from .._http import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    CappedFactory,
    MetricsPage,
    NotFoundRoot,
    capped_site,
    where,
)
from .._http import local_endpoint as status_endpoint
from .._reactor import CommonReactor
from .._ready import ReadyResult
from .adapter import label
from .charts import PALETTE, RESULT_COLORS, format_duration, format_number, heatmap, legend, line_chart
from .core import Backend
from .service import stop_reactor
from .timeseries import (
    ACTIVE_SECONDS,
    HISTORY_SECONDS,
    OTHER,
    OTHER_ENVIRONMENT,
    StatusRecorder,
    display_label,
    environment_of,
    fold_environments,
    known_environments,
    qualified,
)

__all__ = [
    "StatusService",
    "status_endpoint",
    "status_snapshot",
    "status_resource",
    "render_html",
    "render_charts",
]


def _dialect(peer_state: Any) -> str:
    """The name of a registered peer's dialect ("0.6", "0.9")."""
    return str(getattr(peer_state.dialect, "name", "unknown"))


#: Rows of ``load.courses`` and ``load.clients`` in status.json (the busiest; the rest in ``(other)``).
LOAD_ROWS = 100
#: Rows of ``clients`` in status.json (the most recently heard).
CLIENT_ROWS = 500


def status_snapshot(
    backend: Backend,
    now: Optional[float] = None,
    waiting: Optional[Dict[str, int]] = None,
    recorder: Optional[StatusRecorder] = None,
) -> Dict[str, Any]:
    """What ``/status.json`` shows: plain JSON-able data.

    Times are seconds since the epoch (the reactor's time).  ``queue`` has an
    entry for every offered environment and the environments jobs wait for
    (bounded, see below; ``waiting``: those counts if already known, e.g. from a
    :class:`~inginious_tx.backend.timeseries.StatusRecorder`; else the
    backend counts them, O(jobs)), by label (a ``docker`` environment by its
    bare name, as 0.6 names it); ``environments`` lists the same with their
    ``type`` and ``name`` apart, and ``id`` (``type/name``, what the page
    shows).  Agents and clients carry their ``dialect``.  ``load`` has the
    waiting and running jobs per course and per client (the ``fair``
    policy's view).

    Everything clients choose is bounded: ``queue`` and ``environments``
    name the offered environments and up to
    :data:`~inginious_tx.backend.timeseries.MAX_UNOFFERED_SHOWN` others, the
    rest summed as ``(other)`` (``totals.environments_in_other`` says how
    many); ``load`` has the :data:`LOAD_ROWS` busiest courses and client
    names and ``(other)`` for the rest (``totals.courses_with_jobs``,
    ``totals.client_names_with_jobs``); ``clients`` the :data:`CLIENT_ROWS`
    most recently heard.

    ``totals.clients`` counts registered clients, which include clients that
    left without a word (ZeroMQ does not tell) until ``client_idle_timeout``
    (1 h by default) forgets them; with a ``recorder``,
    ``totals.clients_active`` counts those heard from in the last
    ``totals.active_seconds`` seconds or with a job (else None), and each
    client row has its ``idle_seconds``.
    """
    if now is None:
        now = time.time()
    agents = backend.agents
    running: List[Dict[str, Any]] = []
    agent_rows = []
    for agent in agents:
        envs = sorted(agent.environments)
        agent_rows.append(
            {
                "name": agent.name,
                "address": agent.peer.description,
                "dialect": _dialect(agent),
                "slots": agent.slots,
                "busy_slots": len(agent.running),
                "environments": sorted(label(env) for env in envs),
                "environment_ids": [qualified(env) for env in envs],
            }
        )
        for job in agent.running.values():
            running.append(
                {
                    "job_id": job.key[1],
                    "client": job.client.name if job.client is not None else None,
                    "client_address": job.client.peer.description if job.client is not None else None,
                    "launcher": job.launcher,
                    "agent": agent.name,
                    "course_id": job.course_id,
                    "task_id": job.task_id,
                    "environment": label(job.environment),
                    "environment_type": job.environment[0],
                    "environment_id": qualified(job.environment),
                    "started_at": job.started_at,
                    "running_for": max(0.0, now - job.started_at),
                }
            )
    running.sort(key=lambda row: row["started_at"])
    known = known_environments(backend)
    if recorder is not None:
        by_env = recorder.waiting_shown()
        unshown = recorder.unshown_environments()
    else:
        counts: Dict[Tuple[str, str], int] = {}
        for text, n in (backend.waiting_per_environment() if waiting is None else waiting).items():
            env = environment_of(text, known)
            counts[env] = counts.get(env, 0) + n
        by_env = fold_environments(counts, known.values())
        unshown = sum(1 for env in counts if env not in by_env)
    queue: Dict[str, int] = {}
    for env, n in by_env.items():
        text = display_label(env)
        queue[text] = queue.get(text, 0) + n
    offered: Dict[Tuple[str, str], List[int]] = {}
    for agent in agents:
        for env in agent.environments:
            row = offered.setdefault(env, [0, 0])
            row[0] += 1
            row[1] += agent.slots
    environments = [
        {
            "id": OTHER if env == OTHER_ENVIRONMENT else qualified(env),
            "type": env[0],
            "name": env[1],
            "label": display_label(env),
            "waiting": n,
            "agents": offered.get(env, [0, 0])[0],
            "slots": offered.get(env, [0, 0])[1],
        }
        for env, n in sorted(by_env.items())
    ]
    activity = recorder.client_activity(now) if recorder is not None else {}
    client_rows = []
    active = 0
    for client in backend.clients:
        idle = activity.get(client)
        is_active = bool(client.jobs) or (idle is not None and idle <= ACTIVE_SECONDS)
        active += is_active
        client_rows.append(
            {
                "name": client.name,
                "address": client.peer.description,
                "dialect": _dialect(client),
                "jobs": len(client.jobs),
                "idle_seconds": idle,
                "active": is_active if recorder is not None else None,
            }
        )
    client_rows.sort(key=lambda row: (row["idle_seconds"] is None, row["idle_seconds"] or 0, row["name"]))
    load = {}
    with_jobs = {}
    for what in ("courses", "clients"):
        top, with_jobs[what] = backend.busiest(what, LOAD_ROWS)
        rows = {k: list(v) for k, v in sorted(top.items())}
        if with_jobs[what] > len(top):  # the rest, from the totals: every job has one course and one client
            rest = [backend.waiting_count - sum(v[0] for v in top.values())]
            rest.append(backend.running_count - sum(v[1] for v in top.values()))
            rows[OTHER] = rest
        load[what] = rows
    stats = backend.stats
    return {
        "version": __version__,
        "time": now,
        "policy": getattr(backend.policy, "name", type(backend.policy).__name__),
        "agents": agent_rows,
        "queue": dict(sorted(queue.items())),
        "environments": environments,
        "clients": client_rows[:CLIENT_ROWS],
        "running": running,
        "load": load,
        "totals": {
            "agents": len(agents),
            "clients": len(backend.clients),
            "clients_active": active if recorder is not None else None,
            "courses_with_jobs": with_jobs["courses"],
            "client_names_with_jobs": with_jobs["clients"],
            "environments_in_other": unshown,
            "active_seconds": ACTIVE_SECONDS,
            "slots": sum(a.slots for a in agents),
            "busy_slots": sum(len(a.running) for a in agents),
            "waiting": backend.waiting_count,
            "running": backend.running_count,
            "submitted": stats.submitted,
            "refused": stats.refused,
            "finished": dict(sorted(stats.finished.items())),
        },
    }


def _table(headers: List[str], rows: List[List[Any]], empty: str) -> str:
    if not rows:
        return f"<p>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


#: Rows of the longer tables of the page.
PAGE_ROWS = 50
#: Windows offered on the page, in seconds.
WINDOWS = (300, 900, 3600)
DEFAULT_WINDOW = 3600
#: Seconds between two reloads of the page, by default.
DEFAULT_REFRESH = 2

_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:.5em}td,th{border:1px solid #ccc;padding:.15em .5em;text-align:left}
td:nth-child(n+2){font-variant-numeric:tabular-nums}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(630px,1fr));gap:.8em}
.chart{border:1px solid #ddd;padding:4px;background:#fff}
ul.legend{list-style:none;margin:0;padding:0 0 0 52px;font-size:12px;display:flex;flex-wrap:wrap;gap:.2em 1em}
.summary b{font-variant-numeric:tabular-nums}nav a{margin-right:.6em}.more{color:#666;font-size:90%}
.tables{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:0 2em}"""


def _top_rows(mapping: Dict[str, List[int]], limit: int) -> Tuple[List[List[Any]], int]:
    """The ``limit`` busiest (waiting + running) entries, then one ``(other)`` row
    with the rest (status.json's own ``(other)`` included); and how many were
    left out of status.json's rows."""
    folded = mapping.get(OTHER)
    ranked = sorted(
        ((k, v) for k, v in mapping.items() if k != OTHER), key=lambda item: (-(item[1][0] + item[1][1]), item[0])
    )
    rows: List[List[Any]] = [[name, w, r] for name, (w, r) in ranked[:limit]]
    if len(ranked) > limit or folded:
        rest = [folded[0] if folded else 0, folded[1] if folded else 0]
        for _, (w, r) in ranked[limit:]:
            rest[0] += w
            rest[1] += r
        rows.append([OTHER, *rest])
    return rows, max(0, len(ranked) - limit)


def _more(n: int, what: str) -> str:
    return f'<p class="more">and {n} more {escape(what)} (see status.json)</p>' if n else ""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _last(points: Any) -> Optional[float]:
    for v in reversed(points):
        if v is not None:
            return float(v)
    return None


def render_charts(view: Dict[str, Any], names: Optional[Dict[str, str]] = None) -> str:
    """The six charts of the page from a :meth:`History.view`, with their legends.

    ``names``: how to show an environment label (e.g. ``docker/default`` for
    ``default``); labels not in it are shown as they are.
    """
    names = names or {}
    seconds = view["seconds"]
    blocks = []
    # queue depth per environment, and the total
    lines = [
        (names.get(env, env), PALETTE[i % (len(PALETTE) - 1)], pts)
        for i, (env, pts) in enumerate(view["queue"].items())
    ]
    lines.append(("all environments", "#555555", view["waiting"]))
    blocks.append(
        (
            line_chart("Jobs waiting, per environment", lines, seconds, integer=True),
            legend([(label, color, format_number(_last(pts))) for label, color, pts in lines]),
        )
    )
    # finished per second, by result (stacked)
    order = sorted(
        view["finished"],
        key=lambda k: (k not in RESULT_COLORS, list(RESULT_COLORS).index(k) if k in RESULT_COLORS else 0, k),
    )
    lines = [(kind, RESULT_COLORS.get(kind, "#777777"), view["finished"][kind]) for kind in order]
    mean = {kind: [v for v in pts if v is not None] for kind, pts in view["finished"].items()}
    blocks.append(
        (
            line_chart("Jobs finished per second, by result", lines, seconds, stacked=True),
            legend(
                [
                    (label, color, f"{sum(mean[label]) / len(mean[label]):.3g}/s" if mean[label] else "-")
                    for label, color, _ in lines
                ]
            )
            if lines
            else legend([("no job finished", "#ffffff", "-")]),
        )
    )
    for key, title in (("wait", "Queue wait (time to the first agent)"), ("run", "Run time")):
        lines = [(name, PALETTE[i], pts) for i, (name, pts) in enumerate(view[key].items())]
        # the legend: each percentile over the whole window drawn, not the newest point alone
        whole = view.get(f"{key}_window", {})
        blocks.append(
            (
                line_chart(f"{title}, percentiles", lines, seconds, unit="s", log=True),
                legend(
                    [
                        (f"{label} over the window", color, format_duration(whole.get(label, _last(pts))))
                        for label, color, pts in lines
                    ]
                ),
            )
        )
    totals = view["totals"]
    lines = [
        ("slots", "#999999", totals["slots"]),
        ("busy slots", PALETTE[0], totals["busy_slots"]),
        ("running jobs", PALETTE[1], totals["running"]),
    ]
    blocks.append(
        (
            line_chart("Agent slots, busy slots", lines, seconds, integer=True),
            legend([(label, color, format_number(_last(pts))) for label, color, pts in lines]),
        )
    )
    rows = [(name, view["slots"].get(name, 0), pts) for name, pts in view["busy"].items()]
    shown = len(rows)
    tracked = view.get("agents_tracked", shown)
    title = "Busy slots per agent" + (f" (the {shown} busiest of {tracked})" if tracked > shown else "")
    blocks.append((heatmap(title, rows, seconds), ""))
    return "".join(f'<div class="chart">{svg}{leg}</div>' for svg, leg in blocks)


def render_html(
    snapshot: Dict[str, Any],
    view: Optional[Dict[str, Any]] = None,
    window: int = DEFAULT_WINDOW,
    refresh: int = DEFAULT_REFRESH,
) -> str:
    """The status page for people; every value is escaped.

    ``view``: the history to chart (:meth:`History.view`), if any; the page
    reloads itself every ``refresh`` seconds (0: never) with the same
    ``window``.
    """
    totals = snapshot["totals"]
    finished = ", ".join(f"{k}: {v}" for k, v in totals["finished"].items()) or "none"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snapshot["time"]))
    agent_list = snapshot["agents"]
    agents = _table(
        ["agent", "dialect", "address", "busy / slots", "environments"],
        [
            [
                a["name"],
                a.get("dialect", "?"),
                a["address"],
                f"{a['busy_slots']} / {a['slots']}",
                # 0.6 has no environment types: its agents' environments by their own names
                ", ".join(
                    a["environments"] if a.get("dialect") == "0.6" else a.get("environment_ids", a["environments"])
                ),
            ]
            for a in agent_list[:PAGE_ROWS]
        ],
        "No agent is connected.",
    ) + _more(len(agent_list) - PAGE_ROWS if len(agent_list) > PAGE_ROWS else 0, "agents")
    if "environments" in snapshot:
        env_rows = sorted(snapshot["environments"], key=lambda e: (-e["waiting"], e["type"], e["name"]))
        rows = [[e["type"], e["name"], e["waiting"], e["agents"]] for e in env_rows[:PAGE_ROWS]]
        headers = ["type", "name", "waiting", "agents"]
    else:
        env_rows = sorted(snapshot["queue"].items(), key=lambda kv: (-kv[1], kv[0]))
        rows = [[k, v] for k, v in env_rows[:PAGE_ROWS]]
        headers = ["environment", "waiting"]
    queue = _table(headers, rows, "No environment.") + _more(max(0, len(env_rows) - PAGE_ROWS), "environments")
    if totals.get("environments_in_other"):
        queue += (
            f'<p class="more">{OTHER}: jobs for {_count(totals["environments_in_other"], "other environment")} '
            "that no agent offers</p>"
        )
    client_list = snapshot.get("clients", [])
    same_name: Dict[str, int] = {}
    for c in client_list:
        same_name[c["name"]] = same_name.get(c["name"], 0) + 1
    clients = _table(
        ["client", "dialect", "address", "jobs", "last heard"],
        [
            [
                c["name"] + (f" ({same_name[c['name']]} with this name)" if same_name[c["name"]] > 1 else ""),
                c["dialect"],
                c["address"],
                c["jobs"],
                "-" if c["idle_seconds"] is None else f"{c['idle_seconds']:.0f} s ago",
            ]
            for c in client_list[:PAGE_ROWS]
        ],
        "No client is registered.",
    ) + _more(max(0, len(client_list) - PAGE_ROWS), "clients")
    running_list = snapshot["running"]
    dialect_of = {a["name"]: a.get("dialect") for a in agent_list}
    running = _table(
        ["job", "client", "launcher", "agent", "task", "environment", "running for"],
        [
            [
                r["job_id"],
                "(gone)"
                if r["client"] is None
                else r["client"] + (f" ({r.get('client_address')})" if same_name.get(r["client"], 0) > 1 else ""),
                r.get("launcher", ""),
                r["agent"],
                f"{r['course_id']}/{r['task_id']}",
                r["environment"] if dialect_of.get(r["agent"]) == "0.6" else r.get("environment_id", r["environment"]),
                f"{r['running_for']:.1f} s",
            ]
            for r in running_list[:PAGE_ROWS]
        ],
        "No job is running.",
    ) + _more(max(0, len(running_list) - PAGE_ROWS), "running jobs")
    load = snapshot.get("load", {"courses": {}, "clients": {}})
    load_tables = []
    for key, title in (("courses", "course"), ("clients", "client")):
        rows, _ = _top_rows(load[key], PAGE_ROWS)
        total = totals.get("courses_with_jobs" if key == "courses" else "client_names_with_jobs", len(load[key]))
        note = (
            f'<p class="more">{_count(total, title)} with jobs; the {PAGE_ROWS} busiest by name, '
            f"the others as {OTHER}</p>"
            if rows and rows[-1][0] == OTHER
            else ""
        )
        load_tables.append(
            f"<div><h2>Jobs per {title}</h2>"
            + _table([title, "waiting", "running"], rows, f"No {title} has a job.")
            + note
            + "</div>"
        )
    links = " ".join(
        f'<a href="?window={w}&amp;refresh={refresh}">{"last " + (f"{w // 60} min" if w < 3600 else "hour")}</a>'
        if w != window
        else f"<b>last {f'{w // 60} min' if w < 3600 else 'hour'}</b>"
        for w in WINDOWS
    )
    if refresh:
        reload_note = f'reloads every {refresh} s: <a href="?window={window}&amp;refresh=0">stop reloading</a>'
        meta = f'<meta http-equiv="refresh" content="{refresh}">'
    else:
        again = f"?window={window}&amp;refresh={DEFAULT_REFRESH}"
        reload_note = f'not reloading: <a href="{again}">reload every {DEFAULT_REFRESH} s</a>'
        meta = ""
    # type/name, but a docker environment that only 0.6 agents offer by its name (0.6 has no types)
    typed = {i for a in agent_list if a.get("dialect") != "0.6" for i in a.get("environment_ids", ())}
    names = {e["label"]: e["id"] for e in snapshot.get("environments", []) if e["type"] != "docker" or e["id"] in typed}
    charts = f'<div class="charts">{render_charts(view, names)}</div>' if view is not None else ""
    if totals.get("clients_active") is not None:
        client_note = (
            f'<b>{totals["clients_active"]}</b> clients active (heard from in the last '
            f'{totals["active_seconds"]:.0f} s, or with a job) of <b>{totals["clients"]}</b> registered'
        )
    else:
        client_note = f'<b>{totals["clients"]}</b> clients registered'
    by_dialect: Dict[str, List[int]] = {}
    for a in agent_list:
        by_dialect.setdefault(a.get("dialect", "?"), [0, 0])[0] += 1
    for c in client_list:
        by_dialect.setdefault(c["dialect"], [0, 0])[1] += 1
    dialects = "; ".join(
        f"dialect {d}: {_count(n_a, 'agent')}, {_count(n_c, 'client')}" for d, (n_a, n_c) in sorted(by_dialect.items())
    )
    dialect_note = f" ({escape(dialects)})" if dialects else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{meta}
<title>inginious-tx backend</title>
<style>{_STYLE}</style></head>
<body><h1>inginious-tx backend</h1>
<p class="summary">{escape(when)}, policy {escape(str(snapshot["policy"]))}, version {escape(str(snapshot["version"]))}.
<b>{totals["agents"]}</b> agents, <b>{totals["busy_slots"]} / {totals["slots"]}</b> slots busy,
{client_note}{dialect_note}, <b>{totals["waiting"]}</b> jobs waiting, <b>{totals["running"]}</b> running;
{totals["submitted"]} submitted, {totals["refused"]} refused; finished: {escape(finished)}.</p>
<nav>{links} &middot; {reload_note} &middot; <a href="status.json">status.json</a>
<a href="history.json?window={window}">history.json</a> <a href="events">events</a> <a href="metrics">metrics</a></nav>
{charts}
<div class="tables">{"".join(load_tables)}<div><h2>Waiting jobs per environment</h2>{queue}</div></div>
<h2>Agents</h2>{agents}
<h2>Clients (most recently heard first)</h2>{clients}
<h2>Running jobs (longest first)</h2>{running}
</body></html>
"""


def default_window(recorded: float, longest: int) -> int:
    """The window shown when none is asked: the shortest offered one that covers
    what was recorded (a backend up for a minute gets 5 min, not an hour)."""
    for w in WINDOWS:
        if w >= recorded:
            return min(w, longest)
    return min(DEFAULT_WINDOW, longest)


def _int_arg(request: Any, name: str, default: int, low: int, high: int) -> int:
    """A small integer query argument, clamped; anything unreadable is the default."""
    values = (getattr(request, "args", None) or {}).get(name.encode())
    if not values:
        return default
    text = values[0]
    if not text.isdigit() or len(text) > 7:
        return default
    return max(low, min(high, int(text)))


class _Page(Resource):
    isLeaf = True
    # each page defines it
    render_GET: Callable[[Any], bytes]

    def __init__(self, backend: Backend, clock: IReactorTime, recorder: Optional[StatusRecorder] = None) -> None:
        super().__init__()
        self._backend = backend
        self._clock = clock
        self._recorder = recorder

    def _snapshot(self) -> Dict[str, Any]:
        return status_snapshot(self._backend, self._clock.seconds(), recorder=self._recorder)

    def _window(self, request: Any) -> int:
        if self._recorder is None:
            return DEFAULT_WINDOW
        history = self._recorder.history
        longest = int((history.capacity - 1) * history.interval)
        default = default_window(history.ticks * history.interval, longest)
        return _int_arg(request, "window", default, min(60, longest), longest)

    def render_HEAD(self, request: Any) -> bytes:
        return self.render_GET(request)


class _JsonPage(_Page):
    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self._snapshot(), indent=1).encode("utf-8")


class _HistoryPage(_Page):
    """``/history.json?window=SECONDS``: what the charts draw, as numbers."""

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        assert self._recorder is not None
        view = self._recorder.history.view(self._window(request))
        return json.dumps(view, separators=(",", ":")).encode("utf-8")


_CSP = b"default-src 'none'; style-src 'unsafe-inline'"


class _HtmlPage(_Page):
    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        # besides escaping: no script may run on this page, whatever a peer sent
        request.setHeader(b"content-security-policy", _CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        window = self._window(request)
        refresh = _int_arg(request, "refresh", DEFAULT_REFRESH, 0, 3600)
        view = self._recorder.history.view(window) if self._recorder is not None else None
        return render_html(self._snapshot(), view, window, refresh).encode("utf-8")


@implementer(IPushProducer)
class _Stream:
    """One ``/events`` client: paused by TCP back-pressure, dropped if it stays behind."""

    #: samples skipped in a row (the client reads too slowly) before it is disconnected
    MAX_SKIPPED = 30

    def __init__(self, request: Any) -> None:
        self.request = request
        self.paused = False
        self.skipped = 0
        self.open = True

    def send(self, data: bytes) -> None:
        if not self.open:
            return
        if self.paused:
            self.skipped += 1
            if self.skipped > self.MAX_SKIPPED:
                self.stopProducing()
            return
        self.skipped = 0
        self.request.write(data)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        if self.open:
            self.open = False
            transport = getattr(self.request, "channel", None) and self.request.channel.transport
            if transport is not None:
                transport.abortConnection()


class _EventStream(Resource):
    """``/events``: each sample as a server-sent event (``event: sample``, JSON data).

    One JSON encoding per sample, whatever the number of streams; at most
    :attr:`MAX_STREAMS` at once (others get 503).
    """

    isLeaf = True
    MAX_STREAMS = 16

    def __init__(self, recorder: StatusRecorder) -> None:
        super().__init__()
        self._recorder = recorder
        self._streams: Dict[Any, _Stream] = {}

    def render_GET(self, request: Any) -> Any:
        if len(self._streams) >= self.MAX_STREAMS:
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"too many event streams open, retry later\n"
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        stream = _Stream(request)
        request.registerProducer(stream, True)
        if not self._streams:
            self._recorder.add_listener(self._publish)
        self._streams[request] = stream
        request.notifyFinish().addBoth(self._gone, request)
        latest = self._recorder.latest
        request.write(b"retry: 2000\n\n" + (_event(latest) if latest is not None else b""))
        return NOT_DONE_YET

    def render_HEAD(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b""

    def _gone(self, _: Any, request: Any) -> None:
        stream = self._streams.pop(request, None)
        if stream is not None:
            stream.open = False
        if not self._streams:
            self._recorder.remove_listener(self._publish)

    def _publish(self, sample: Dict[str, Any]) -> None:
        data = _event(sample)
        for stream in list(self._streams.values()):
            stream.send(data)

    def holds(self, transport: Any) -> bool:
        """Whether a stream is open on ``transport`` (at most :attr:`MAX_STREAMS` to look at)."""
        return any(getattr(request.channel, "transport", None) is transport for request in self._streams)

    def close_all(self) -> None:
        """End every stream (the service stops)."""
        for request, stream in list(self._streams.items()):
            stream.open = False
            try:
                request.unregisterProducer()
                request.finish()
            except Exception:
                pass
        self._streams.clear()
        self._recorder.remove_listener(self._publish)


def _event(sample: Dict[str, Any]) -> bytes:
    data = {
        "time": sample["time"],
        "queue": sample["queue"],
        "finished": sample["finished"],
        "totals": sample["totals"],
        "agents": sample["agents"],
        "wait_buckets": sample["wait_buckets"],
        "run_buckets": sample["run_buckets"],
    }
    return b"event: sample\ndata: " + json.dumps(data, separators=(",", ":")).encode("utf-8") + b"\n\n"


def status_resource(
    backend: Backend, clock: IReactorTime, registry: Any = None, recorder: Optional[StatusRecorder] = None
) -> Resource:
    """The resource tree: ``/``, ``/status.json``, ``/metrics``; with a
    ``recorder`` also ``/history.json`` and ``/events``, and charts on ``/``.

    ``registry``: the ``CollectorRegistry`` to expose (default: a new one for
    ``backend``, see :func:`~inginious_tx.backend.metrics.backend_registry`).
    """
    if registry is None:
        from .metrics import backend_registry

        registry = backend_registry(backend, recorder)
    root = NotFoundRoot()
    root.putChild(b"", _HtmlPage(backend, clock, recorder))
    root.putChild(b"status.json", _JsonPage(backend, clock, recorder))
    root.putChild(b"metrics", MetricsPage(registry))
    if recorder is not None:
        root.putChild(b"history.json", _HistoryPage(backend, clock, recorder))
        root.putChild(b"events", _EventStream(recorder))
    return root


#: Most open connections of the status pages, by default (a browser opens a
#: few, a Prometheus server one; ``/events`` streams are capped apart).
DEFAULT_STATUS_CONNECTIONS = DEFAULT_MAX_CONNECTIONS
#: Seconds an idle status connection is kept open, by default.
DEFAULT_STATUS_IDLE_TIMEOUT = DEFAULT_IDLE_TIMEOUT


class StatusService(Service):
    """Serves :func:`status_resource` on an endpoint string while running,
    and runs the :class:`StatusRecorder` its charts and event stream read.

    ``endpoint`` goes through :func:`status_endpoint`.  At most
    ``max_connections`` are open at once (further ones are closed as soon as
    made) and one idle for ``idle_timeout`` seconds between requests is
    closed.  :attr:`ready` fires
    with the listening port (``port.getHost().port`` is the real port number
    with ``tcp:0``), or fails if the endpoint cannot listen; with ``fatal``,
    that failure also stops the reactor (what ``twistd`` wants).
    """

    name = "inginious-status"  # type: ignore[assignment]  # Twisted's Service.name is an untyped None
    log = Logger()

    def __init__(
        self,
        reactor: CommonReactor,
        backend: Backend,
        endpoint: str,
        registry: Any = None,
        fatal: bool = False,
        history: int = HISTORY_SECONDS,
        sample_interval: float = 1.0,
        max_connections: int = DEFAULT_STATUS_CONNECTIONS,
        idle_timeout: float = DEFAULT_STATUS_IDLE_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._fatal = fatal
        #: most open connections (further ones are closed at once)
        self.max_connections = max_connections
        #: seconds a connection may stay idle between requests
        self.idle_timeout = idle_timeout
        self.factory: Optional[CappedFactory] = None
        self.backend = backend
        self.endpoint = status_endpoint(endpoint)
        #: samples the backend every ``sample_interval`` seconds; ``history`` samples are kept
        self.recorder = StatusRecorder(backend, reactor, history, sample_interval)
        self.registry = registry
        self.port: Any = None
        self._ready = ReadyResult()
        self._attempt: Optional[Deferred] = None
        self._events: Optional[_EventStream] = None

    @property
    def ready(self) -> Deferred:
        """Fires with the listening port, or fails if the endpoint cannot listen
        (a new Deferred at each access: a failure nobody waits for is logged once)."""
        return self._ready.wait()

    def startService(self) -> None:
        super().startService()
        self.recorder.start()
        resource = status_resource(self.backend, self._reactor, self.registry, self.recorder)
        self._events = resource.children.get(b"events")
        events = self._events
        factory = self.factory = capped_site(
            resource, self._reactor, name="status pages", option="--status-max-connections",
            max_connections=self.max_connections, idle_timeout=self.idle_timeout,
            streaming=lambda transport: events is not None and events.holds(transport),
        )  # fmt: skip
        self._ready.reset()
        d = self._attempt = serverFromString(self._reactor, self.endpoint).listen(factory)
        d.addCallbacks(self._listening, self._failed)
        d.addBoth(self._ready.fire)

    def _listening(self, port: Any) -> Any:
        self.port = port
        self.log.info("status pages on http://{host}/ ({endpoint})", host=where(port), endpoint=self.endpoint)
        return port

    def _failed(self, failure: Any) -> Any:
        self.log.critical(
            "status pages cannot listen on {endpoint}: {error}", endpoint=self.endpoint, error=failure.getErrorMessage()
        )
        if self._fatal:
            self._reactor.callWhenRunning(stop_reactor, self._reactor)
        return failure

    def stopService(self) -> Deferred:
        super().stopService()
        self.recorder.stop()
        if self._events is not None:
            self._events.close_all()
            self._events = None
        attempt, self._attempt = self._attempt, None

        def stop(_: Any) -> Any:  # also a port that came up after the stop
            port, self.port = self.port, None
            return port.stopListening() if port is not None else None

        if attempt is None:
            return succeed(None)
        return DeferredList([attempt], consumeErrors=True).addCallback(stop)
