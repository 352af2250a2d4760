#!/usr/bin/env bash
# A local stand-in of a production stack, all on loopback, for development and the prod tests:
#   - a Ray cluster of three nodes started with `ray start` (a head with no CPUs and two 1-CPU workers),
#   - PostgreSQL (Iceberg SQL catalog, Feast registry, MLflow backend store; one database each),
#   - Redis (Feast online store, its own database number),
#   - an S3-compatible server (moto in server mode) holding the Iceberg warehouse and MLflow artifacts,
#   - an MLflow tracking server (PostgreSQL backend, artifacts proxied to the object store).
#
# usage: scripts/prod_stack.sh up|down|status|env|stop-worker N|start-worker N
#
# `up` writes $STACK_DIR/env: the variables a prod run needs (source it). Ports avoid the defaults on
# purpose: Redis holds 6379 (Ray's default GCS port) and other Ray runtimes may run on this machine, so
# every Ray port is explicit and the cluster has its own temp dir. Nothing here runs `ray stop`: it
# would stop every Ray process of this user on the machine; each node is stopped by its own session.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${MEDALLION_BIN:-$ROOT/.venv/bin}"
STACK_DIR="${MEDALLION_STACK_DIR:-/tmp/medallion-stack}"
RAY_TMP="${MEDALLION_RAY_TMP:-/tmp/medallion-ray}"   # short: Ray's unix socket paths must stay < 108 bytes
HOST=127.0.0.1
RAY_PORT="${MEDALLION_RAY_PORT:-6390}"
S3_PORT="${MEDALLION_S3_PORT:-9310}"
MLFLOW_PORT="${MEDALLION_MLFLOW_PORT:-5055}"
PG_HOST="${PGHOST:-127.0.0.1}"
PG_PORT="${PGPORT:-5432}"
PG_USER="${PGUSER:-postgres}"
REDIS_PORT="${MEDALLION_REDIS_PORT:-6379}"
REDIS_DB="${MEDALLION_REDIS_DB:-7}"
BUCKET="${MEDALLION_BUCKET:-medallion}"
CATALOG_DB=medallion_catalog
MLFLOW_DB=medallion_mlflow
APP_DB=medallion_app   # stands in for the application database the users source reads
# The stand-in's object store accepts any key; real deployments export their own.
S3_ENV=(AWS_ACCESS_KEY_ID=stand-in-key AWS_SECRET_ACCESS_KEY=stand-in-secret AWS_REGION=us-east-1
        AWS_ENDPOINT_URL="http://$HOST:$S3_PORT")
export RAY_AUTH_MODE=disabled

log() { echo "prod_stack: $*" >&2; }
die() { echo "prod_stack: error: $*" >&2; exit 1; }

wait_for() {  # wait_for <what> <command...>: poll until the command succeeds (at most ~120 s)
  local what="$1"; shift
  for _ in $(seq 1 240); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    for name in "${SPAWNED[@]}"; do  # a process this call spawned that died will not come up
      if ! alive "$name"; then
        die "$name exited: $(tail -n 3 "$STACK_DIR/$name.log" | tr '\n' ' ')"
      fi
    done
    sleep 0.5
  done
  die "$what did not come up (see $STACK_DIR/*.log)"
}

SPAWNED=()   # what this invocation started: only these are watched while waiting

alive() { [[ -f "$STACK_DIR/$1.pid" ]] && kill -0 "$(cat "$STACK_DIR/$1.pid")" 2>/dev/null; }

spawn() {  # spawn <name> <command...>: own session (so it can be stopped alone, with all it starts), logs, pid
  local name="$1"; shift
  setsid "$@" >"$STACK_DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$STACK_DIR/$name.pid"
  SPAWNED+=("$name")
}

forget_dead() {
  # pid files of processes that are gone (a stack whose session was killed, not stopped with `down`)
  # describe nothing: drop them, so they are neither trusted as running nor reported as failed.
  for name in s3 mlflow ray-head ray-worker-1 ray-worker-2; do
    if [[ -f "$STACK_DIR/$name.pid" ]] && ! alive "$name"; then rm -f "$STACK_DIR/$name.pid"; fi
  done
}

port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

require_ports_free() {  # a port held by something this script did not start: say which, instead of a Ray log
  for port in "$@"; do port_free "$port" || die "port $port on $HOST is in use by another process (stop it, or set MEDALLION_*_PORT)"; done
}

stop_group() {  # stop a process started by spawn, with everything in its session
  # (the session, not the process group: Ray's worker processes put themselves in groups of their own)
  local name="$1" signal="${2:-TERM}"
  if alive "$name"; then
    local pid; pid="$(cat "$STACK_DIR/$name.pid")"
    pkill "-$signal" -s "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    pkill -KILL -s "$pid" 2>/dev/null || true
  fi
  rm -f "$STACK_DIR/$name.pid"
}

ensure_postgres_running() {
  if ! pg_isready -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1; then
    log "PostgreSQL is not running on $PG_HOST:$PG_PORT: starting it"
    service postgresql start >/dev/null 2>&1 || die "cannot start PostgreSQL (service postgresql start failed)"
    wait_for "PostgreSQL" pg_isready -h "$PG_HOST" -p "$PG_PORT"
  fi
}

ensure_postgres() {
  ensure_postgres_running
  for db in "$CATALOG_DB" "$MLFLOW_DB" "$APP_DB"; do
    if [[ -z "$(psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'")" ]]; then
      psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qc "CREATE DATABASE $db" >/dev/null
    fi
  done
}

fresh_state() {
  # moto keeps objects in memory, so a new object store starts empty: start the databases and the Redis
  # database that point into it empty too, or they would name files that no longer exist.
  # Dropping databases is for a stand-in on this machine only, never for a server elsewhere.
  case "$PG_HOST" in 127.0.0.1|localhost|/*) ;; *) die "refusing to reset databases on PGHOST=$PG_HOST (not loopback)";; esac
  case "$HOST" in 127.0.0.1|localhost) ;; *) die "refusing to flush Redis on $HOST (not loopback)";; esac
  stop_group mlflow
  for db in "$CATALOG_DB" "$MLFLOW_DB" "$APP_DB"; do
    psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  done
  redis-cli -h "$HOST" -p "$REDIS_PORT" -n "$REDIS_DB" flushdb >/dev/null
}

ensure_redis() {
  if ! redis-cli -h "$HOST" -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    log "Redis is not running on $HOST:$REDIS_PORT: starting it"
    redis-server --bind "$HOST" --port "$REDIS_PORT" --daemonize yes >/dev/null || die "cannot start redis-server"
    wait_for "Redis" redis-cli -h "$HOST" -p "$REDIS_PORT" ping
  fi
}

start_s3() {
  alive s3 && return 0
  spawn s3 "$BIN/moto_server" -H "$HOST" -p "$S3_PORT"
  wait_for "the S3-compatible server" curl -sf "http://$HOST:$S3_PORT/moto-api/"
  # moto keeps everything in memory: the bucket is new on every start
  env "${S3_ENV[@]}" "$BIN/python" -c "import boto3; boto3.client('s3').create_bucket(Bucket='$BUCKET')"
}

start_mlflow() {
  alive mlflow && return 0
  spawn mlflow env "${S3_ENV[@]}" MLFLOW_S3_ENDPOINT_URL="http://$HOST:$S3_PORT" \
    "$BIN/mlflow" server --host "$HOST" --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "postgresql+psycopg2://$PG_USER@$PG_HOST:$PG_PORT/$MLFLOW_DB" \
    --artifacts-destination "s3://$BUCKET/mlflow"
}  # not waited for here: it migrates its database while the Ray nodes start

# Ray: the dashboard serves the state API (which nodes ran which tasks). Every port explicit and distinct per node. The nodes get no object-store credentials: the driver
# forwards its own (ray.forward_env), so the driver's environment is the only source of credentials.
ray_common=(--temp-dir="$RAY_TMP" --object-store-memory=400000000 --disable-usage-stats --block)

start_ray_head() {
  alive ray-head && return 0
  spawn ray-head "$BIN/ray" start --head --node-ip-address="$HOST" --port="$RAY_PORT" --num-cpus=0 \
    --include-dashboard=true --dashboard-host="$HOST" --dashboard-port=8390 --node-manager-port=6391 --object-manager-port=6392 \
    --dashboard-agent-listen-port=6393 --dashboard-agent-grpc-port=6394 --metrics-export-port=6395 \
    --runtime-env-agent-port=6396 --min-worker-port=16400 --max-worker-port=16499 "${ray_common[@]}"
  wait_ray_nodes 1
}

start_ray_worker() {  # start_ray_worker N (N = 1 or 2)
  local n="$1" base=$((6400 + 10 * $1))
  alive "ray-worker-$n" && return 0
  spawn "ray-worker-$n" "$BIN/ray" start --address="$HOST:$RAY_PORT" --node-ip-address="$HOST" --num-cpus=1 \
    --resources="{\"worker_node_$n\": 1}" --node-manager-port=$((base + 1)) --object-manager-port=$((base + 2)) \
    --dashboard-agent-listen-port=$((base + 3)) --dashboard-agent-grpc-port=$((base + 4)) \
    --metrics-export-port=$((base + 5)) --runtime-env-agent-port=$((base + 6)) \
    --min-worker-port=$((16500 + 100 * n)) --max-worker-port=$((16599 + 100 * n)) "${ray_common[@]}"
}

wait_ray_nodes() {  # wait until the cluster has $1 alive nodes (one driver that polls: drivers are not cheap)
  "$BIN/python" - "$HOST:$RAY_PORT" "$1" <<'PY' || die "the Ray cluster did not reach $1 nodes (see $STACK_DIR/ray-*.log)"
import sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
for _ in range(240):
    if sum(1 for n in ray.nodes() if n["Alive"]) >= int(sys.argv[2]):
        sys.exit(0)
    time.sleep(0.5)
sys.exit(1)
PY
}

write_env() {
  cat >"$STACK_DIR/env" <<EOF
# Written by scripts/prod_stack.sh up: what a prod run needs to reach the local stand-in stack.
export RAY_AUTH_MODE=disabled
export RAY_ADDRESS=$HOST:$RAY_PORT
export MEDALLION_RAY_DASHBOARD=http://$HOST:8390
export AWS_ACCESS_KEY_ID=stand-in-key
export AWS_SECRET_ACCESS_KEY=stand-in-secret
export AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://$HOST:$S3_PORT
export MEDALLION_CATALOG_URI=postgresql+psycopg2://$PG_USER@$PG_HOST:$PG_PORT/$CATALOG_DB
export MEDALLION_WAREHOUSE=s3://$BUCKET/warehouse
export MEDALLION_REDIS=$HOST:$REDIS_PORT,db=$REDIS_DB
export MEDALLION_LANDING=s3://$BUCKET/landing
export MEDALLION_USERS_DB_URI=postgresql+psycopg2://$PG_USER@$PG_HOST:$PG_PORT/$APP_DB
export PIPELINE_PII_KEY=stand-in-pii-key
export MLFLOW_TRACKING_URI=http://$HOST:$MLFLOW_PORT
export MEDALLION_STACK_DIR=$STACK_DIR
export MEDALLION_BUCKET=$BUCKET
EOF
  if [[ -f "$STACK_DIR/monitoring/env" ]]; then cat "$STACK_DIR/monitoring/env" >>"$STACK_DIR/env"; fi
}

up() {
  mkdir -p "$STACK_DIR" "$RAY_TMP"
  forget_dead
  alive s3 || require_ports_free "$S3_PORT"
  alive mlflow || require_ports_free "$MLFLOW_PORT"
  alive ray-head || require_ports_free "$RAY_PORT" 8390
  ensure_redis
  if ! alive s3; then ensure_postgres_running; fresh_state; fi
  ensure_postgres
  start_s3
  start_mlflow
  start_ray_head
  # one node at a time: nodes sharing a machine pick their socket names by probing, which races
  start_ray_worker 1
  wait_ray_nodes 2
  start_ray_worker 2
  wait_ray_nodes 3
  wait_for "the MLflow server" curl -sf "http://$HOST:$MLFLOW_PORT/health"
  # Pushgateway, Prometheus, Alertmanager (scripts/monitoring_stack.sh): not needed by a run, so a failure
  # to install or start them is reported and the rest of the stack stays up
  "$ROOT/scripts/monitoring_stack.sh" up || log "the monitoring stack did not come up (metrics pushes will only warn)"
  write_env
  log "up: Ray $HOST:$RAY_PORT (3 nodes), S3 http://$HOST:$S3_PORT, MLflow http://$HOST:$MLFLOW_PORT; source $STACK_DIR/env"
}

down() {
  # Only what `up` started: PostgreSQL and Redis are shared services and stay up (their databases stay too).
  for name in ray-worker-1 ray-worker-2 ray-head mlflow s3; do stop_group "$name"; done
  "$ROOT/scripts/monitoring_stack.sh" down || true
  rm -f "$STACK_DIR/env"
  log "down"
}

status() {
  local rc=0
  for name in s3 mlflow ray-head ray-worker-1 ray-worker-2; do
    if alive "$name"; then echo "$name: running (pid $(cat "$STACK_DIR/$name.pid"))"; else echo "$name: stopped"; rc=1; fi
  done
  pg_isready -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1 && echo "postgresql: running" || { echo "postgresql: stopped"; rc=1; }
  redis-cli -h "$HOST" -p "$REDIS_PORT" ping >/dev/null 2>&1 && echo "redis: running" || { echo "redis: stopped"; rc=1; }
  "$ROOT/scripts/monitoring_stack.sh" status || true   # reported; optional, so not part of the exit code
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) cat "$STACK_DIR/env" ;;
  # kill -9 a worker node's whole session: raylet, its workers and the objects it holds vanish at once
  stop-worker) [[ "${2:-}" =~ ^[12]$ ]] || die "stop-worker takes 1 or 2"; stop_group "ray-worker-$2" KILL ;;
  start-worker) [[ "${2:-}" =~ ^[12]$ ]] || die "start-worker takes 1 or 2"; start_ray_worker "$2"; wait_ray_nodes 3 ;;
  *) die "usage: $0 up|down|status|env|stop-worker N|start-worker N" ;;
esac
