#!/usr/bin/env bash
# Makes the PostgreSQL test suites possible here: PostgreSQL's server binaries (initdb, pg_ctl),
# from Debian's `postgresql` package. The tests start their own private server from them in a
# temporary directory (slfaas/testing/postgres.py); no system service is used.
#
# SLFAAS_SETUP_POSTGRES says how far it may go (default: "install" when CI=true, else "check"):
#   install  apt-get install postgresql (as root) if the binaries are missing
#   check    only check
# Exit 0: ready. Exit 3: not possible here and not CI (the PostgreSQL tests then skip, saying so).
# In CI every failure is an error (exit 1).
set -euo pipefail
if [ "${CI:-}" = "true" ]; then MODE=${SLFAAS_SETUP_POSTGRES:-install}; else MODE=${SLFAAS_SETUP_POSTGRES:-check}; fi

log() { echo "[postgres-setup] $*" >&2; }
give_up() {
  log "$*"
  if [ "${CI:-}" = "true" ]; then exit 1; fi
  exit 3
}
have_binaries() {
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1
}
runnable() {
  # as root the server runs as the package's `postgres` user (PostgreSQL refuses root)
  [ "$(id -u)" != 0 ] || { id postgres >/dev/null 2>&1 && command -v runuser >/dev/null 2>&1; }
}

if ! have_binaries || ! runnable; then
  [ "$MODE" = install ] || give_up "PostgreSQL is not installed (as root: SLFAAS_SETUP_POSTGRES=install $0, or apt-get install postgresql)"
  [ "$(id -u)" = 0 ] || give_up "installing postgresql needs root"
  command -v apt-get >/dev/null 2>&1 || give_up "installing postgresql needs apt-get"
  log "installing postgresql (apt) ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null || give_up "apt-get install postgresql failed"
  have_binaries && runnable || give_up "postgresql was installed but initdb or the postgres user is missing"
fi
log "PostgreSQL binaries are ready ($(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -1 || command -v initdb))"
