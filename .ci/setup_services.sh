#!/usr/bin/env bash
# Services for the benchmark-harness tests, offline after installation:
#   - Chromium (tests/test_report_browser.py renders report.html headless)
#   - a throwaway PostgreSQL cluster on 127.0.0.1 (tests/test_postgres.py: workers share one queue)
#
# Use either way:
#   . .ci/setup_services.sh          # sourced (as .ci/run does): exports the variables below and
#                                    # stops the cluster when the calling shell exits
#   eval "$(.ci/setup_services.sh)"  # executed: prints `export ...` lines; the cluster keeps
#                                    # running (stop: pg_ctl -D "$BPFREE_PG_DIR/db" stop)
# Exports:
#   BPFREE_CHROMIUM      path of the chromium binary
#   BPFREE_TEST_PG_URL   postgresql+psycopg2://postgres@127.0.0.1:PORT/postgres (trust auth, loopback)
#   BPFREE_PG_DIR        the cluster's directory (data in db/, log in log)
# Never fatal: a service that cannot be set up is reported and its tests skip with the reason.

_bpfree_log() { echo "setup_services: $*" >&2; }

_bpfree_apt_install() {  # apt-get install the given Debian packages, as root or with sudo -n
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      _bpfree_log "not root and no passwordless sudo: cannot install $*"; return 1; fi
  fi
  command -v apt-get >/dev/null 2>&1 || { _bpfree_log "no apt-get: cannot install $*"; return 1; }
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q >/dev/null 2>&1 || _bpfree_log "apt-get update failed (offline?)"
  $sudo apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
    || { _bpfree_log "apt-get install $* failed"; return 1; }
}

_bpfree_pg_bin() {  # path of a PostgreSQL server binary (initdb, pg_ctl)
  command -v "$1" 2>/dev/null && return 0
  ls -1 /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1
}

_bpfree_setup_services() {
  local missing="" chromium initdb pg_ctl dir port asuser=""
  chromium="$(command -v chromium || command -v chromium-browser || true)"
  [ -n "$chromium" ] || missing="chromium"
  [ -n "$(_bpfree_pg_bin initdb)" ] || missing="$missing postgresql"
  if [ -n "$missing" ]; then
    _bpfree_log "installing:$([ -n "$missing" ] && echo " $missing")"
    # shellcheck disable=SC2086
    _bpfree_apt_install $missing || true
    chromium="$(command -v chromium || command -v chromium-browser || true)"
  fi
  if [ -n "$chromium" ]; then
    export BPFREE_CHROMIUM="$chromium"
    _bpfree_log "chromium: $chromium"
  else
    _bpfree_log "chromium unavailable: the browser test will skip"
  fi

  initdb="$(_bpfree_pg_bin initdb)"; pg_ctl="$(_bpfree_pg_bin pg_ctl)"
  if [ -z "$initdb" ] || [ -z "$pg_ctl" ]; then
    _bpfree_log "PostgreSQL unavailable: the PostgreSQL test will skip"; return 0
  fi
  if [ "$(id -u)" = 0 ]; then  # initdb refuses to run as root: use the postgres user
    if id postgres >/dev/null 2>&1 && command -v runuser >/dev/null 2>&1; then
      asuser="runuser -u postgres --"
    else
      _bpfree_log "root without a postgres user/runuser: PostgreSQL test will start its own or skip"
      return 0
    fi
  fi
  dir="$(mktemp -d /tmp/bpfree-ci-pg.XXXXXX)" || return 0
  [ -z "$asuser" ] || chown postgres "$dir"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 55432)"
  if ! $asuser "$initdb" -D "$dir/db" -A trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log" 2>&1; then
    _bpfree_log "initdb failed (see $dir/initdb.log)"; return 0
  fi
  if ! $asuser "$pg_ctl" -D "$dir/db" -l "$dir/log" -w -t 60 \
        -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=100" start >/dev/null 2>&1; then
    _bpfree_log "PostgreSQL did not start (see $dir/log)"; return 0
  fi
  export BPFREE_PG_DIR="$dir"
  export BPFREE_TEST_PG_URL="postgresql+psycopg2://postgres@127.0.0.1:$port/postgres"
  _bpfree_log "PostgreSQL on 127.0.0.1:$port (data in $dir)"
  _BPFREE_PG_STOP="$asuser $pg_ctl -D $dir/db -m immediate -w stop"
}

bpfree_stop_services() {
  if [ -n "${_BPFREE_PG_STOP:-}" ]; then
    $_BPFREE_PG_STOP >/dev/null 2>&1 || true
    rm -rf "${BPFREE_PG_DIR:?}" 2>/dev/null || true
    _BPFREE_PG_STOP=""
  fi
}

_bpfree_setup_services || true
if [ "${BASH_SOURCE[0]}" != "$0" ]; then  # sourced: clean up when the caller exits
  if [ -z "$(trap -p EXIT)" ]; then trap bpfree_stop_services EXIT; fi
else  # executed: print the variables for eval
  for v in BPFREE_CHROMIUM BPFREE_TEST_PG_URL BPFREE_PG_DIR; do
    if [ -n "${!v:-}" ]; then printf 'export %s=%q\n' "$v" "${!v}"; fi
  done
fi
