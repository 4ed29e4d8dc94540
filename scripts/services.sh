#!/usr/bin/env bash
# Makes sure RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) are up: starts them if
# they are installed but stopped, installs them from the OS packages if missing (as root on
# Debian/Ubuntu), and otherwise says exactly what to do. Also makes sure of what the build
# and the scripts need besides Rust: a C compiler and make (jemalloc, ring and libFuzzer are
# compiled from source) and curl (scripts/run-local.sh). Idempotent.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    port_open "$2" && return 0
    sleep 0.1
  done
  echo "error: $1 did not come up on 127.0.0.1:$2 within $3 s" >&2
  return 1
}

install_pkg() { # package
  if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "error: $1 is not installed. Install it (Debian/Ubuntu: sudo apt-get install $1) or run it with docker: see README." >&2
    exit 1
  fi
  echo "installing $1 from the OS packages…"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null
  }
}

# command:package
for need in cc:gcc make:make curl:curl; do
  command -v "${need%%:*}" >/dev/null 2>&1 || install_pkg "${need#*:}"
done

if ! port_open 6379; then
  command -v redis-server >/dev/null 2>&1 || install_pkg redis-server
  mkdir -p /tmp/agentfleet-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/agentfleet-redis --logfile /tmp/agentfleet-redis/redis.log
  wait_port Redis 6379 20
fi

if ! port_open 5672; then
  command -v rabbitmq-server >/dev/null 2>&1 || install_pkg rabbitmq-server
  # A package install may already have started it as a service.
  port_open 5672 || rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port RabbitMQ 5672 90
fi

# The port opens before RabbitMQ accepts logins; wait until it does.
if command -v rabbitmqctl >/dev/null 2>&1; then
  for _ in $(seq 1 60); do
    rabbitmqctl -q await_startup >/dev/null 2>&1 && break
    sleep 1
  done
fi
echo "services: RabbitMQ 127.0.0.1:5672 and Redis 127.0.0.1:6379 are up"
