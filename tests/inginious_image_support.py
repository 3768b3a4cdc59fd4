"""INGInious 0.9.2's own grading image and full installation, for tests that
compare our agents with the real ones (issue 17).

``.ci/setup-inginious-image.sh`` makes both: the local stand-in of the
``default`` grading image (``shared/inginious-0.9.2/build_image.sh``) and a
virtualenv with ``inginious==0.9.2`` and its dependencies (the real
``inginious-agent-docker``, ``inginious-agent-mcq``, ``inginious-backend`` and
the frontend's task classes).  Missing either skips the test with the reason,
except under ``CI`` where it fails it::

    def test_x():
        image = require_inginious_image()
        python = require_inginious_full()
        agent = inginious_full_program("inginious-agent-docker")
"""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Optional

from host_tools import missing_setup

__all__ = [
    "SHARED",
    "require_shared",
    "INGINIOUS_IMAGE",
    "VENV_FULL",
    "SETUP",
    "inginious_image_problem",
    "inginious_full_problem",
    "require_inginious_image",
    "require_inginious_full",
    "inginious_full_program",
]


def _shared() -> Path:
    """The shared folder: $ITX_SHARED, else ``../shared`` beside the repository (or its main checkout)."""
    if os.environ.get("ITX_SHARED"):
        return Path(os.environ["ITX_SHARED"])
    repo = Path(__file__).resolve().parent.parent
    beside = repo.parent / "shared"
    if beside.is_dir():
        return beside
    try:  # a git worktree elsewhere: beside the main checkout
        common = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--path-format=absolute", "--git-common-dir"],
            capture_output=True, text=True, timeout=30,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return beside
    return Path(common).parent.parent / "shared" if common else beside


#: The shared test material (``inginious-0.9.2/`` holds INGInious' base-container files and tasks).
SHARED = _shared()


def require_shared(*parts: str) -> Path:
    """A path inside the shared folder; skip (outside CI) or fail (under CI) when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        missing_setup(f"{path} is missing (the shared folder beside the repository; ITX_SHARED names another)")
    return path


#: The stand-in of INGInious 0.9.2's ``default`` image (same variable as build_image.sh).
INGINIOUS_IMAGE = os.environ.get("INGI_IMAGE", "inginious-c-default:0.9.2-local")
#: The virtualenv of inginious==0.9.2 with its dependencies (same variable as the CI script).
VENV_FULL = Path(os.environ.get("ITX_INGINIOUS_09_FULL", "/opt/itx-inginious-0.9.2-full"))
#: What makes both.
SETUP = ".ci/setup-inginious-image.sh"

_CHECK_FULL = """
import inginious
assert inginious.__version__ == "0.9.2", inginious.__version__
import inginious.agent.docker_agent, inginious.agent.mcq_agent, inginious.frontend.tasks
"""


@lru_cache(maxsize=1)
def inginious_image_problem() -> Optional[str]:
    """Why the INGInious image is not usable here, or None (checked once)."""
    try:
        import docker
    except ImportError as e:
        return f"the docker Python package is missing ({e})"
    try:
        client = docker.from_env(timeout=10)
    except Exception as e:
        return f"no docker engine ({e})"
    try:
        labels = client.images.get(INGINIOUS_IMAGE).labels or {}
    except docker.errors.ImageNotFound:
        return f"the INGInious image {INGINIOUS_IMAGE} is missing (run {SETUP})"
    except Exception as e:
        return f"the docker engine does not answer ({e})"
    finally:
        client.close()
    if labels.get("org.inginious.grading.agent_version") != "3":
        return (
            f"the image {INGINIOUS_IMAGE} is not labelled org.inginious.grading.agent_version=3 (rebuild it: {SETUP})"
        )
    return None


@lru_cache(maxsize=1)
def inginious_full_problem() -> Optional[str]:
    """Why the full INGInious 0.9.2 virtualenv is not usable here, or None (checked once)."""
    python = VENV_FULL / "bin" / "python"
    if not python.exists():
        return f"no full INGInious 0.9.2 virtualenv at {VENV_FULL} (run {SETUP})"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(python), "-c", _CHECK_FULL], capture_output=True, text=True, env=env, timeout=120)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"the virtualenv {VENV_FULL} does not import INGInious 0.9.2's agents and frontend ({last}; run {SETUP})"
    return None


def require_inginious_image() -> str:
    """The image's tag; skip (outside CI) or fail (under CI) without it."""
    problem = inginious_image_problem()
    if problem is not None:
        missing_setup(problem)
    return INGINIOUS_IMAGE


def require_inginious_full() -> str:
    """The full virtualenv's Python; skip (outside CI) or fail (under CI) without it."""
    problem = inginious_full_problem()
    if problem is not None:
        missing_setup(problem)
    return str(VENV_FULL / "bin" / "python")


def inginious_full_program(name: str) -> str:
    """The path of one of the virtualenv's programs (``inginious-agent-docker``...)."""
    require_inginious_full()
    path = VENV_FULL / "bin" / name
    if not path.exists():
        missing_setup(f"{path} is missing (run {SETUP})")
    return str(path)
