#!/usr/bin/env bash
# Captures what a real tool sends to PostgreSQL, for the CAPTURED.md files next to the ORM apps: starts a
# throwaway cluster with log_statement=all (as the `postgres` OS user when run as root), creates database
# `capture` with SCHEMA_SQL run in it (tables in `public`), runs COMMAND against it directly (no pgtenant;
# `{port}` in the command's words becomes the server's port, on 127.0.0.1, user `postgres`, no password),
# and prints every distinct statement text, normalized (whitespace collapsed), in order of first appearance,
# each marked Q (simple Query) or P (Parse, extended protocol); then the ones that name a catalog or a setting.
#
#   bash tests/clients/capture.sh SCHEMA_SQL COMMAND...   e.g.
#   bash tests/clients/capture.sh tests/clients/rails/schema.sql ruby tests/clients/rails/app.rb \
#        'postgresql://postgres@127.0.0.1:{port}/capture'
set -euo pipefail
schema=$1
shift
port=${CAPTURE_PORT:-5498}
bindir=${PGTENANT_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
dir=$(mktemp -d /tmp/orm-capture.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$dir"
  as_pg=(runuser -u postgres --)
fi
"${as_pg[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null
"${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c log_statement=all -c log_line_prefix='[%p] '" \
  start >/dev/null
trap '"${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null; rm -rf "$dir"' EXIT
psql() { "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
psql -d postgres -c "CREATE DATABASE capture"
psql -d capture -f "$schema"
start=$(wc -l <"$dir/server.log")
command=()
for word in "$@"; do command+=("${word//\{port\}/$port}"); done
"${command[@]}" >&2
sleep 0.5
tail -n +"$((start + 1))" "$dir/server.log" | python3 -c '
import re, sys
stmts, cur = [], None
for line in sys.stdin:
    m = re.match(r"\[\d+\] LOG:  (statement|execute [^:]*): (.*)", line.rstrip("\n"))
    if m:
        cur = ["Q" if m.group(1) == "statement" else "P", m.group(2)]
        stmts.append(cur)
    elif line.startswith("\t") and cur is not None:
        cur[1] += " " + line.strip()
    else:
        cur = None
seen = []
for kind, text in stmts:
    item = (kind, re.sub(r"\s+", " ", text).strip())
    if item not in seen:
        seen.append(item)
for kind, text in seen:
    print(kind, text)
print("--- %d statements, %d distinct" % (len(stmts), len(seen)))
odd = [t for _, t in seen if re.search(r"public|pg_catalog|information_schema|\bpg_[a-z_]+\b|\bSET\s+(SESSION|LOCAL|search_path|ROLE)|set_config|search_path", t, re.I)]
print("--- naming public, a catalog or a setting:", *(odd or ["none"]), sep="\n")
'
