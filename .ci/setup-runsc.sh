#!/bin/sh
# Register gVisor (runsc) as a Docker runtime, for the Docker agent's
# `--environment NAME=IMAGE,runtime=runsc` and its tests under runsc.
#
# Idempotent; run after .ci/docker-setup.sh (the engine must answer).  The
# runtime is added to /etc/docker/daemon.json (other settings kept) and the
# engine reloads it on SIGHUP: no restart, running containers are untouched.
# Also installs the OpenSSH client and sshpass used by the SSH debug tests.
set -eu
say() { echo "setup-runsc: $*"; }
die() { echo "setup-runsc: ERROR: $*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
need=""
command -v runsc >/dev/null 2>&1 || need="$need runsc"
command -v ssh >/dev/null 2>&1 || need="$need openssh-client"
command -v sshpass >/dev/null 2>&1 || need="$need sshpass"
if [ -n "$need" ]; then
    [ "$(id -u)" = 0 ] || die "missing:$need and not root"
    say "installing$need"
    apt-get update -qq || die "apt-get update failed"
    # shellcheck disable=SC2086  # word splitting wanted
    apt-get install -y -qq $need >/dev/null || die "apt-get install$need failed"
fi
RUNSC="$(command -v runsc)"
docker info >/dev/null 2>&1 || die "the docker engine does not answer: run .ci/docker-setup.sh first"

CONF=/etc/docker/daemon.json
if docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}' | tr ' ' '\n' | grep -qx runsc; then
    say "runsc already registered with the engine"
else
    mkdir -p /etc/docker
    python3 - "$CONF" "$RUNSC" <<'PY' || die "cannot update $CONF"
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
conf = {}
if os.path.exists(path) and os.path.getsize(path):
    with open(path) as f:
        conf = json.load(f)
conf.setdefault("runtimes", {})["runsc"] = {"path": runsc, "runtimeArgs": ["--platform=ptrace", "--network=none"]}
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump(conf, f, indent=2)
os.replace(tmp, path)
PY
    PID="$(pgrep -xo dockerd)" || die "no dockerd process to reload"
    say "reloading dockerd ($PID) with SIGHUP"
    kill -HUP "$PID"
    i=0
    until docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}' | tr ' ' '\n' | grep -qx runsc; do
        i=$((i + 1))
        [ "$i" -lt 20 ] || die "dockerd did not pick up the runsc runtime (see its log)"
        sleep 0.5
    done
fi

# smoke test: the settings the agent uses, without a pids limit (see docs/security.rst)
IMAGE="${INGINIOUS_TX_TEST_IMAGE:-inginious-tx/busybox:test}"
OUT="$(docker run --rm --runtime=runsc --network none --memory 32m --memory-swap 32m --read-only \
    --cap-drop ALL --security-opt no-new-privileges --user 4242:4242 "$IMAGE" sh -c 'echo ok' 2>&1)" ||
    die "cannot run a container under runsc: $OUT"
[ "$OUT" = ok ] || die "unexpected output under runsc: $OUT"
say "ready: runsc ($RUNSC)"
