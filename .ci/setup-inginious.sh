#!/usr/bin/env bash
# Real INGInious releases for the interoperability tests: one virtualenv per
# release, each with only what its client/agent/backend modules import
# (pyzmq, msgpack).  Idempotent: a virtualenv that already imports its
# release is left alone.  Paths can be moved with ITX_INGINIOUS_06 and
# ITX_INGINIOUS_09 (tests/inginious_support.py reads the same variables).
set -euo pipefail

V06="${ITX_INGINIOUS_06:-/opt/itx-inginious-0.6}"
V09="${ITX_INGINIOUS_09:-/opt/itx-inginious-0.9.2}"
# inginious==0.9.2 WITH its dependencies: the real inginious-agent-mcq (and
# inginious-agent-docker) and the frontend's Task classes, for the tests
# that compare our agents with INGInious' own (tests/test_mcq_interop.py).
V09FULL="${ITX_INGINIOUS_09_FULL:-/opt/itx-inginious-0.9.2-full}"
PYTHON="${ITX_INGINIOUS_PYTHON:-python3}"

if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-venv >/dev/null
fi

# $1: an empty virtualenv there (what was there is removed), with current pip tools.
fresh_venv() {
    rm -rf "$1"
    "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
}

# $1 venv, $2 release, $3 version the package must report, then the
# requirements (the release's own pins where it has them).
make_venv() {
    local venv="$1" release="$2" version="$3"
    shift 3
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "
import inginious, zmq, msgpack
assert inginious.__version__ == '$version', inginious.__version__
import inginious.client.client, inginious.agent, inginious.backend.backend
" >/dev/null 2>&1; then
        echo "setup-inginious: $venv already holds inginious $version"
        return
    fi
    fresh_venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "inginious==$release"
}

make_venv "$V06" 0.6 0.6 "pyzmq>=22" "msgpack>=1.0"
make_venv "$V09" 0.9.2 0.9.2 "pyzmq==26.2.1" "msgpack==1.1.0"

# The full 0.9.2 release, dependencies included (idempotent as above).
if [ -x "$V09FULL/bin/python" ] && [ -x "$V09FULL/bin/inginious-agent-mcq" ] && "$V09FULL/bin/python" -c "
import inginious
assert inginious.__version__ == '0.9.2', inginious.__version__
import inginious.agent.mcq_agent, inginious.agent.docker_agent, inginious.frontend.tasks, inginious.frontend.course_factory
from inginious.frontend.environment_types.docker import DockerEnvType
import inginious.client.client, inginious.backend.backend
" >/dev/null 2>&1; then
    echo "setup-inginious: $V09FULL already holds inginious 0.9.2 with its dependencies"
else
    fresh_venv "$V09FULL"
    "$V09FULL/bin/python" -m pip install --quiet --disable-pip-version-check "inginious==0.9.2"
fi

# msgpack 1.x removed the ``encoding=`` argument of msgpack < 1.0 (it now
# decodes str by default).  The INGInious 0.6 wheel on PyPI already asks for
# msgpack >= 1.0 and its client, agent and backend pass no ``encoding=`` (checked
# when this was written), but 0.6-era code that does would fail with a
# TypeError deep in a peer: a start-up hook in the 0.6 virtualenv accepts the
# argument (and means raw=False by it), so that such code keeps working.
site="$("$V06/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cat >"$site/itx_msgpack_shim.py" <<'PY'
"""msgpack 1.x accepting the ``encoding=`` argument of msgpack < 1.0 (inginious-tx test shim)."""
import functools

import msgpack


def _drop_encoding(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        encoding = kwargs.pop("encoding", None)
        if encoding is not None and "raw" not in kwargs:
            kwargs["raw"] = False
        return fn(*args, **kwargs)

    return wrapper


if not getattr(msgpack, "_itx_shimmed", False):
    msgpack.unpackb = msgpack.loads = _drop_encoding(msgpack.unpackb)
    msgpack.Unpacker = type("Unpacker", (msgpack.Unpacker,), {"__init__": _drop_encoding(msgpack.Unpacker.__init__)})
    msgpack._itx_shimmed = True
PY
echo "import itx_msgpack_shim" >"$site/itx_msgpack_shim.pth"

# Fail loudly now rather than in the tests.
"$V06/bin/python" - <<'PY'
import msgpack
from inginious.common.messages import ClientHello
from inginious.common.message_meta import MessageMeta
assert MessageMeta.load(ClientHello("x").dump()).name == "x"
assert msgpack.unpackb(msgpack.packb("é"), encoding="utf-8") == "é"
import inginious.client.client, inginious.agent, inginious.backend.backend  # noqa: E401
PY
"$V09/bin/python" - <<'PY'
from inginious.common import messages
assert messages.load(messages.dump(messages.ClientHello("x"))).name == "x"
import inginious.client.client, inginious.agent, inginious.backend.backend  # noqa: E401
PY
"$V09FULL/bin/python" - <<'PY'
import inginious
assert inginious.__version__ == "0.9.2", inginious.__version__
from inginious.agent.mcq_agent import MCQAgent  # noqa: F401
from inginious.frontend.task_problems import get_default_displayable_problem_types
assert {"multiple_choice", "match"} <= set(get_default_displayable_problem_types())
PY
test -x "$V09FULL/bin/inginious-agent-mcq"
echo "setup-inginious: $V06, $V09 and $V09FULL ready"
