#!/usr/bin/env bash
# Select-only pgbench through pgtenant and directly against the same PostgreSQL, in one run.
#
# Usage: benches/pgbench_select_only.sh [seconds per run] [rounds] [clients...]
#   defaults: 10 seconds, 3 rounds, clients 8 and 32.
# Starts a throwaway cluster and proxy with the release binary (`pgtenant dev` in a temp folder), loads
# pgbench's tables (scale 10) into the demo tenant's schema through pgtenant, then alternates the two
# targets within each round and prints each run's tps and latency, the per-round ratio and the median ratio.
# Direct runs use the same tables (superuser with search_path set to the tenant schema).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${1:-10}
ROUNDS=${2:-3}
shift $(( $# >= 2 ? 2 : $# )) || true
CLIENTS=("$@")
[ ${#CLIENTS[@]} -eq 0 ] && CLIENTS=(8 32)

cargo build --release -q
BIN=$PWD/target/release/pgtenant
WORK=$(mktemp -d /tmp/pgtenant-bench.XXXXXX)
chmod 755 "$WORK"
PROXY_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# Session pooling: every client holds a server connection, so the pool is as large as the largest run.
MAX_CLIENTS=$(printf '%s\n' "${CLIENTS[@]}" | sort -n | tail -1)
PGTENANT_LOG=warn "$BIN" dev --dir "$WORK/dev" --port "$PROXY_PORT" --pool-size "$MAX_CLIENTS" >"$WORK/dev.out" 2>"$WORK/dev.err" &
DEV_PID=$!
cleanup() {
  kill -INT "$DEV_PID" 2>/dev/null || true
  wait "$DEV_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

for _ in $(seq 1 120); do
  grep -q '^postgres://' "$WORK/dev.out" 2>/dev/null && break
  sleep 0.5
done
grep -q '^postgres://' "$WORK/dev.out" || { cat "$WORK/dev.err"; echo "pgtenant dev did not start"; exit 1; }

PROXY_URL=$(grep '^postgres://' "$WORK/dev.out" | head -1)
read -r PG_PORT ADMIN_PASSWORD DB < <(python3 - "$WORK/dev/dev.toml" <<'PY'
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))["upstream"]
print(c["port"], c["admin_password"], c["database"])
PY
)
export PGPASSWORD="$ADMIN_PASSWORD"
SCHEMA=$(psql -X -At -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$DB" -c "SELECT schema_name FROM pgtenant.organizations ORDER BY created_at LIMIT 1")
unset PGPASSWORD
DIRECT_CONNINFO="host=127.0.0.1 port=$PG_PORT user=postgres password=$ADMIN_PASSWORD dbname=$DB options=-csearch_path=$SCHEMA"

echo "loading pgbench tables (scale 10) into $SCHEMA through pgtenant..."
pgbench -i -s 10 -q "$PROXY_URL" >"$WORK/init.log" 2>&1 || { cat "$WORK/init.log"; exit 1; }

run() { # target conninfo clients -> "tps latency_ms"
  local out
  out=$(pgbench -n -S -M simple -c "$3" -j 2 -T "$SECONDS_PER_RUN" "$2" 2>&1) || { echo "$out" >&2; return 1; }
  local tps lat
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | tail -1)
  lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
  echo "$tps $lat"
}

echo "PostgreSQL $(psql --version | awk '{print $3}'), $(nproc) cores, ${SECONDS_PER_RUN}s per run, $ROUNDS rounds"
for c in "${CLIENTS[@]}"; do
  ratios=()
  for r in $(seq 1 "$ROUNDS"); do
    # Alternate which target goes first, so neither always runs on a warmer machine.
    if [ $((r % 2)) -eq 1 ]; then
      read -r dtps dlat < <(run direct "$DIRECT_CONNINFO" "$c")
      read -r ptps plat < <(run pgtenant "$PROXY_URL" "$c")
    else
      read -r ptps plat < <(run pgtenant "$PROXY_URL" "$c")
      read -r dtps dlat < <(run direct "$DIRECT_CONNINFO" "$c")
    fi
    ratio=$(python3 -c "print(f'{$ptps/$dtps:.3f}')")
    ratios+=("$ratio")
    printf 'select-only simple  clients=%-3s round=%s  direct %9.0f tps %6.3f ms | pgtenant %9.0f tps %6.3f ms | ratio %s\n' \
      "$c" "$r" "$dtps" "$dlat" "$ptps" "$plat" "$ratio"
  done
  median=$(python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "${ratios[@]}")
  echo "select-only simple  clients=$c  median ratio pgtenant/direct = $median"
done
