#!/usr/bin/env bash
# Process vs Docker sandboxes on a GPU host that has no registry and no NVIDIA Container Toolkit:
# starts a Docker engine from a minimal bundle (dockerd, containerd, runc; ~35 MiB as tar.xz),
# builds the runtime image from the host's own files, then runs bench/docker_gpu.py.
#
#   scripts/device-docker-gpu.sh BUNDLE.tar.xz OUT_DIR [bench/docker_gpu.py arguments...]
#
# Make the bundle on a Debian machine with scripts/docker-bundle.sh. The engine's state lives
# under /tmp (data root /tmp/dkroot, socket /tmp/docker.sock); it is stopped at the end.
set -euo pipefail
bundle=${1:?usage: device-docker-gpu.sh BUNDLE.tar.xz OUT_DIR [bench args...]}
out=${2:?usage: device-docker-gpu.sh BUNDLE.tar.xz OUT_DIR [bench args...]}
shift 2
mkdir -p /tmp/dk "$out"
tar -C /tmp/dk -xJf "$bundle"
export PATH=/tmp/dk/bin:$PATH DOCKER_HOST=unix:///tmp/docker.sock
started=""
if ! python3 -c "import docker; docker.from_env().ping()" 2>/dev/null; then
  LD_LIBRARY_PATH=/tmp/dk/lib setsid dockerd --iptables=false --bridge=none --data-root /tmp/dkroot \
    -H "$DOCKER_HOST" >"$out/dockerd.log" 2>&1 &
  started=$!
  trap '[ -n "$started" ] && kill "$started" 2>/dev/null || true' EXIT
  for _ in $(seq 120); do
    python3 -c "import docker; docker.from_env().ping()" 2>/dev/null && break
    sleep 0.5
  done
fi
echo "[device-docker-gpu] engine: $(python3 -c 'import docker; print(docker.from_env().version()["Version"])')"
python3 -m slfaas.cli.main node build-image --from-host 2>&1 | tee "$out/build-image.log"
python3 bench/docker_gpu.py --out "$out" "$@"
