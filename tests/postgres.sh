#!/usr/bin/env bash
# Sourced by tests/run.sh: makes sure a PostgreSQL server answers for the tests and exports
# FLOWGATE_TEST_DATABASE_URL.
#
# * FLOWGATE_TEST_DATABASE_URL already set: used as it is (the tests fail if it does not
#   answer; they never skip).
# * Else a server on 127.0.0.1:5432 that answers: postgres://postgres@127.0.0.1:5432/test.
# * Else a throwaway server: Debian's `postgresql` package (installed when missing), a
#   cluster initialised in a temporary directory with trust auth on a free port, stopped and
#   deleted when the calling script exits.

pg_bin_dir() {
  local initdb
  initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
  [ -n "$initdb" ] && dirname "$initdb"
}

pg_answers() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

start_throwaway_postgres() {
  local bin
  bin=$(pg_bin_dir || true)
  if [ -z "$bin" ]; then
    echo "tests/postgres.sh: installing PostgreSQL (Debian's postgresql package)" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q postgresql >&2
    bin=$(pg_bin_dir)
  fi
  PG_TMP=$(mktemp -d /tmp/flowgate-pg.XXXXXX)
  local port=55432
  while pg_answers 127.0.0.1 "$port"; do port=$((port + 1)); done
  # initdb and postgres refuse to run as root: as the package's `postgres` user then.
  local as=()
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$PG_TMP"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bin/initdb" -D "$PG_TMP/data" -A trust -U postgres >"$PG_TMP/initdb.log" 2>&1 || {
    cat "$PG_TMP/initdb.log" >&2
    return 1
  }
  "${as[@]}" "$bin/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -w \
    -o "-p $port -k $PG_TMP -c listen_addresses=127.0.0.1 -c max_connections=300" start >&2
  "${as[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres test
  PG_STOP=("${as[@]}" "$bin/pg_ctl" -D "$PG_TMP/data" -m immediate stop)
  trap 'stop_throwaway_postgres' EXIT
  export FLOWGATE_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/test"
  echo "tests/postgres.sh: a throwaway PostgreSQL on 127.0.0.1:$port" >&2
}

stop_throwaway_postgres() {
  if [ -n "${PG_TMP:-}" ]; then
    "${PG_STOP[@]}" >/dev/null 2>&1 || true
    rm -rf "$PG_TMP"
  fi
}

if [ -z "${FLOWGATE_TEST_DATABASE_URL:-}" ]; then
  if pg_answers 127.0.0.1 5432; then
    export FLOWGATE_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/test"
  else
    start_throwaway_postgres
  fi
fi
