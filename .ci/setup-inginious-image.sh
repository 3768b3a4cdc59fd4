#!/usr/bin/env bash
# The INGInious 0.9.2 side of the "real INGInious images" tests (issue 17):
#
#  1. the local stand-in of INGInious 0.9.2's `default` grading image, built by
#     shared/inginious-0.9.2/build_image.sh (a Debian root filesystem made by
#     mmdebstrap from this machine's apt sources, no container registry);
#  2. a check of the virtualenv that .ci/setup-inginious.sh makes, holding inginious==0.9.2 WITH its dependencies (the real
#     inginious-agent-docker, inginious-agent-mcq, the frontend's task classes),
#     at ${ITX_INGINIOUS_09_FULL:-/opt/itx-inginious-0.9.2-full}.
#
# Idempotent: build_image.sh rebuilds only when its inputs changed.  Run after
# .ci/docker-setup.sh (the engine must answer).  Fails loudly.
#
# Environment:
#   ITX_SHARED              the shared folder (default: ../shared beside the repository)
#   INGI_IMAGE              the image's tag (default inginious-c-default:0.9.2-local; read by build_image.sh)
#   ITX_INGINIOUS_09_FULL   the full 0.9.2 virtualenv (tests/inginious_support.py reads it too)
set -euo pipefail
say() { echo "setup-inginious-image: $*"; }
die() { echo "setup-inginious-image: ERROR: $*" >&2; exit 1; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${ITX_SHARED:-$REPO/../shared}"
# a git worktree elsewhere: the shared folder is beside the main checkout
if [ -z "${ITX_SHARED:-}" ] && [ ! -d "$SHARED" ] && common="$(git -C "$REPO" rev-parse --path-format=absolute --git-common-dir 2>/dev/null)"; then
    SHARED="$(dirname "$(dirname "$common")")/shared"
fi
BUILD="$SHARED/inginious-0.9.2/build_image.sh"
VFULL="${ITX_INGINIOUS_09_FULL:-/opt/itx-inginious-0.9.2-full}"
export DEBIAN_FRONTEND=noninteractive

[ -f "$BUILD" ] || die "no $BUILD (set ITX_SHARED to the shared folder)"
docker info >/dev/null 2>&1 || die "the docker engine does not answer: run .ci/docker-setup.sh first"

# apt lists are empty on a fresh machine: update once before the first install.
apt_updated=no
apt_install() {
    [ "$(id -u)" = 0 ] || die "missing Debian packages ($*) and not root"
    if [ "$apt_updated" = no ]; then
        apt-get update -qq || die "apt-get update failed"
        apt_updated=yes
    fi
    apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}

# -- 1. the image ------------------------------------------------------------
# build_image.sh installs mmdebstrap itself but without `apt-get update`: do it here.
command -v mmdebstrap >/dev/null 2>&1 || { say "installing mmdebstrap"; apt_install mmdebstrap; }
IMAGE="$(bash "$BUILD" | tail -n 1)" || die "$BUILD failed"
[ -n "$IMAGE" ] || die "$BUILD printed no image name"
LABEL="$(docker image inspect -f '{{ index .Config.Labels "org.inginious.grading.agent_version" }}' "$IMAGE" 2>/dev/null)" ||
    die "the image $IMAGE is missing after the build"
[ "$LABEL" = 3 ] || die "the image $IMAGE has agent_version '$LABEL', not 3"
OUT="$(docker run --rm --network none "$IMAGE" python3 -c 'import inginious.feedback, inginious.input; print("ok")' 2>&1)" ||
    die "cannot run python3 in $IMAGE: $OUT"
[ "$OUT" = ok ] || die "unexpected output from $IMAGE: $OUT"
say "image ready: $IMAGE"

# -- 2. the full INGInious 0.9.2 virtualenv ----------------------------------
check_full() {
    [ -x "$VFULL/bin/python" ] && "$VFULL/bin/python" - <<'PY'
import inginious
assert inginious.__version__ == "0.9.2", inginious.__version__
import inginious.agent.docker_agent, inginious.agent.mcq_agent, inginious.backend.backend, inginious.client.client  # noqa
import inginious.frontend.tasks  # noqa
from inginious.frontend.environment_types.docker import DockerEnvType  # noqa
PY
}
# .ci/setup-inginious.sh makes it (run before this script); check that it holds what these tests use.
check_full >/dev/null 2>&1 || die "$VFULL does not import the INGInious 0.9.2 agents and frontend: run .ci/setup-inginious.sh first"
for prog in inginious-agent-docker inginious-agent-mcq inginious-backend; do
    [ -x "$VFULL/bin/$prog" ] || die "$VFULL/bin/$prog is missing"
done
say "ready: $IMAGE and $VFULL"
