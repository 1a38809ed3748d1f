#!/usr/bin/env bash
# Sourced by tests/run.sh: makes sure a Redis server answers for the tests and exports
# FLOWGATE_TEST_REDIS_URL.
#
# * FLOWGATE_TEST_REDIS_URL already set: used as it is (the tests fail if it does not answer;
#   they never skip).
# * Else a server on 127.0.0.1:6379 that answers PING: redis://127.0.0.1:6379.
# * Else a throwaway server: Debian's `redis-server` package (installed when missing), on a
#   free port, loopback only, no persistence, stopped and deleted when the calling script
#   exits.
#
# Tests write under a key prefix of their own, so they share one server.

redis_answers() { # host port
  local reply
  reply=$( (exec 3<>"/dev/tcp/$1/$2" && printf 'PING\r\n' >&3 && timeout 2 head -c 7 <&3) 2>/dev/null) || return 1
  [ "${reply%$'\r'}" = "+PONG" ]
}

start_throwaway_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "tests/redis.sh: installing Redis (Debian's redis-server package)" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q redis-server >&2
  fi
  REDIS_TMP=$(mktemp -d /tmp/flowgate-redis.XXXXXX)
  local port=56379
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --dir "$REDIS_TMP" --pidfile "$REDIS_TMP/redis.pid" --logfile "$REDIS_TMP/redis.log" \
    --daemonize yes >&2
  local tries=0
  until redis_answers 127.0.0.1 "$port"; do
    tries=$((tries + 1))
    if [ "$tries" -gt 50 ]; then
      cat "$REDIS_TMP/redis.log" >&2
      return 1
    fi
    sleep 0.1
  done
  # Chained with tests/postgres.sh's own exit trap, if it set one.
  local previous
  previous=$(trap -p EXIT | sed -e "s/^trap -- '//" -e "s/' EXIT\$//")
  trap "stop_throwaway_redis; ${previous:-:}" EXIT
  export FLOWGATE_TEST_REDIS_URL="redis://127.0.0.1:$port"
  echo "tests/redis.sh: a throwaway Redis on 127.0.0.1:$port" >&2
}

stop_throwaway_redis() {
  if [ -n "${REDIS_TMP:-}" ]; then
    if [ -f "$REDIS_TMP/redis.pid" ]; then
      kill "$(cat "$REDIS_TMP/redis.pid")" 2>/dev/null || true
    fi
    rm -rf "$REDIS_TMP"
  fi
}

if [ -z "${FLOWGATE_TEST_REDIS_URL:-}" ]; then
  if redis_answers 127.0.0.1 6379; then
    export FLOWGATE_TEST_REDIS_URL="redis://127.0.0.1:6379"
  else
    start_throwaway_redis
  fi
fi
