#!/usr/bin/env bash
# The monitoring part of the local stand-in stack, all on loopback: a Prometheus Pushgateway (runs and
# `medallion probe` push there), Prometheus (scrapes it, evaluates deploy/prometheus/rules.yml) and
# Alertmanager (deploy/alertmanager/alertmanager.yml; its receivers point at 127.0.0.1:$WEBHOOK_PORT,
# where a test listens). The Debian packages are installed with apt-get when missing. Intervals are short
# for tests (scrape/evaluation 1 s, group_wait 1 s); ports avoid the defaults (9090/9091/9093).
#
# usage: scripts/monitoring_stack.sh up|down|status|env|install   (scripts/prod_stack.sh up/down call it)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK_DIR="${MEDALLION_STACK_DIR:-/tmp/medallion-stack}"
MON_DIR="$STACK_DIR/monitoring"
HOST=127.0.0.1
PROM_PORT="${MEDALLION_PROMETHEUS_PORT:-9390}"
PUSH_PORT="${MEDALLION_PUSHGATEWAY_PORT:-9391}"
AM_PORT="${MEDALLION_ALERTMANAGER_PORT:-9393}"
WEBHOOK_PORT="${MEDALLION_ALERT_WEBHOOK_PORT:-9399}"
INTERVAL="${MEDALLION_MONITORING_INTERVAL:-1s}"
SERVICES=(pushgateway alertmanager prometheus)

log() { echo "monitoring_stack: $*" >&2; }
die() { echo "monitoring_stack: error: $*" >&2; exit 1; }
alive() { [[ -f "$MON_DIR/$1.pid" ]] && kill -0 "$(cat "$MON_DIR/$1.pid")" 2>/dev/null; }
port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

spawn() {  # spawn <name> <command...>: own session, log, pid file
  local name="$1"; shift
  setsid "$@" >"$MON_DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$MON_DIR/$name.pid"
}

wait_for() {  # wait_for <name> <url>
  for _ in $(seq 1 120); do
    curl -sf "$2" >/dev/null 2>&1 && return 0
    alive "$1" || die "$1 exited: $(tail -n 3 "$MON_DIR/$1.log" | tr '\n' ' ')"
    sleep 0.5
  done
  die "$1 did not come up (see $MON_DIR/$1.log)"
}

stop() {
  local name="$1"
  if alive "$name"; then
    local pid; pid="$(cat "$MON_DIR/$name.pid")"
    pkill -TERM -s "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    pkill -KILL -s "$pid" 2>/dev/null || true
  fi
  rm -f "$MON_DIR/$name.pid"
}

install_packages() {
  local missing=()
  command -v prometheus >/dev/null || missing+=(prometheus)
  command -v prometheus-pushgateway >/dev/null || missing+=(prometheus-pushgateway)
  command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing ${missing[*]}"
  local sudo=(); [[ "$(id -u)" -eq 0 ]] || sudo=(sudo -n)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >"$MON_DIR/apt.log" 2>&1 || {
    "${sudo[@]}" apt-get update >>"$MON_DIR/apt.log" 2>&1 &&
      "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >>"$MON_DIR/apt.log" 2>&1; } ||
    die "apt-get install ${missing[*]} failed (see $MON_DIR/apt.log)"
  # a package's own service (systemd/init.d) on the default ports is not ours: leave it alone
}

write_configs() {
  mkdir -p "$MON_DIR/prometheus-data" "$MON_DIR/alertmanager-data" "$MON_DIR/pushgateway-data"
  cp "$ROOT/deploy/prometheus/rules.yml" "$MON_DIR/rules.yml"
  cat >"$MON_DIR/prometheus.yml" <<YML
# written by scripts/monitoring_stack.sh (deploy/prometheus/prometheus.yml with test intervals and ports)
global:
  scrape_interval: $INTERVAL
  evaluation_interval: $INTERVAL
rule_files: [rules.yml]
alerting:
  alertmanagers:
    - static_configs: [{targets: ["$HOST:$AM_PORT"]}]
scrape_configs:
  - job_name: pushgateway
    honor_labels: true
    static_configs: [{targets: ["$HOST:$PUSH_PORT"]}]
YML
  sed -e "s#127.0.0.1:9399#$HOST:$WEBHOOK_PORT#g" \
      -e "s#^\(  group_wait:\).*#\1 1s#" -e "s#^\(  group_interval:\).*#\1 2s#" \
      "$ROOT/deploy/alertmanager/alertmanager.yml" >"$MON_DIR/alertmanager.yml"
}

up() {
  mkdir -p "$MON_DIR"
  install_packages
  for name in "${SERVICES[@]}"; do [[ -f "$MON_DIR/$name.pid" ]] && ! alive "$name" && rm -f "$MON_DIR/$name.pid"; done
  alive pushgateway || port_free "$PUSH_PORT" || die "port $PUSH_PORT is in use (set MEDALLION_PUSHGATEWAY_PORT)"
  alive alertmanager || port_free "$AM_PORT" || die "port $AM_PORT is in use (set MEDALLION_ALERTMANAGER_PORT)"
  alive prometheus || port_free "$PROM_PORT" || die "port $PROM_PORT is in use (set MEDALLION_PROMETHEUS_PORT)"
  write_configs
  alive pushgateway || spawn pushgateway prometheus-pushgateway --web.listen-address="$HOST:$PUSH_PORT" \
    --persistence.file="$MON_DIR/pushgateway-data/metrics" --persistence.interval=5s
  alive alertmanager || spawn alertmanager prometheus-alertmanager --config.file="$MON_DIR/alertmanager.yml" \
    --storage.path="$MON_DIR/alertmanager-data" --web.listen-address="$HOST:$AM_PORT" --cluster.listen-address=
  alive prometheus || spawn prometheus prometheus --config.file="$MON_DIR/prometheus.yml" \
    --storage.tsdb.path="$MON_DIR/prometheus-data" --web.listen-address="$HOST:$PROM_PORT" --web.enable-lifecycle
  wait_for pushgateway "http://$HOST:$PUSH_PORT/-/ready"
  wait_for alertmanager "http://$HOST:$AM_PORT/-/ready"
  wait_for prometheus "http://$HOST:$PROM_PORT/-/ready"
  write_env
  log "up: Pushgateway http://$HOST:$PUSH_PORT, Prometheus http://$HOST:$PROM_PORT, Alertmanager http://$HOST:$AM_PORT (receivers -> $HOST:$WEBHOOK_PORT)"
}

write_env() {
  cat >"$MON_DIR/env" <<EOF2
export MEDALLION_PUSHGATEWAY=http://$HOST:$PUSH_PORT
export MEDALLION_PROMETHEUS=http://$HOST:$PROM_PORT
export MEDALLION_ALERTMANAGER=http://$HOST:$AM_PORT
export MEDALLION_ALERT_WEBHOOK_PORT=$WEBHOOK_PORT
EOF2
}

down() {
  for name in prometheus alertmanager pushgateway; do stop "$name"; done
  rm -f "$MON_DIR/env"
  log "down"
}

status() {
  local rc=0
  for name in "${SERVICES[@]}"; do
    if alive "$name"; then echo "$name: running (pid $(cat "$MON_DIR/$name.pid"))"; else echo "$name: stopped"; rc=1; fi
  done
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) cat "$MON_DIR/env" ;;
  install) mkdir -p "$MON_DIR" && install_packages ;;
  *) die "usage: $0 up|down|status|env|install" ;;
esac
