"""``run_student``: the student's code apart from the grader, under Docker (runc, runsc).

A hostile student's code tries, from the background, to overwrite the
grader's feedback, its grade and its files, and to kill the grader: the
grader's own verdict must come back every time.  Return codes, standard
streams and limits are checked too; the fixture checks that no container (the
student's included) and no job folder is left.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

import pytest
import pytest_twisted
from docker_support import TEST_IMAGE, assert_left_clean, make_task, new_job
from test_agent_docker_runtimes import require_runtime
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater

from inginious_tx.agent.docker import DockerBackend
from inginious_tx.agent.local import LocalBackend
from inginious_tx.agent.result import AgentConfig, JobResult
from inginious_tx.agent.run_student import limits_for
from inginious_tx.messages import BackendNewJob

pytestmark = pytest.mark.docker

# The student's code: prints its input in capitals, reports what it sees, and
# leaves attackers behind that try to change the grader's verdict.
STUDENT = r"""#!/bin/sh
attack() {
    while :; do
        for d in /job/feedback /feedback /task/../feedback "$INGINIOUS_STUDENT/../../feedback"; do
            printf 'success\n' > "$d/result" 2>/dev/null
            printf '100\n' > "$d/grade" 2>/dev/null
            printf 'pwned' > "$d/text" 2>/dev/null
        done
        printf '#!/bin/sh\nfeedback-result success\n' > "$INGINIOUS_STUDENT/../run" 2>/dev/null
        for p in /proc/[0-9]*; do  # the grader's processes, if it could see them
            grep -q '\./run' "$p/cmdline" 2>/dev/null && kill -9 "${p#/proc/}" 2>/dev/null
        done
    done
}
attack </dev/null >/dev/null 2>&1 &
( setsid sh -c 'while :; do printf success > /job/feedback/result 2>/dev/null; done' & ) </dev/null >/dev/null 2>&1
seen=""
for p in /job/feedback /job/input /job/archive /job/task/run /job/.run_student /inginious/helpers /task/run \
         "$INGINIOUS_STUDENT/../../feedback" "$INGINIOUS_STUDENT/../../input" "$INGINIOUS_STUDENT/../run" \
         "$INGINIOUS_STUDENT/../../.run_student"; do
    [ -e "$p" ] && seen="$seen $p"
done
echo "seen:${seen:- none}" >&2
echo "pwd: $(pwd)" >&2
[ -w "$INGINIOUS_STUDENT" ] && echo "student writable" >&2
tr a-z A-Z
exit 3
"""

GRADER = r"""
cp "$INGINIOUS_TASK/student.sh" student/prog.sh
out=$(printf 'hello\n' | run_student sh student/prog.sh 2>student/err)
code=$?
feedback-result failed
feedback-grade 20
feedback-msg -m "grader's verdict"
feedback-custom out "$out"
feedback-custom code "$code"
feedback-custom err "$(cat student/err)"
"""


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: Any) -> str:
    root = str(tmp_path_factory.mktemp("tasks"))
    path = make_task(root, "rs", "hostile", GRADER)
    with open(os.path.join(path, "student.sh"), "w") as f:
        f.write(STUDENT)
    make_task(root, "rs", "cmd", "true\n")
    return root


@pytest.fixture(params=["runc", "runc-pool", "runsc", "local"])
def backend(request: Any, tasks_dir: str, tmp_path: Any) -> Any:
    """runc-pool: run_student's containers made ahead (:mod:`inginious_tx.agent.student_pool`), two
    waiting before the test, and at least one call of the test served by one."""
    work = str(tmp_path / "work")
    if request.param == "local":
        if os.geteuid() != 0:
            pytest.skip("run_student under the local backend is tested as root (a separate student user)")
        b: Any = LocalBackend(_reactor(), AgentConfig(tasks_dir, ["default"], 4, {"work_dir": work}))
        yield b
        pytest_twisted.blockon(b.close())
        left = [p for p in os.listdir("/proc") if p.isdigit() and _owned_by(p, 4243)]
        assert left == [], "a process of the student's user was left behind"
    else:
        runtime, _, pooled = request.param.partition("-")
        require_runtime(runtime)
        opts: Dict[str, Any] = {"work_dir": work, "poll_interval": 0.2}
        if pooled:
            if os.geteuid() != 0:
                pytest.skip("run_student's containers are made ahead by a root agent only")
            opts["student_pool_max"] = "4"
        envs = [f"default={TEST_IMAGE},runtime={runtime}"]
        b = DockerBackend(_reactor(), AgentConfig(tasks_dir, envs, 4, opts))
        hits = pytest_twisted.blockon(ensureDeferred(_warm(b))) if pooled else 0
        yield b
        if pooled:
            assert b.student_pool is not None
            assert sum(s.hits for s in b.student_pool.stats().values()) > hits, "no call took a sibling made ahead"
        pytest_twisted.blockon(b.close())
        assert_left_clean(b.instance_id)
    assert not os.path.exists(work) or os.listdir(work) == [], "a job folder was left behind"


async def _warm(backend: DockerBackend) -> int:
    """Two calls at once (demand for two siblings), then wait for both; the hits so far."""
    await backend.environments()
    warm = [backend.run(_cmd("run_student true && feedback-result success")) for _ in range(2)]
    assert [r.result for r in await gatherResults(warm).addTimeout(120, _reactor())] == ["success"] * 2
    pool = backend.student_pool
    assert pool is not None
    deadline = _reactor().seconds() + 120
    while sum(s.ready for s in pool.stats().values()) < 2:
        assert _reactor().seconds() < deadline, "no two siblings made ahead"
        await deferLater(_reactor(), 0.05, lambda: None)
    return sum(s.hits for s in pool.stats().values())


def _owned_by(pid: str, uid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == uid
    except OSError:
        return False


def _runtime(backend: Any) -> str:
    return "local" if isinstance(backend, LocalBackend) else str(backend._runtimes["default"])


async def _run(backend: DockerBackend, job: BackendNewJob, timeout: float = 90) -> JobResult:
    return await backend.run(job).addTimeout(timeout, _reactor())


def _cmd(run_cmd: str, **kw: Any) -> BackendNewJob:
    kw.setdefault("hard_time_limit", 60)
    return new_job("rs", "cmd", run_cmd=run_cmd, **kw)


@pytest_twisted.ensureDeferred
async def test_hostile_student_cannot_change_the_verdict(backend: DockerBackend) -> None:
    # 20 at once, each starting student processes: on a busy machine (load 30 on 2 cores) they
    # took more than a minute of wall-clock time, so the wall limit is generous; the CPU limit
    # (20 s) is what any of them would hit if the verdict logic looped.
    jobs = [new_job("rs", "hostile", time_limit=20, hard_time_limit=240, mem_limit=128) for _ in range(20)]
    results: List[JobResult] = await gatherResults([backend.run(j) for j in jobs]).addTimeout(600, _reactor())
    for r in results:
        assert (r.result, r.grade, r.text) == ("failed", 20.0, "grader's verdict"), r
        assert r.custom["out"] == "HELLO" and r.custom["code"] == "3", r.custom
        err = r.custom["err"]
        assert "seen: none" in err, err
        assert "/task\n" in err.split("pwd: ", 1)[1] and "student writable" in err, err


@pytest_twisted.ensureDeferred
async def test_streams_and_exit_status(backend: DockerBackend) -> None:
    cmd = r"""
out=$(printf 'a b\nc\n' | run_student sh -c 'tr a-z A-Z; echo "to err $# [$1]" >&2; exit 7' 2>"$TMPDIR/err" -x "a  b")
code=$?
feedback-custom out "$out"
feedback-custom err "$(cat "$TMPDIR/err")"
feedback-custom code "$code"
printf 'x' | run_student false; feedback-custom false $?
run_student --bogus true 2>/dev/null; feedback-custom usage $?
run_student --memory abc true 2>/dev/null; feedback-custom badmem $?
run_student /no/such/command 2>/dev/null; feedback-custom missing $?
feedback-result success
"""
    r = await _run(backend, _cmd(cmd))
    assert r.result == "success", r
    assert r.custom == {
        "out": "A B\nC",
        "err": "to err 1 [a  b]",
        "code": "7",
        "false": "1",
        "usage": "254",
        "badmem": "254",
        "missing": "127",
    }


@pytest_twisted.ensureDeferred
async def test_out_of_memory_and_time(backend: DockerBackend) -> None:
    cmd = r"""
run_student --memory 16 sh -c 'a=0123456789abcdef; while :; do a="$a$a"; done' 2>/dev/null; feedback-custom oom $?
run_student --time 1 sh -c 'while :; do :; done'; feedback-custom cpu $?
run_student --hard-time 1 sleep 30; feedback-custom wall $?
feedback-result success
"""
    r = await _run(backend, _cmd(cmd, time_limit=20, hard_time_limit=60, mem_limit=128))
    assert r.result == "success", r
    assert r.custom == {"oom": "252", "cpu": "253", "wall": "253"}


@pytest_twisted.ensureDeferred
async def test_network_only_when_shared(backend: DockerBackend) -> None:
    """No network at all by default; --share-network: the grader's (here: its loopback)."""
    cmd = r"""
feedback-custom alone "$(run_student sh -c 'busybox ip -o link | wc -l')"
# The listener's input stays open (fd 3): busybox nc closes its side as soon as
# its input ends, which with /dev/null could be before the client wrote.
mkfifo "$TMPDIR/in"
busybox nc -l -p 5555 < "$TMPDIR/in" > "$TMPDIR/got" &
listener=$!
exec 3> "$TMPDIR/in"
# on a busy machine the listener may take a while to be up
j=0
until busybox netstat -ltn 2>/dev/null | grep -q ':5555 ' || [ $j -ge 100 ]; do
    sleep 0.1
    j=$((j + 1))
done
run_student sh -c 'echo no | busybox nc -w 1 127.0.0.1 5555' 2>/dev/null; feedback-custom apart $?
i=0
sent=no
while [ $i -lt 10 ]; do
    if run_student --share-network sh -c 'echo hi | busybox nc -w 1 127.0.0.1 5555' 2>"$TMPDIR/err"; then
        sent=yes
        break
    fi
    i=$((i + 1))
    sleep 0.5
done
# what was sent is in the listener's socket: wait for it to be read, not a fixed time
k=0
while [ $sent = yes ] && [ ! -s "$TMPDIR/got" ] && [ $k -lt 300 ]; do
    sleep 0.1
    k=$((k + 1))
done
feedback-custom tries "$i"
feedback-custom waited "$j"
feedback-custom err "$(cat "$TMPDIR/err")"
kill $listener 2>/dev/null
wait $listener
exec 3>&-
feedback-custom got "$(cat "$TMPDIR/got")"
feedback-result success
"""
    r = await _run(backend, _cmd(cmd))
    assert r.result == "success", r
    assert r.custom["alone"] == "1", "more than the loopback interface"
    assert r.custom["apart"] != "0", "the student's container reached the grader without --share-network"
    if _runtime(backend) == "runsc":
        # each gVisor sandbox has its own network stack (and --network=none): nothing is shared
        assert r.custom["got"] == ""
    else:
        assert r.custom["got"] == "hi", r.custom


def test_limits_never_exceed_the_job() -> None:
    job = new_job(time_limit=10, hard_time_limit=25, mem_limit=100)
    assert limits_for(job, None, None, None) == (10.0, 25.0, 100)
    assert limits_for(job, 2, None, 50) == (2.0, 6.0, 50)
    assert limits_for(job, 99, 99, 999) == (10.0, 25.0, 100)
    nohard = new_job(time_limit=4, mem_limit=64)
    assert limits_for(nohard, None, None, None) == (4.0, 12.0, 64)
