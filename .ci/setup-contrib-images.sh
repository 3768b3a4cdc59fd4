#!/bin/sh
# Build the images of contrib/ offline (no registry), for tests/test_contrib_compose.py:
#
#   inginious-tx/python-base:bookworm   Debian bookworm with python3 and python3-venv (mmdebstrap | docker import)
#   inginious-tx/prometheus:bookworm    Debian bookworm with Debian's prometheus package (the same way)
#   inginious-tx:local                  contrib/docker/Dockerfile FROM the first, from wheels made here
#
# Idempotent and cheap when nothing changed: each image carries a hash of what
# it is made from (package list and apt sources; Dockerfile, wheels and
# sources) and is rebuilt only when that changes.  Fails loudly.
# Needs: a running Docker engine (.ci/docker-setup.sh), root, the Debian archive
# and the Python package index (for the wheels).
set -eu
cd "$(dirname "$0")/.."

BASE="${INGINIOUS_TX_BASE_IMAGE:-inginious-tx/python-base:bookworm}"
PROM="${INGINIOUS_TX_PROMETHEUS_IMAGE:-inginious-tx/prometheus:bookworm}"
IMAGE="${INGINIOUS_TX_IMAGE:-inginious-tx:local}"
LABEL=org.inginious-tx.contrib.hash

die() { echo "setup-contrib-images: ERROR: $*" >&2; exit 1; }
say() { echo "setup-contrib-images: $*"; }
label() { docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }

docker info >/dev/null 2>&1 || die "the Docker engine does not answer (run .ci/docker-setup.sh first)"
export DEBIAN_FRONTEND=noninteractive
need=""
command -v mmdebstrap >/dev/null 2>&1 || need="$need mmdebstrap"
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || need="$need docker-compose"
if [ -n "$need" ]; then
    say "installing$need"
    apt-get update -qq || die "apt-get update failed"
    # shellcheck disable=SC2086
    apt-get install -y -qq $need >/dev/null || die "apt-get install$need failed"
fi

SOURCES=""
for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$f" ]; then SOURCES="$f"; break; fi
done
[ -n "$SOURCES" ] || die "no apt sources file to build from"

# rootfs IMAGE PACKAGES: a Debian bookworm root filesystem with PACKAGES, imported
rootfs() {
    hash="$(printf '%s\n%s\n' "$2" "$(grep -vE '^[[:space:]]*#' "$SOURCES")" | sha256sum | cut -c1-16)"
    if [ "$(label "$1")" = "$hash" ]; then
        say "$1 up to date"
        return 0
    fi
    say "mmdebstrap bookworm ($2) | docker import $1"
    mmdebstrap --quiet --variant=apt --include="$2" \
        --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*' \
        bookworm - "$SOURCES" \
        | docker import --change "LABEL $LABEL=$hash" --change 'ENV LANG=C.UTF-8' - "$1" >/dev/null \
        || die "could not make $1"
}

rootfs "$BASE" "python3,python3-venv,passwd,ca-certificates"
rootfs "$PROM" "prometheus"

# The wheels of inginious-tx and its dependencies, made in the base image so
# that they fit its Python; pip uses this machine's trust store and index settings.
CTX="$(mktemp -d)"
trap 'rm -rf "$CTX"' EXIT
tar --exclude=.git --exclude=.tox --exclude=.wheels --exclude=docs/_build --exclude=__pycache__ \
    --exclude='*.egg-info' --exclude=.mypy_cache --exclude=.hypothesis -cf - . | tar -C "$CTX" -xf -
# what the image is made from (the wheels follow from it): a change elsewhere
# (tests, docs) does not rebuild it
hash="$(cd "$CTX" && find inginious_tx plugins examples setup.cfg setup.py pyproject.toml README.md \
    constraints.txt contrib/docker -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
if [ "$(label "$IMAGE")" = "$hash" ]; then
    say "$IMAGE up to date"
else
    mkdir -p "$CTX/.wheels"
    CA=/etc/ssl/certs/ca-certificates.crt
    set --
    [ -s "$CA" ] && set -- -v "$CA:/etc/ssl/certs/ca-certificates.crt:ro" -e PIP_CERT=/etc/ssl/certs/ca-certificates.crt
    for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL HTTP_PROXY HTTPS_PROXY http_proxy https_proxy NO_PROXY no_proxy; do
        eval "value=\${$var:-}"
        [ -n "$value" ] && set -- "$@" -e "$var=$value"
    done
    say "pip wheel (in $BASE)"
    docker run --rm --network host "$@" -v "$CTX:/src" -w /src "$BASE" sh -c '
        set -e
        python3 -m venv /tmp/venv
        /tmp/venv/bin/pip install -q --disable-pip-version-check "setuptools>=64" wheel
        /tmp/venv/bin/pip wheel -q --disable-pip-version-check -w /src/.wheels -c constraints.txt ".[docker,metrics,ssh]"
        chown -R "$(stat -c %u:%g /src)" /src/.wheels
    ' || die "pip wheel failed"
    say "docker build $IMAGE"
    docker build -q -f "$CTX/contrib/docker/Dockerfile" --build-arg "BASE=$BASE" \
        --build-arg EXTRAS=docker,metrics --label "$LABEL=$hash" -t "$IMAGE" "$CTX" >/dev/null \
        || die "docker build failed"
fi
# smoke test: the image runs its commands as its own unprivileged user
out="$(docker run --rm --entrypoint sh "$IMAGE" -c 'id -un; twistd --help' 2>&1)" || die "cannot run $IMAGE: $out"
[ "$(echo "$out" | head -n 1)" = inginious ] || die "$IMAGE does not run as the user inginious: $out"
echo "$out" | grep -q inginious-backend || die "twistd of $IMAGE does not find inginious-backend: $out"
say "ready: $IMAGE, $PROM"
