"""contrib/systemd: the units pass ``systemd-analyze verify``, the sysusers and
tmpfiles files make the user and folders the units expect, and the options the
example ``*.env`` files pass are real options of the twistd commands."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from subprocess_env import REPO

SYSTEMD = REPO / "contrib" / "systemd"
UNITS = ("inginious-backend.service", "inginious-agent.service")
TWISTD = "/opt/inginious-tx/bin/twistd"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing: .ci/run installs systemd")
        pytest.skip(f"{name} is not installed (Debian package systemd)")
    return path


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    # verify checks that ExecStart's program exists: the units name the venv of
    # docs/install.rst, which this machine need not have, so it is made here
    twistd = tmp_path / "opt" / "bin" / "twistd"
    twistd.parent.mkdir(parents=True)
    twistd.write_text(f"#!/bin/sh\nexec {sys.executable} -m twisted \"$@\"\n")
    twistd.chmod(0o755)
    units: List[str] = []
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        assert f"ExecStart={TWISTD} --nodaemon --pidfile= --logfile=- " in text, name
        (tmp_path / name).write_text(text.replace(TWISTD, str(twistd)))
        units.append(str(tmp_path / name))
    run = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=120)
    ours = [line for line in (run.stdout + run.stderr).splitlines() if "inginious" in line]
    assert run.returncode == 0 and ours == [], run.stdout + run.stderr


def test_sysusers_and_tmpfiles_make_the_user_and_folders(tmp_path: Path) -> None:
    sysusers, tmpfiles = _tool("systemd-sysusers"), _tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles sets owners: tested as root (as CI runs)")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").touch()
    (root / "etc" / "group").touch()
    for kind in ("sysusers", "tmpfiles"):
        folder = root / "usr" / "lib" / f"{kind}.d"
        folder.mkdir(parents=True)
        shutil.copy(SYSTEMD / f"inginious-tx.{kind}", folder / "inginious-tx.conf")
    for command in ([sysusers, f"--root={root}"], [tmpfiles, "--create", f"--root={root}"]):
        run = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr

    [user] = [line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines()]
    assert user[0] == "inginious" and user[6] in ("/usr/sbin/nologin", "/sbin/nologin"), user
    assert 0 < int(user[2]) < 1000  # a system user
    [group] = [line.split(":") for line in (root / "etc" / "group").read_text().splitlines()]
    assert group[0] == "inginious"
    # the keys folder: readable by the backend's group, by nobody else
    etc = os.stat(root / "etc" / "inginious-tx")
    assert (etc.st_uid, etc.st_gid, etc.st_mode & 0o777) == (0, int(group[2]), 0o750)
    tasks = os.stat(root / "srv" / "inginious-tx" / "tasks")
    assert (tasks.st_uid, tasks.st_mode & 0o777) == (0, 0o755)
    # the units run as that user, or (the Docker agent) say why not
    backend = (SYSTEMD / "inginious-backend.service").read_text()
    assert "User=inginious\n" in backend and "Group=inginious\n" in backend
    assert "It runs as root" in (SYSTEMD / "inginious-agent.service").read_text()


def _options_of(env_file: Path, variable: str) -> List[str]:
    [line] = [line for line in env_file.read_text().splitlines() if line.startswith(f"{variable}=")]
    return re.findall(r"(?<!\S)--([a-z][a-z0-9-]*)", line)


def test_the_env_files_pass_real_options() -> None:
    from inginious_tx.agent import tap as agent_tap
    from inginious_tx.backend import tap as backend_tap

    def long_options(options: object) -> set:
        return {name.rstrip("=") for name in options.longOpt}  # type: ignore[attr-defined]

    backend = _options_of(SYSTEMD / "backend.env", "BACKEND_ARGS")
    agent = _options_of(SYSTEMD / "agent.env", "AGENT_ARGS")
    assert {"clients", "agents", "status"} <= set(backend)
    assert {"backend", "tasks", "environment"} <= set(agent)
    assert set(backend) <= long_options(backend_tap.Options())
    unit = (SYSTEMD / "inginious-agent.service").read_text()
    assert set(agent) | set(re.findall(r"(?<!\S)--([a-z][a-z0-9-]*)", unit.split("inginious-agent ", 1)[1])) <= (
        long_options(agent_tap.Options()) | {"nodaemon", "pidfile", "logfile"}
    )
