"""One backend, both dialects (PROTOCOL-0.9.md sections 3 and 4), over the
in-memory transport (every message goes through the wire encoding) with a
fake clock."""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

import pytest
from test_backend_core import Remote, World

from inginious_tx.backend.testing import job_done, new_job
from inginious_tx.messages import v06, v09

LIMITS = {"limits": {"time": 20, "hard_time": 50, "memory": 300}, "run_cmd": "", "network_grading": False}


def job09(
    job_id: str,
    env: str = "default",
    kind: str = "docker",
    state: str = "",
    parameters: Optional[Dict[str, Any]] = None,
    course: str = "course",
    inputdata: Optional[Dict[str, Any]] = None,
) -> v09.ClientNewJob:
    data = dict(inputdata or {"q": "print(1)"})
    if state:
        data["@state"] = state
    return v09.ClientNewJob(
        job_id, 0, course, "task", {"q": {"type": "code"}}, data, kind, env,
        LIMITS if parameters is None else parameters, False, "frontend",
    )  # fmt: skip


def hello09(name: str, slots: int, envs: Dict[str, Iterable[str]]) -> v09.AgentHello:
    return v09.AgentHello(
        name,
        slots,
        {kind: {n: {"id": f"sha256:{n}", "created": 0, "ports": [], "runtime": "runc"} for n in names}
         for kind, names in envs.items()},
    )  # fmt: skip


def done09(job_id: str, result: str = "success", state: str = "") -> v09.AgentJobDone:
    return v09.AgentJobDone(job_id, (result, "ok"), 100.0, {}, {}, {}, state, None, "out", "")


def client09(world: World, name: str = "frontend") -> Remote:
    c = Remote(world, "mem:clients", name)
    world.pump()
    c.send(v09.ClientHello(name))
    return c


def agent09(
    world: World, name: str = "agent09", slots: int = 1, envs: Optional[Dict[str, Iterable[str]]] = None
) -> Remote:
    a = Remote(world, "mem:agents", name, auto_pong=False)
    world.pump()
    a.send(hello09(name, slots, envs if envs is not None else {"docker": ["default"]}))
    return a


def results(remote: Remote, cls: type = v09.BackendJobDone) -> Dict[str, Any]:
    return {m.job_id: m for m in remote.of_type(cls)}


@pytest.fixture
def world() -> World:
    return World()


def test_a_09_client_is_told_environments_by_type(world):
    c = client09(world)
    assert c.take() == [v09.BackendUpdateEnvironments({})]
    old = world.client("old")
    old.take()
    agent09(world, envs={"docker": ["default", "cpp"], "kata": ["default"], "mcq": ["mcq"]})
    assert c.take() == [
        v09.BackendUpdateEnvironments({"docker": ["cpp", "default"], "kata": ["default"], "mcq": ["mcq"]})
    ]
    # A 0.6 client sees the docker environments only, by name.
    assert old.take() == [v06.BackendUpdateContainers(("cpp", "default"))]
    assert world.backend.environments == ("cpp", "default", "kata/default", "mcq/mcq")
    # A change it cannot see is not sent to a 0.6 client.
    agent09(world, "other", envs={"kata": ["python"]})
    assert old.take() == [] and len(c.take()) == 1


def test_a_09_job_runs_on_a_09_agent_unchanged(world):
    c = client09(world)
    a = agent09(world)
    c.send(job09("uuid-1", state="st"))
    [sent] = a.of_type(v09.BackendNewJob)
    assert sent == v09.BackendNewJob(
        "uuid-1", "course", "task", {"q": {"type": "code"}}, {"q": "print(1)", "@state": "st"}, "docker",
        "default", LIMITS, False,
    )  # fmt: skip
    a.send(v09.AgentJobStarted("uuid-1"), v09.AgentJobSSHDebug("uuid-1", "h", 22, "root", "pw"), done09("uuid-1"))
    assert c.of_type(v09.BackendJobStarted) == [v09.BackendJobStarted("uuid-1")]
    assert c.of_type(v09.BackendJobSSHDebug) == [v09.BackendJobSSHDebug("uuid-1", "h", 22, "root", "pw")]
    assert results(c)["uuid-1"].result == ("success", "ok") and results(c)["uuid-1"].stdout == "out"
    assert world.backend.running_count == 0


def test_09_job_ids_are_global_and_any_09_client_may_kill(world):
    front1, front2 = client09(world, "front1"), client09(world, "front2")
    old = world.client("old")
    a = agent09(world, slots=1)
    front1.send(job09("run", state="s-run"), job09("wait", state="s-wait"))
    front2.send(job09("run"))  # the same id from another 0.9 client: refused
    assert results(front2)["run"].result[0] == "crash" and "duplicate job id" in results(front2)["run"].result[1]
    old.send(new_job("run", environment="nowhere"))  # 0.6 ids are the client's own: accepted
    assert old.of_type(v06.BackendJobDone) == []
    front2.send(v09.ClientKillJob("wait"))  # killed from another process of the frontend
    killed = results(front1)["wait"]
    assert killed.result[0] == "killed" and killed.state == "s-wait"
    front2.send(v09.ClientKillJob("run"))
    assert a.of_type(v09.BackendKillJob) == [v09.BackendKillJob("run", "s-run")]
    front2.send(v09.ClientKillJob("run"))  # asked twice: one kill sent
    assert len(a.of_type(v09.BackendKillJob)) == 1
    a.send(done09("run", "killed", "s-run"))
    assert results(front1)["run"].result == ("killed", "ok")
    assert len(front2.of_type(v09.BackendJobDone)) == 1  # only its refusal: the result went to the submitter
    # once answered, the id is free again
    front2.send(job09("run"))
    assert a.of_type(v09.BackendNewJob)[-1].job_id == "run"


def test_the_queue_in_both_dialects(world):
    front = client09(world)
    old = world.client("old")
    a = agent09(world, "a9", slots=1)
    front.send(job09("r"), job09("w", parameters={}))
    old.send(new_job("w6", time_limit=40))
    world.clock.advance(5)
    front.send(v09.ClientGetQueue())
    [queue] = front.of_type(v09.BackendGetQueue)
    assert queue.jobs_running == (("r", True, "a9", "course/task", "frontend", 0, 20),)
    assert queue.jobs_waiting == (("w", True, "course/task", "frontend", -1), ("w6", False, "course/task", "test", 40))
    old.send(v06.ClientGetQueue())
    [queue06] = old.of_type(v06.BackendGetQueue)
    assert queue06.jobs_running == (("r", False, "a9", "course/task", "frontend", 0, 20),)
    assert queue06.jobs_waiting == (
        ("w", False, "course/task", "frontend", -1),
        ("w6", True, "course/task", "test", 40),
    )
    del a


def test_a_06_job_on_a_09_agent(world):
    old = world.client("old")
    a = agent09(world, slots=2)
    old.send(new_job("j", time_limit=15), new_job("k", time_limit=15))
    sent = a.of_type(v09.BackendNewJob)
    assert len(sent) == 2 and sent[0].job_id != sent[1].job_id
    first = sent[0]
    assert isinstance(first.job_id, str) and first.job_id not in ("j", "k")
    assert (first.environment_type, first.environment, first.task_problems) == ("docker", "default", {})
    assert first.environment_parameters == {
        "limits": {"time": 15, "hard_time": 45, "memory": 100},
        "run_cmd": "",
        "network_grading": False,
    }
    a.send(
        v09.AgentJobStarted(first.job_id),
        v09.AgentJobSSHDebug(first.job_id, "h", 2222, "worker", "pw"),
        done09(first.job_id),
    )
    assert old.of_type(v06.BackendJobStarted) == [v06.BackendJobStarted("j")]
    assert old.of_type(v06.BackendJobSSHDebug) == [v06.BackendJobSSHDebug("j", "h", 2222, "pw")]
    assert old.results() == {"j": ("success", "ok")}
    # its translated id cannot be killed or reused by a 0.9 client; the 0.6 client kills by its own id
    front = client09(world)
    front.send(v09.ClientKillJob(sent[1].job_id))
    assert a.of_type(v09.BackendKillJob) == []
    old.send(v06.ClientKillJob("k"))
    assert a.of_type(v09.BackendKillJob) == [v09.BackendKillJob(sent[1].job_id, "")]


def test_a_09_job_on_a_06_agent(world):
    front = client09(world)
    a = world.agent("old-agent", slots=2)
    front.send(job09("u1", parameters={"limits": {"time": 7}, "run_cmd": "bash run", "network_grading": True}))
    front.send(job09("u2", parameters={}))
    sent = a.of_type(v06.BackendNewJob)
    assert [m.job_id for m in sent] == [(front.address, "u1"), (front.address, "u2")]
    first, second = sent
    assert (first.time_limit, first.hard_time_limit, first.mem_limit, first.enable_network, first.run_cmd) == (
        7, 21, 200, True, "bash run"
    )  # fmt: skip
    assert (second.time_limit, second.hard_time_limit, second.mem_limit, second.enable_network, second.run_cmd) == (
        30, 90, 200, False, None
    )  # fmt: skip
    a.send(
        v06.AgentJobSSHDebug((front.address, "u1"), "h", 22, "pw"),
        job_done((front.address, "u1")),
    )
    assert front.of_type(v09.BackendJobSSHDebug) == [v09.BackendJobSSHDebug("u1", "h", 22, "worker", "pw")]
    assert results(front)["u1"].result == ("success", "ok")
    front.send(v09.ClientKillJob("u2"))
    assert a.of_type(v06.BackendKillJob) == [v06.BackendKillJob((front.address, "u2"))]


def test_a_09_job_of_another_type_never_goes_to_a_06_agent(world):
    front = client09(world)
    a = world.agent("old-agent", slots=1)
    front.send(job09("q", kind="mcq", env="default"))
    assert a.of_type(v06.BackendNewJob) == [] and world.backend.waiting_count == 1
    kata = agent09(world, "kata", envs={"kata": ["default"]})
    assert kata.of_type(v09.BackendNewJob) == []
    mcq = agent09(world, "mcq", envs={"mcq": ["default"]})
    assert [m.job_id for m in mcq.of_type(v09.BackendNewJob)] == ["q"]
    assert world.backend.waiting_per_environment() == {}


def test_a_peer_that_switches_dialect_is_a_logged_protocol_error(world, log_events):
    c = world.client("old")
    a = world.agent("old-agent", slots=1)
    c.take()
    c.send(v09.ClientHello("sneaky"), job09("x"), v09.ClientGetQueue(), v09.Ping(), v09.ClientKillJob("x"))
    assert c.take() == []
    assert world.backend.waiting_count == 0 and world.backend.clients[0].name == "old"
    a.send(hello09("sneaky", 4, {"docker": ["other"]}), done09("x"), v09.AgentJobStarted("x"))
    assert world.backend.agents[0].name == "old-agent" and world.backend.environments == ("default",)
    assert log_events.has("registered in the 0.6 dialect sent a 0.9 message")
    # the peers keep working in their own dialect
    c.send(new_job("fine"))
    a.send(job_done((c.address, "fine")))
    assert c.results() == {"fine": ("success", "ok")}
    front = client09(world)
    front.take()
    front.send(new_job("y"), v06.Ping())
    assert front.take() == [] and log_events.has("registered in the 0.9 dialect sent a 0.6 message")


def test_strangers_are_answered_unknown_in_their_dialect(world):
    stranger = Remote(world, "mem:clients", "s")
    world.pump()
    stranger.send(job09("x"), v09.Ping(), new_job("y"))
    assert stranger.take() == [v09.Unknown(), v09.Unknown(), v06.Unknown()]
    stranger.send(v09.AgentHello("x", 1, {}))
    assert stranger.take() == [v09.Unknown()]


def test_a_lost_09_agent_requeues_on_a_06_agent(world):
    front = client09(world)
    a9 = agent09(world, slots=1)
    front.send(job09("u", state="s"))
    a9.close()
    a6 = world.agent("old", slots=1)
    assert [m.job_id for m in a6.of_type(v06.BackendNewJob)] == [(front.address, "u")]
    a6.close()
    assert results(front)["u"].result[0] == "crash" and results(front)["u"].state == "s"


@pytest.mark.parametrize("policy", ["priority", "fair", "shortest-first"])
def test_snapshots_are_exactly_what_dump_would_send(policy):
    """The queue bytes assembled from cached rows decode to the message built the slow way."""
    from inginious_tx.backend.policies import load_policy

    world = World(policy=load_policy(policy))
    front, other = client09(world, "f"), client09(world, "g")
    old = world.client("old")
    agent09(world, slots=1)
    for i in range(40):
        (front if i % 3 else other).send(job09(f"j{i}", env=f"e{i % 4}", course=f"c{i % 5}"))
        old.send(new_job(f"o{i}", environment=f"e{i % 4}", time_limit=i, launcher=f"l{i}"))
    for remote, get in ((front, v09.ClientGetQueue()), (old, v06.ClientGetQueue())):
        remote.take()
        remote.send(get)
        [snapshot] = remote.take()
        ordered = world.backend.policy.ordered()
        assert [row[0] for row in snapshot.jobs_waiting] == [job.job_id for job in ordered]
        client = next(c for c in world.backend.clients if c.peer == remote.backend_peer)
        assert [row[1] for row in snapshot.jobs_waiting] == [job.client is client for job in ordered]
        limits = [row[4] for row in snapshot.jobs_waiting]
        if remote is old:
            assert limits == [job.time_limit for job in ordered]
        else:
            assert limits == [job.time_limit if job.time_limit > 0 else -1 for job in ordered]
        # byte for byte what the message class would encode
        cls = type(snapshot)
        assert cls(list(snapshot.jobs_running), list(snapshot.jobs_waiting)).dump() == snapshot.dump()


def test_big_queue_snapshots_are_built_in_slices_and_shared(world):
    snapshot = world.backend._snapshot
    snapshot.small, snapshot.slice_jobs = 5, 4
    front, old = client09(world), world.client("old")
    for i in range(12):
        front.send(job09(f"f{i}", env="nowhere"))
        old.send(new_job(f"o{i}", environment="nowhere"))
    front.take()
    old.take()
    old.send(v06.ClientGetQueue())  # the first question waits for the first build
    assert old.take() == [] and snapshot.builds == 0
    world.clock.advance(0)  # the build's slices (a reactor runs them between other work)
    world.pump()
    [first] = old.take()
    assert snapshot.builds == 1 and len(first.jobs_waiting) == 24
    assert [row[1] for row in first.jobs_waiting] == [row[0].startswith("o") for row in first.jobs_waiting]
    front.send(v09.ClientGetQueue())  # a new dialect: its rows are built too
    world.clock.advance(0)
    world.pump()
    [mine] = front.take()
    assert [row[0] for row in mine.jobs_waiting] == [row[0] for row in first.jobs_waiting]
    builds = snapshot.builds
    # The queue changes; within max_age the shared build answers at once.
    front.send(v09.ClientKillJob("f0"), v09.ClientGetQueue())
    assert snapshot.builds == builds and len(results(front)) == 1
    assert len(front.of_type(v09.BackendGetQueue)[-1].jobs_waiting) == 24
    # A heartbeat later the stale build is dropped (its jobs hold memory): the next question waits for a new one.
    world.tick()
    old.take()
    old.send(v06.ClientGetQueue())
    assert old.take() == []
    world.clock.advance(0)
    world.pump()
    [fresh] = old.take()
    assert len(fresh.jobs_waiting) == 23 and snapshot.builds == builds + 1
    # A client that leaves while a build is made gets nothing, and nothing breaks.
    front.send(v09.ClientKillJob("f1"))
    world.tick()
    gone = client09(world, "gone")
    gone.take()
    gone.send(v09.ClientGetQueue())
    world.backend.client_sink().peer_disconnected(gone.backend_peer, "closed")
    world.clock.advance(0)
    world.pump()
    assert gone.take() == [] and snapshot.builds == builds + 2
    old.send(v06.ClientGetQueue())
    assert len(old.of_type(v06.BackendGetQueue)[-1].jobs_waiting) == 22


def test_a_malformed_09_job_is_answered_once_in_09(world):
    import msgpack

    from inginious_tx.messages import MessageError, load_any

    front = client09(world)
    front.take()
    fields = dict(job09("bad").__dict__, priority="high")
    payload = msgpack.packb({**fields, "@type": "ClientNewJob"}, use_bin_type=True)
    with pytest.raises(MessageError) as info:
        load_any(payload)
    sink = world.backend.client_sink()
    sink.message_rejected(front.backend_peer, info.value, payload)
    world.pump()
    [answer] = front.take()
    assert isinstance(answer, v09.BackendJobDone) and answer.job_id == "bad" and answer.result[0] == "crash"
    assert "priority" in answer.result[1]
    # a 0.9 id in use anywhere in the backend is not answered (its job must stay untouched)
    other = client09(world, "other")
    other.send(job09("taken", env="nowhere"))
    fields = dict(job09("taken").__dict__, priority="high")
    payload = msgpack.packb({**fields, "@type": "ClientNewJob"}, use_bin_type=True)
    with pytest.raises(MessageError) as info:
        load_any(payload)
    sink.message_rejected(front.backend_peer, info.value, payload)
    world.pump()
    assert front.take() == [] and world.backend.waiting_count == 1


def test_the_collector_is_paused_while_a_sliced_snapshot_is_built_and_only_then(world):
    """A build's temporaries live across slices: the collector must not promote them
    (a full collection at 100,000 waiting jobs stalls the reactor for hundreds of ms)."""
    import gc

    snapshot = world.backend._snapshot
    snapshot.small, snapshot.slice_jobs = 5, 4
    recording = _Recording(snapshot._policy)
    snapshot._policy = recording
    old = world.client("old")
    for i in range(30):
        old.send(new_job(f"o{i}", environment="nowhere"))
    old.take()
    try:
        assert gc.isenabled()
        old.send(v06.ClientGetQueue())
        world.clock.advance(0)  # every slice, as a reactor would run them
        world.pump()
        [answer] = old.take()
        assert len(answer.jobs_waiting) == 30
        # paused at every step of the build, back on once it is made
        assert len(recording.states) > 3 and not any(recording.states), recording.states
        assert gc.isenabled()
        # A build that fails half-way gives the collector back too.
        world.tick()
        recording.explode = True
        old.send(v06.ClientGetQueue())
        world.clock.advance(0)
        assert recording.states[-1] is False and gc.isenabled()
    finally:
        gc.enable()


class _Recording:
    """A policy that notes, at each step of its stepped ordering, whether the collector runs."""

    def __init__(self, policy):
        self._policy = policy
        self.states = []
        self.explode = False

    def __getattr__(self, name):
        return getattr(self._policy, name)

    def ordered_steps(self, chunk):
        import gc

        inner = self._policy.ordered_steps(chunk)
        while True:
            self.states.append(gc.isenabled())
            if self.explode:
                raise RuntimeError("boom")
            try:
                next(inner)
            except StopIteration as done:
                return done.value
            yield
