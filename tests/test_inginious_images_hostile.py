"""Our Docker agent against INGInious-labelled images that break the contract, and what it keeps.

A throw-away image (the busybox test image, labelled
``org.inginious.grading.agent_version=3``, whose program is the task's
``hostile.sh``) writes garbage, exits without a result, or hangs; each job
gets a clear answer and the agent runs the next job.  With the INGInious
stand-in image, a running job's containers are checked: owner labels, no
Docker socket, the capabilities granted, no network; a killed job is
answered ``killed`` with its previous state.
"""

from __future__ import annotations

import io
import os
from typing import Any, Dict

import pytest
import pytest_twisted
from docker_support import TEST_IMAGE, assert_left_clean, docker_client, new_job, require_docker
from host_tools import missing_setup
from inginious_image_support import INGINIOUS_IMAGE, require_inginious_image
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from inginious_tx.agent._leftovers import LABEL_OWNER
from inginious_tx.agent.docker import LABEL_AGENT, DockerBackend
from inginious_tx.agent.inginious_image import encode_message
from inginious_tx.agent.inginious_job import GRADER_CAPS, LABEL_STUDENT
from inginious_tx.agent.result import AgentConfig, JobResult

pytestmark = pytest.mark.docker

HOSTILE = "inginious-tx/hostile-ingi:test"
INGI_IMAGE = INGINIOUS_IMAGE


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _task(root: Any, name: str, files: Dict[str, Any]) -> None:
    path = root / "c" / name
    path.mkdir(parents=True)
    for fname, content in files.items():
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(path / fname, mode) as f:
            f.write(content)


@pytest.fixture(scope="module")
def hostile_image() -> Any:
    """The busybox test image as an INGInious image whose program is the task's hostile.sh."""
    require_docker()
    client = docker_client()
    dockerfile = (
        f'FROM {TEST_IMAGE}\nLABEL org.inginious.grading.agent_version=3\nCMD ["/bin/sh", "/task/hostile.sh"]\n'
    )
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=HOSTILE, rm=True)
    yield HOSTILE
    try:
        client.images.remove(HOSTILE, force=True)
    finally:
        client.close()


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: Any) -> str:
    root = tmp_path_factory.mktemp("hostile-tasks")
    result = encode_message({"type": "result", "result": {"result": "success", "text": "after noise"}})
    noise = encode_message({"type": "no_such_message", "x": 1}) + encode_message({"type": "run_student"})
    bad_socket = encode_message({"type": "run_student", "socket_id": "../../escape", "environment": None})
    _task(root, "garbage", {"hostile.sh": "printf 'this is not the protocol at all'\nsleep 30\n"})
    _task(root, "silent", {"hostile.sh": "exit 3\n"})
    _task(root, "noise", {"hostile.sh": "cat /task/out.bin\nsleep 1\n", "out.bin": noise + bad_socket + result})
    _task(root, "hang", {"hostile.sh": "sleep 1000\n"})
    _task(root, "badresult", {"hostile.sh": "cat /task/out.bin\n", "out.bin": encode_message(
        {"type": "result", "result": {"result": "success", "grade": "100"}})})  # fmt: skip
    relay = root / "c" / "relay"
    relay.mkdir()
    (relay / "run").write_text(
        '#!/bin/bash\nout=$(run_student echo relayed)\nret=$?\nfeedback-result success\nfeedback-msg -m "$out $ret"\n'
    )
    os.chmod(relay / "run", 0o755)
    wait = root / "c" / "sshwait"
    wait.mkdir()
    (wait / "run").write_text(
        "#!/bin/bash\ni=0\nwhile [ ! -e student/done ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done\n"
        "feedback-result success\n"
    )
    os.chmod(wait / "run", 0o755)
    slow = root / "c" / "slow"
    slow.mkdir()
    (slow / "run").write_text("#!/bin/bash\nfeedback-result success\nrun_student sleep 1000\n")
    os.chmod(slow / "run", 0o755)
    return str(root)


@pytest.fixture
def backend(tasks: str, hostile_image: str, tmp_path: Any) -> Any:
    work = str(tmp_path / "work")
    environments = [f"hostile={hostile_image}"]
    if _has_image(INGI_IMAGE):
        environments.append(f"ingi={INGI_IMAGE}")
    config = AgentConfig(
        tasks_dir=tasks,
        environments=environments,
        slots=2,
        options={"work_dir": work, "poll_interval": 0.2, "inginious_images": "false"},
    )
    b = DockerBackend(_reactor(), config)
    yield b
    pytest_twisted.blockon(b.close())
    assert_left_clean(b.instance_id, work)


def _has_image(image: str) -> bool:
    client = docker_client()
    try:
        client.images.get(image)
        return True
    except Exception:
        return False
    finally:
        client.close()


async def _run(b: DockerBackend, task: str, env: str = "hostile", **kw: Any) -> JobResult:
    d = b.run(new_job("c", task, environment=env, **kw))
    d.addTimeout(150, _reactor())
    return await d


@pytest_twisted.ensureDeferred
async def test_broken_images_get_clear_answers_and_the_agent_goes_on(backend: DockerBackend) -> None:
    envs = await backend.environments()
    assert "hostile" in envs and "hostile" in backend._ingi  # the label picks the INGInious way
    garbage = await _run(backend, "garbage")
    assert garbage.result == "crash" and "protocol" in garbage.text
    silent = await _run(backend, "silent", inputdata={"@state": "s0"})
    assert silent.result == "crash" and "without sending a result" in silent.text and silent.state == "s0"
    noise = await _run(backend, "noise")
    assert (noise.result, noise.text) == ("success", "after noise")
    bad = await _run(backend, "badresult")
    assert bad.result == "crash" and "malformed" in bad.text
    hang = await _run(backend, "hang", time_limit=1, hard_time_limit=2)
    assert hang.result == "timeout"


@pytest_twisted.ensureDeferred
async def test_a_running_job_keeps_our_isolation_and_can_be_killed(backend: DockerBackend) -> None:
    await backend.environments()
    if "ingi" not in backend._ingi:
        require_inginious_image()
    d = backend.run(new_job("c", "slow", environment="ingi", inputdata={"@state": "before"}, time_limit=60))
    d.addTimeout(120, _reactor())

    def containers() -> Any:
        """The job's grading container (it may be one made ahead: no job label) and its student container."""
        runs = list(backend._runs.values())
        grader = runs[0].container_id if runs else None
        client = docker_client()
        try:
            found = client.api.containers(filters={"label": [f"{LABEL_AGENT}={backend.instance_id}", LABEL_STUDENT]})
            return [client.api.inspect_container(c) for c in [grader, found[0]["Id"]]] if grader and found else None
        finally:
            client.close()

    inspected = None
    for _ in range(300):
        inspected = await deferToThread(containers)
        if inspected:
            break
        await deferLater(_reactor(), 0.1, lambda: None)
    assert inspected, "the grading and the student container never ran together"
    for info in inspected:
        host = info["HostConfig"]
        assert info["Config"]["Labels"].get(LABEL_OWNER)
        assert host["CapDrop"] == ["ALL"] and set(host["CapAdd"] or []) <= {f"CAP_{c}" for c in GRADER_CAPS} | set(
            GRADER_CAPS
        )
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["Memory"] > 0 and host["Memory"] == host["MemorySwap"]
        assert host["NetworkMode"] == "none"
        assert not any("docker.sock" in m.get("Source", "") for m in info["Mounts"])
    backend.kill(_job_id_of(backend))
    result = await d
    assert (result.result, result.state) == ("killed", "before")


def _job_id_of(backend: DockerBackend) -> Any:
    (key,) = list(backend._runs)
    return key


@pytest_twisted.ensureDeferred
async def test_run_student_under_gvisor_goes_through_the_agent(tasks: str, tmp_path: Any) -> None:
    """Under runsc the image's student streams cannot cross sandboxes by a unix socket: the agent relays them."""
    require_docker()
    require_inginious_image()
    client = docker_client()
    try:
        runtimes = set(client.info().get("Runtimes") or {})
    finally:
        client.close()
    if "runsc" not in runtimes:
        missing_setup(f"the docker engine has no runsc runtime (known: {sorted(runtimes)}); run .ci/setup-runsc.sh")
    work = str(tmp_path / "work")
    config = AgentConfig(
        tasks_dir=tasks,
        environments=[f"gv={INGI_IMAGE},runtime=runsc"],
        slots=1,
        options={"work_dir": work, "poll_interval": 0.2, "inginious_images": "false"},
    )
    b = DockerBackend(_reactor(), config)
    try:
        await b.environments()
        result = await _run(b, "relay", env="gv", time_limit=60, hard_time_limit=120)
        assert (result.result, result.text) == ("success", "relayed 0")
    finally:
        await b.close()
    assert_left_clean(b.instance_id, work)


@pytest_twisted.ensureDeferred
async def test_labelled_images_are_offered_as_configured(tasks: str, hostile_image: str, tmp_path: Any) -> None:
    """auto: found only without --environment; true: beside them; false: never."""
    require_inginious_image()
    offered = {}
    for label, envs, opt in (
        ("none", [], {}),
        ("auto", [f"hostile={hostile_image}"], {}),
        ("true", [f"hostile={hostile_image}"], {"inginious_images": "true"}),
        ("false", [f"hostile={hostile_image}"], {"inginious_images": "false"}),
    ):
        config = AgentConfig(tasks_dir=tasks, environments=envs, slots=1, options={"work_dir": str(tmp_path), **opt})
        b = DockerBackend(_reactor(), config)
        try:
            offered[label] = (sorted(await b.environments()), sorted(b._ingi))
        finally:
            await b.close()
    assert "default" in offered["none"][0] and "default" in offered["none"][1]
    assert offered["auto"] == (["hostile"], ["hostile"])
    assert offered["true"][0] == sorted(set(offered["none"][0]) | {"hostile"})
    assert offered["false"] == (["hostile"], ["hostile"])


@pytest_twisted.ensureDeferred
async def test_ssh_debug_opens_a_shell_in_the_grading_container(tasks: str, tmp_path: Any, until: Any) -> None:
    """debug="ssh": the grader runs, and our SSH server opens a shell in its container, as worker in /task."""
    from test_agent_ssh import _Rig, require_ssh_client, ssh

    from inginious_tx.messages import AgentJobDone, AgentJobSSHDebug, BackendNewJob

    require_ssh_client()
    require_inginious_image()
    work = str(tmp_path / "work")
    config = AgentConfig(tasks, [f"default={INGI_IMAGE}"], 2, {"work_dir": work, "poll_interval": 0.2})
    b = DockerBackend(_reactor(), config)
    rig = _Rig(b, str(tmp_path / "keys"))
    await rig.start(until)
    try:
        rig.send(BackendNewJob((b"ssh-client", "dbg"), "c", "sshwait", {}, "default", False, 30, 60, 64, "ssh", None))
        await until(lambda: rig.of(AgentJobSSHDebug) or rig.of(AgentJobDone), 60, "the ssh debug message")
        dbg = rig.of(AgentJobSSHDebug)[0]
        r = await deferToThread(ssh, dbg.port, dbg.password, "id -u; pwd; touch student/done")
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode().split() == ["4242", "/task"]
        await until(lambda: rig.of(AgentJobDone), 60, "the job's result")
        assert rig.of(AgentJobDone)[0].result[0] == "success"
    finally:
        await rig.stop()
    assert_left_clean(b.instance_id, work)
