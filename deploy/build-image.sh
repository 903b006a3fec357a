#!/usr/bin/env bash
# Builds the OCI image of deploy/Containerfile with podman, on a machine that can
# reach Debian's mirrors and PyPI but no container registry (docs/deploy.md,
# "A container image"): the base image is made locally with debootstrap (a minimal
# Debian bookworm with Python 3.11) and imported, then passed to the Containerfile
# as BASE_IMAGE. Then smoke-runs the image (`--help`) and, unless SMOKE=0, starts a
# three-node cluster from it (host network, cluster file and data mounted), writes
# and reads through redis-cli, kills one container and reads again.
#
# Needs root, podman, runc, debootstrap and redis-cli (apt-get install podman
# buildah runc debootstrap redis-tools). Not part of the test suite: it takes minutes.
#   deploy/build-image.sh [TAG]        (default replicaio:0.1.0)
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-replicaio:0.1.0}
BASE=${BASE:-localhost/debian-python:bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}   # no overlay mounts needed
# On the project's CI machine (a VM kernel, cgroups v1 and v2 mounted side by side)
# crun refuses to start ("cgroups in hybrid mode not supported") and both runtimes
# fail raising the default rlimits ("setrlimit RLIMIT_NOFILE: Operation not
# permitted"): runc with explicit, lower limits runs. Elsewhere PODMAN_RUNTIME=crun
# and LIMITS= give podman's defaults back.
read -r -a RUNTIME <<<"--runtime ${PODMAN_RUNTIME:-runc}"
read -r -a LIMITS <<<"${LIMITS---ulimit nofile=4096:4096 --ulimit nproc=4096:4096}"
podman() { command podman "${RUNTIME[@]}" "$@"; }

if ! podman image exists "$BASE"; then
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    echo "build-image: debootstrap bookworm into $rootfs" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3 \
        bookworm "$rootfs" "$MIRROR" >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import - "$BASE"
fi

# Host network for RUN, and the host's CA bundle mounted for the build only (not
# kept in the image): pip reaches PyPI the way the host does, through whatever
# TLS-inspecting egress proxy the host trusts.
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
podman build "${LIMITS[@]}" --network host -v "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro" --build-arg "BASE_IMAGE=$BASE" -f deploy/Containerfile -t "$TAG" .
podman image ls "$TAG"
podman run "${LIMITS[@]}" --rm "$TAG" --help | head -5

[ "${SMOKE:-1}" = 0 ] && exit 0
work=$(mktemp -d)
chmod 755 "$work"   # the image runs as user 10001
names=()
cleanup() {
    for name in "${names[@]}"; do podman rm -f "$name" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT
base_port=${BASE_PORT:-27100}
mkdir -p "$work/cluster"
python3 -c 'import secrets; print(secrets.token_hex(32))' > "$work/cluster/cluster.key"
{
    printf '[protocol]\nname = "raft"\n\n[auth]\nkind = "hmac"\nsecret_file = "cluster.key"\n'
    printf '\n[host]\nclient_service = "resp"\n'
    for id in 0 1 2; do
        printf '\n[[nodes]]\nid = %d\npeer = "127.0.0.1:%d"\nclient = "127.0.0.1:%d"\n' \
            "$id" $((base_port + id)) $((base_port + 10 + id))
        printf 'metrics = "127.0.0.1:%d"\ndata_dir = "node-%d"\n' $((base_port + 20 + id)) "$id"
    done
} > "$work/cluster/cluster.toml"
chown -R 10001 "$work/cluster"
for id in 0 1 2; do
    name=replicaio-smoke-$id
    names+=("$name")
    podman run "${LIMITS[@]}" -d --name "$name" --network host -v "$work/cluster:$work/cluster" \
        "$TAG" kv node --config "$work/cluster/cluster.toml" --id "$id" >/dev/null
done
port() { echo $((base_port + 10 + $1)); }
for _ in $(seq 100); do
    redis-cli -p "$(port 0)" set smoke ok 2>/dev/null | grep -q OK && break
    sleep 0.3
done
echo "build-image: node 0 SET smoke -> $(redis-cli -p "$(port 0)" set smoke ok)"
echo "build-image: node 1 GET smoke -> $(redis-cli -p "$(port 1)" get smoke)"
podman ps --format '{{.Names}} {{.Image}} {{.Status}}'
# Kill the leader's container (its /healthz names the leader).
leader=$(python3 -c 'import json, sys, urllib.request
print(json.load(urllib.request.urlopen(sys.argv[1], timeout=5))["leader"])' \
    "http://127.0.0.1:$((base_port + 20))/healthz")
podman kill "replicaio-smoke-$leader" >/dev/null
a=$(( (leader + 1) % 3 )) b=$(( (leader + 2) % 3 ))
for _ in $(seq 100); do
    redis-cli -p "$(port "$a")" set after-kill yes 2>/dev/null | grep -q OK && break
    sleep 0.3
done
echo "build-image: leader $leader killed; node $a SET after-kill -> $(redis-cli -p "$(port "$a")" set after-kill yes)"
echo "build-image: node $b GET smoke -> $(redis-cli -p "$(port "$b")" get smoke)"
echo "build-image: node $b GET after-kill -> $(redis-cli -p "$(port "$b")" get after-kill)"
