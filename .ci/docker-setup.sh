#!/bin/sh
# Make a Docker engine available for the Docker agent tests, offline.
#
#   .ci/docker-setup.sh            install (if needed), start dockerd, build the image
#
# Idempotent: an engine that already answers is left alone, and the test image
# is rebuilt only when the busybox binary it is made from changed.  Nothing is
# pulled from a registry: the image is a busybox root filesystem fed to
# `docker import`.  Fails loudly (non-zero, with the daemon log) when Docker
# cannot be made to work.
#
# Environment:
#   INGINIOUS_TX_TEST_IMAGE   image tag to build (default inginious-tx/busybox:test)
#   DOCKERD_LOG               daemon log file (default /var/log/dockerd.log)
#   DOCKER_START_TIMEOUT      seconds to wait for the daemon (default 40)
set -eu

IMAGE="${INGINIOUS_TX_TEST_IMAGE:-inginious-tx/busybox:test}"
LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
START_TIMEOUT="${DOCKER_START_TIMEOUT:-40}"
LABEL="org.inginious-tx.busybox-sha256"

die() {
    echo "docker-setup: ERROR: $*" >&2
    if [ -f "$LOG" ]; then
        echo "---- last lines of $LOG ----" >&2
        tail -n 40 "$LOG" >&2 || true
    fi
    exit 1
}
say() { echo "docker-setup: $*"; }

# -- 1. packages -------------------------------------------------------------
find_busybox() {
    for b in /bin/busybox /usr/bin/busybox; do
        # a static busybox runs inside an empty root filesystem
        if [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then
            echo "$b"
            return 0
        fi
    done
    return 1
}

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1 || ! find_busybox >/dev/null; then
    [ "$(id -u)" = 0 ] || die "docker.io / busybox-static missing and not root: install them first"
    say "installing docker.io and busybox-static with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq docker.io busybox-static >/dev/null || die "apt-get install docker.io busybox-static failed"
fi
BUSYBOX="$(find_busybox)" || die "no statically linked busybox found (install busybox-static)"

# -- 2. daemon ---------------------------------------------------------------
wait_engine() {
    i=0
    while [ "$i" -lt "$START_TIMEOUT" ]; do
        docker info >/dev/null 2>&1 && return 0
        # the daemon died: no use waiting
        [ -n "${1:-}" ] && ! kill -0 "$1" 2>/dev/null && return 1
        sleep 1
        i=$((i + 1))
    done
    return 1
}

start_dockerd() {
    # $@: extra dockerd arguments
    say "starting dockerd $*"
    mkdir -p "$(dirname "$LOG")"
    # setsid: the daemon must outlive this script and its process group
    setsid dockerd "$@" >>"$LOG" 2>&1 < /dev/null &
    DOCKERD_PID=$!
    wait_engine "$DOCKERD_PID"
}

if docker info >/dev/null 2>&1; then
    say "engine already running"
else
    command -v containerd >/dev/null 2>&1 || say "warning: containerd not on PATH"
    if pgrep -x dockerd >/dev/null 2>&1; then
        # started by someone else and still coming up
        wait_engine || die "a dockerd process exists but the engine does not answer"
    else
        # Fallbacks for sandboxes: overlay2 is refused on overlay-on-overlay (vfs
        # always works, slower), and some have no iptables (then no NAT, but
        # containers with a network still reach the host through the bridge).
        started=no
        for extra in "" "--storage-driver vfs" "--storage-driver vfs --iptables=false --ip-masq=false"; do
            # shellcheck disable=SC2086  # word splitting wanted
            if start_dockerd $extra; then
                started=yes
                break
            fi
            kill "$DOCKERD_PID" 2>/dev/null || true
            wait "$DOCKERD_PID" 2>/dev/null || true
            say "dockerd did not come up with '${extra:-default settings}'"
        done
        [ "$started" = yes ] || die "dockerd does not start (see its log below)"
    fi
fi

DRIVER="$(docker info --format '{{.Driver}}' 2>/dev/null || echo '?')"
CGROUP="$(docker info --format '{{.CgroupVersion}} ({{.CgroupDriver}})' 2>/dev/null || echo '?')"
say "engine up: storage driver $DRIVER, cgroup $CGROUP"
docker info --format '{{range .Warnings}}{{println .}}{{end}}' 2>/dev/null | sed 's/^/docker-setup: engine warning: /' | grep -v ': $' || true

# -- 3. test image -----------------------------------------------------------
SUM="$(sha256sum "$BUSYBOX" | cut -d' ' -f1)"
HAVE="$(docker image inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$IMAGE" 2>/dev/null || true)"
if [ "$HAVE" = "$SUM" ]; then
    say "image $IMAGE up to date"
else
    say "building $IMAGE from $BUSYBOX"
    ROOT="$(mktemp -d)"
    trap 'rm -rf "$ROOT"' EXIT
    mkdir -p "$ROOT/bin" "$ROOT/etc" "$ROOT/tmp" "$ROOT/task" "$ROOT/root" \
        "$ROOT/dev" "$ROOT/proc" "$ROOT/sys"
    chmod 1777 "$ROOT/tmp"
    cp "$BUSYBOX" "$ROOT/bin/busybox"
    # applet symlinks, made by busybox itself inside the new root
    chroot "$ROOT" /bin/busybox --install -s /bin || die "busybox --install failed"
    ln -s /bin "$ROOT/sbin"
    mkdir -p "$ROOT/usr"
    ln -s /bin "$ROOT/usr/bin"
    ln -s /bin "$ROOT/usr/sbin"
    cat > "$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
worker:x:4242:4242:grading jobs:/task:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat > "$ROOT/etc/group" <<'EOF'
root:x:0:
worker:x:4242:
nogroup:x:65534:
EOF
    echo "hosts: files" > "$ROOT/etc/nsswitch.conf"
    tar -C "$ROOT" --numeric-owner -cf - . \
        | docker import -c "LABEL $LABEL=$SUM" -c 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null \
        || die "docker import failed"
    rm -rf "$ROOT"
    trap - EXIT
fi

# -- 4. smoke test: the limits the agent relies on ---------------------------
OUT="$(docker run --rm --network none --memory 32m --memory-swap 32m --pids-limit 64 \
    --cap-drop ALL --security-opt no-new-privileges --user 4242:4242 \
    "$IMAGE" sh -c 'echo ok' 2>&1)" || die "cannot run a container from $IMAGE: $OUT"
[ "$OUT" = ok ] || die "unexpected container output: $OUT"
say "ready: $IMAGE"
