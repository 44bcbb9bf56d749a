#!/usr/bin/env bash
# Makes `--sandbox docker` usable here, with no registry: a Docker engine that answers, and the
# runtime image (`slfaas node build-image`: debootstrap + docker import, rootfs cached under
# ~/.cache/slfaas/images).
#
# SLFAAS_SETUP_DOCKER says how far it may go (default: "install" when CI=true, else "start"):
#   install  apt-get install docker.io/debootstrap if missing, start dockerd, build the image
#   start    start an installed dockerd (root only), build the image
#   off      only check
# Exit 0: ready. Exit 3: not possible here and not CI (the Docker tests then skip, saying so).
# In CI every failure is an error (exit 1).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
IMAGE=${SLFAAS_DOCKER_IMAGE:-slfaas/runtime:local}
if [ "${CI:-}" = "true" ]; then MODE=${SLFAAS_SETUP_DOCKER:-install}; else MODE=${SLFAAS_SETUP_DOCKER:-start}; fi
DOCKERD_LOG=${TMPDIR:-/tmp}/slfaas-dockerd.log

log() { echo "[docker-setup] $*" >&2; }
give_up() {
  log "$*"
  if [ "${CI:-}" = "true" ]; then exit 1; fi
  exit 3
}
engine_answers() { "$PYTHON" -c "import docker; docker.from_env(timeout=5).ping()" >/dev/null 2>&1; }
as_root() { [ "$(id -u)" = 0 ]; }

if ! engine_answers; then
  [ "$MODE" != off ] || give_up "no Docker engine answers (SLFAAS_SETUP_DOCKER=off)"
  if ! command -v dockerd >/dev/null 2>&1; then
    [ "$MODE" = install ] || give_up "no Docker engine answers and dockerd is not installed (SLFAAS_SETUP_DOCKER=install, as root, installs docker.io)"
    as_root || give_up "installing docker.io needs root"
    log "installing docker.io and debootstrap (apt) ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
  fi
  as_root || give_up "no Docker engine answers and starting dockerd needs root"
  log "starting dockerd --iptables=false --bridge=none (log: $DOCKERD_LOG)"
  setsid nohup dockerd --iptables=false --bridge=none >"$DOCKERD_LOG" 2>&1 </dev/null &
  for _ in $(seq 1 120); do engine_answers && break; sleep 0.5; done
  engine_answers || { tail -20 "$DOCKERD_LOG" >&2 || true; give_up "dockerd did not come up"; }
fi
log "Docker engine answers"

if ! "$PYTHON" -m slfaas.cli.main node build-image --tag "$IMAGE" --check >/dev/null 2>&1; then
  [ "$MODE" != off ] || give_up "runtime image $IMAGE is missing or stale (SLFAAS_SETUP_DOCKER=off)"
  if ! command -v debootstrap >/dev/null 2>&1 && [ "$MODE" = install ] && as_root; then
    log "installing debootstrap (apt) ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  "$PYTHON" -m slfaas.cli.main node build-image --tag "$IMAGE" >&2 || give_up "building $IMAGE failed"
fi
log "runtime image $IMAGE is ready"
