"""The shell commands the running page shows work as written, from any folder.

The two-process example of ``docs/running.rst`` is read from the page itself
(its ``code-block:: shell``), and each of its three commands is run by
``bash`` in a folder outside the checkout, as a newcomer would type them in
three terminals: a real backend, a real agent, and a job graded through them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List

import pytest
from subprocess_env import REPO, child_env

RUNNING = REPO / "docs" / "running.rst"


def shell_blocks(text: str) -> List[List[str]]:
    """The commands of each ``.. code-block:: shell`` of a reST text, one
    string per command (backslash continuations joined)."""
    blocks = []
    for match in re.finditer(r"^\.\. code-block:: shell\n\n((?:    .*\n|\n)+)", text, re.M):
        body = "\n".join(line[4:] for line in match.group(1).splitlines())
        joined = re.sub(r"\\\n\s*", "", body)
        blocks.append([line.strip() for line in joined.splitlines() if line.strip()])
    return blocks


def test_shell_blocks_are_read_as_commands() -> None:
    text = ".. code-block:: shell\n\n    a --x \\\n        --y\n    b\n\nprose\n"
    assert shell_blocks(text) == [["a --x --y", "b"]]


def _ports_taken(*ports: int) -> List[int]:
    taken = []
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                taken.append(port)
    return taken


def _bin(folder: Path) -> Path:
    """``twistd``, ``inginious-tx`` and ``python`` of this interpreter, as the
    console scripts an install would put on PATH."""
    folder.mkdir()
    scripts = {
        "python": f'exec "{sys.executable}" "$@"',
        "twistd": f'exec "{sys.executable}" -c "import sys; from twisted.scripts.twistd import run; '
        f"sys.argv[0] = 'twistd'; run()\" \"$@\"",
        "inginious-tx": f'exec "{sys.executable}" -m inginious_tx.cli "$@"',
    }
    for name, line in scripts.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{line}\n")
        path.chmod(0o755)
    return folder


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def test_two_process_example_grades_a_job_from_any_folder(tmp_path: Path) -> None:
    (block,) = [b for b in shell_blocks(RUNNING.read_text()) if any("inginious-agent" in c for c in b)]
    backend_cmd, agent_cmd, submit_cmd = block
    assert backend_cmd.startswith("twistd ") and "inginious-backend" in backend_cmd
    assert agent_cmd.startswith("twistd ") and submit_cmd.startswith("inginious-tx submit")
    taken = _ports_taken(2000, 2001)
    if taken:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the example's ports {taken} are in use")
        pytest.skip(f"the example's ports {taken} are in use by something else")

    env = child_env()
    env["PATH"] = f"{_bin(tmp_path / 'bin')}{os.pathsep}{env.get('PATH', '')}"
    cwd = tmp_path / "anywhere"  # not the checkout
    cwd.mkdir()
    procs: List[subprocess.Popen] = []
    logs: List[Path] = []

    def start(command: str, name: str) -> Path:
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as out:
            procs.append(
                subprocess.Popen(
                    ["bash", "-c", command],
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        logs.append(log)
        return log

    def text(log: Path) -> str:
        return log.read_text(errors="replace")

    try:
        backend_log = start(backend_cmd, "backend")
        _wait_for(lambda: "backend ready" in text(backend_log) or procs[0].poll() is not None, 60, "the backend")
        agent_log = start(agent_cmd, "agent")
        _wait_for(
            lambda: "registered from" in text(backend_log) or procs[1].poll() is not None,
            60,
            "the agent to register",
        )
        assert procs[0].poll() is None and procs[1].poll() is None, (text(backend_log), text(agent_log))

        graded = subprocess.run(
            ["bash", "-c", submit_cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
        )
        assert graded.returncode == 0, (graded.stdout, graded.stderr, text(backend_log), text(agent_log))
        assert graded.stdout.splitlines()[:2] == ["result: success", "grade: 100"]
        assert "You answered: 42" in graded.stdout
        # the job ran on the separate agent, not on an embedded one
        assert "embedded" not in text(backend_log)
        assert "agent 'vm-local' registered" in text(backend_log) or "registered from" in text(backend_log)
        # no pid file: neither a clash between the two nor a file left behind
        assert sorted(os.listdir(cwd)) == []

        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc, log in zip(procs, logs, strict=True):
            # twistd ends itself with the signal that stopped it, after a clean shutdown
            assert proc.wait(timeout=60) in (0, -signal.SIGTERM), text(log)
            assert "Server Shut Down." in text(log), text(log)
            assert "Traceback" not in text(log), text(log)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
