"""What .ci/setup-inginious-image.sh provides: INGInious 0.9.2's grading image
(stand-in) and its full installation, and that a missing one fails under CI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import inginious_image_support as support
import pytest
from docker_support import docker_client


def test_image_runs_its_inginious_program() -> None:
    image = support.require_inginious_image()
    client = docker_client()
    try:
        config = client.images.get(image).attrs["Config"]
        assert config["Labels"]["org.inginious.grading.agent_version"] == "3"
        assert config["Labels"]["org.inginious.grading.name"] == "default"
        assert config["Cmd"] == ["INGInious"]
        out = client.containers.run(
            image,
            ["sh", "-c", "for p in INGInious parsetemplate run_student; do command -v $p; done; id -u worker"],
            network_mode="none",
            remove=True,
        ).decode()
    finally:
        client.close()
    *programs, uid = out.split()
    assert [p.rsplit("/", 1)[1] for p in programs] == ["INGInious", "parsetemplate", "run_student"]
    assert uid == "4242"


def test_full_virtualenv_has_the_real_programs() -> None:
    support.require_inginious_full()
    for name in ("inginious-agent-docker", "inginious-agent-mcq", "inginious-backend"):
        done = subprocess.run(
            [support.inginious_full_program(name), "--help"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "backend" in done.stdout or "agent" in done.stdout


def test_missing_setup_fails_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(support, "VENV_FULL", tmp_path / "nowhere")
    support.inginious_full_problem.cache_clear()
    try:
        monkeypatch.setenv("CI", "true")
        with pytest.raises(pytest.fail.Exception, match="nowhere"):
            support.require_inginious_full()
        monkeypatch.delenv("CI")
        with pytest.raises(pytest.skip.Exception, match="setup-inginious-image.sh"):
            support.require_inginious_full()
    finally:
        support.inginious_full_problem.cache_clear()


def test_setup_script_is_called_from_ci_run() -> None:
    root = Path(__file__).resolve().parent.parent
    run = (root / ".ci" / "run").read_text()
    assert "bash .ci/setup-inginious-image.sh" in run
    assert run.index("docker-setup.sh") < run.index("setup-inginious-image.sh")
