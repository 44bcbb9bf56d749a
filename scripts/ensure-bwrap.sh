#!/usr/bin/env bash
# Makes the process sandbox's isolation possible here: bubblewrap's `bwrap` found by the server
# ($SLFAAS_BWRAP, else PATH, else ~/.cache/slfaas/bubblewrap/usr/bin/bwrap).
#   - with apt-get (as root): installs the `bubblewrap` package;
#   - without a registry: SLFAAS_BWRAP_DEB=/path/bubblewrap_*.deb unpacks that package
#     (`apt-get download bubblewrap` on a machine that has one) with dpkg -x, no install.
# Never fails the build: without bwrap, `slfaas server` refuses the process sandbox, saying
# why, unless --insecure-sandbox (or --sandbox docker) is given.
set -euo pipefail
UNPACKED="${HOME}/.cache/slfaas/bubblewrap"
log() { echo "[bwrap-setup] $*" >&2; }

if [ -n "${SLFAAS_BWRAP:-}" ] && [ -x "${SLFAAS_BWRAP}" ]; then exit 0; fi
if command -v bwrap >/dev/null 2>&1 || [ -x "${UNPACKED}/usr/bin/bwrap" ]; then exit 0; fi
if [ -n "${SLFAAS_BWRAP_DEB:-}" ]; then
  mkdir -p "${UNPACKED}"
  dpkg -x "${SLFAAS_BWRAP_DEB}" "${UNPACKED}"
  log "unpacked ${SLFAAS_BWRAP_DEB}: ${UNPACKED}/usr/bin/bwrap"
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  log "installing bubblewrap (apt) ..."
  export DEBIAN_FRONTEND=noninteractive
  if apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null 2>&1 \
     || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null 2>&1; }; then
    exit 0
  fi
fi
log "bubblewrap is not installed and could not be installed here (needs root and apt-get, or" \
    "SLFAAS_BWRAP_DEB=bubblewrap.deb): process sandboxes need --insecure-sandbox"
exit 0
