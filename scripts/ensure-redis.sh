#!/bin/sh
# Run before `npm start`: with no Redis configured the gateway starts its own redis-server, so make sure one exists.
[ -n "${REDIS_URL:-}${REDIS_CLUSTER_NODES:-}${REDIS_SENTINELS:-}" ] && exit 0
command -v redis-server >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "redis-server is missing: installing it from the OS packages (apt-get install -y redis-server)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null && exit 0
fi
echo "redis-server is missing: install it with: sudo apt-get install -y redis-server (or set REDIS_URL)" >&2
exit 1
