#!/usr/bin/env python3
"""psycopg 3 checks of transaction pooling (run by tests/transaction.rs).

Usage: psycopg_txn.py MODE, with the libpq connection string in PGTENANT_CONNINFO. Modes:

  concurrent  12 threads, one connection each, every statement server-prepared (prepare_threshold=0), a few
              hundred parameterised queries of several texts each: every result is checked.
  stale       as above; then `ALTER TABLE ... ADD COLUMN` on the table of a prepared `SELECT *` (through the
              connection string in PGTXN_ADMIN_CONNINFO, the superuser straight to PostgreSQL), and every client
              goes on: how many "cached plan must not change result type" (0A000) errors each sees before the
              statement works again is reported; any other error, or a statement that never works again, fails.
  rollback    psycopg's default (not autocommit) with prepare_threshold=0: every few transactions one fails
              and the client rolls back. psycopg then clears its statement cache and sends DEALLOCATE ALL.
              Every other statement must keep working.
  pipeline    pipeline mode: a large batch, a batch with an error in the middle (the rest up to the Sync is
              skipped, the implicit transaction rolled back), later batches fine, results in order.

Prints "FAIL: ..." for each failed check, "SUMMARY <json>" with what it saw, and exits non-zero on failure.
Run it directly against PostgreSQL too: there it must pass, or the script (not pgtenant) is wrong.
"""

import json
import os
import sys
import threading
import traceback

try:
    import psycopg
except ImportError as e:
    print(f'psycopg 3 is not importable ({e}): pip install "psycopg[binary]"', file=sys.stderr)
    sys.exit(2)

CONNINFO = os.environ.get("PGTENANT_CONNINFO", "")
if not CONNINFO:
    print("no connection string: set PGTENANT_CONNINFO", file=sys.stderr)
    sys.exit(2)

CLIENTS = int(os.environ.get("PGTXN_CLIENTS", "12"))
FAILURES = []
LOCK = threading.Lock()


def fail(what):
    with LOCK:
        FAILURES.append(what)
    print(f"FAIL: {what}", flush=True)


def connect(autocommit=True):
    return psycopg.connect(CONNINFO, autocommit=autocommit, prepare_threshold=0, connect_timeout=10)


def sqlstate(exc):
    return getattr(exc, "sqlstate", None) or type(exc).__name__


def run_threads(target, n=CLIENTS):
    threads = []
    for i in range(n):
        t = threading.Thread(target=guarded(target), args=(i,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(120)
        if t.is_alive():
            fail("a client thread did not finish within 120 s")


def guarded(fn):
    def run(*args):
        try:
            fn(*args)
        except Exception:
            fail(f"{fn.__name__}{args}: unexpected exception\n{traceback.format_exc()}")

    return run


def prepared_names(conn):
    # psycopg's own record of what it prepared (private, but the point of the test is that it did).
    return len(conn._prepared._names)


# ------------------------------------------------------------------------------------------------------------


def setup_items(conn):
    conn.execute("DROP TABLE IF EXISTS txn_items, txn_log")
    conn.execute("CREATE TABLE txn_items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL)")
    conn.execute(
        "INSERT INTO txn_items SELECT g, 'item-' || g, g * 3 FROM generate_series(1, 200) g", prepare=False
    )
    conn.execute("CREATE TABLE txn_log (worker int NOT NULL, n int NOT NULL)")


QUERIES = [
    ("SELECT %s::int + %s::int", lambda i, w: (i, w), lambda i, w: (i + w,)),
    ("SELECT name, qty FROM txn_items WHERE id = %s", lambda i, w: (i % 200 + 1,),
     lambda i, w: (f"item-{i % 200 + 1}", (i % 200 + 1) * 3)),
    ("SELECT count(*) FROM txn_items WHERE id <= %s", lambda i, w: (i % 200 + 1,), lambda i, w: (i % 200 + 1,)),
    ("SELECT %s::text || '-' || %s::text", lambda i, w: (f"w{w}", str(i)), lambda i, w: (f"w{w}-{i}",)),
    ("SELECT array_agg(id ORDER BY id) FROM txn_items WHERE id BETWEEN %s AND %s",
     lambda i, w: (i % 190 + 1, i % 190 + 4), lambda i, w: (list(range(i % 190 + 1, i % 190 + 5)),)),
    ("INSERT INTO txn_log (worker, n) VALUES (%s, %s) RETURNING n", lambda i, w: (w, i), lambda i, w: (i,)),
]
ITERATIONS = int(os.environ.get("PGTXN_ITERATIONS", "300"))


def mode_concurrent():
    with connect() as conn:
        setup_items(conn)
    pids = {}
    inserts = {}

    def worker(w):
        seen = set()
        n_inserts = 0
        with connect() as conn:
            for i in range(ITERATIONS):
                sql, params, want = QUERIES[i % len(QUERIES)]
                try:
                    got = conn.execute(sql, params(i, w)).fetchone()
                except psycopg.Error as e:
                    fail(f"client {w} query {i} ({sql}): {sqlstate(e)} {e}")
                    continue
                if got != want(i, w):
                    fail(f"client {w} query {i} ({sql}): got {got!r}, want {want(i, w)!r}")
                if sql.startswith("INSERT"):
                    n_inserts += 1
                if i % 10 == 0:
                    seen.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            if prepared_names(conn) < len(QUERIES):
                fail(f"client {w}: psycopg prepared only {prepared_names(conn)} statements")
        with LOCK:
            pids[w] = len(seen)
            inserts[w] = n_inserts

    run_threads(worker)
    with connect() as conn:
        per_worker = dict(conn.execute("SELECT worker, count(*) FROM txn_log GROUP BY worker").fetchall())
    for w, n in inserts.items():
        if per_worker.get(w, 0) != n:
            fail(f"client {w}: {n} inserts returned, {per_worker.get(w, 0)} rows in txn_log")
    return {"clients": CLIENTS, "iterations": ITERATIONS, "distinct_backends_per_client": pids,
            "rows": sum(per_worker.values())}


# ------------------------------------------------------------------------------------------------------------


def mode_stale(autocommit):
    """After the ALTER, a client that sees 0A000 recovers as psycopg does by itself: in a transaction it rolls
    back (psycopg then forgets its statements and sends DEALLOCATE ALL); in autocommit, where psycopg would
    keep using the stale statement forever, it opens a new connection (a fresh prepare)."""
    admin_conninfo = os.environ.get("PGTXN_ADMIN_CONNINFO", "")
    if not admin_conninfo:
        fail("stale mode needs PGTXN_ADMIN_CONNINFO")
        return {}
    with connect() as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
        conn.execute("DROP TABLE IF EXISTS txn_wide")
        conn.execute("CREATE TABLE txn_wide (id int PRIMARY KEY, a text NOT NULL)")
        conn.execute("INSERT INTO txn_wide SELECT g, 'a' || g FROM generate_series(1, 50) g", prepare=False)
    before = threading.Barrier(CLIENTS + 1)
    altered = threading.Barrier(CLIENTS + 1)
    stats = {}
    select_star = "SELECT * FROM txn_wide WHERE id = %s"
    other = "SELECT a FROM txn_wide WHERE id = %s"

    def one(conn, k):
        row = conn.execute(select_star, (k,)).fetchone()
        second = conn.execute(other, (k,)).fetchone()
        if not autocommit:
            conn.commit()
        return row, second

    def worker(w):
        errors_before = 0
        errors_after = 0
        codes = {}
        messages = set()
        ok_after = 0
        conn = connect(autocommit)
        try:
            try:
                for i in range(20):
                    k = (w + i) % 50 + 1
                    row, second = one(conn, k)
                    if row != (k, f"a{k}") or second != (f"a{k}",):
                        fail(f"client {w} before ALTER: got {row!r}, {second!r}")
            finally:
                before.wait(60)
            altered.wait(60)
            for i in range(40):
                k = (w * 7 + i) % 50 + 1
                try:
                    row, second = one(conn, k)
                except psycopg.Error as e:
                    code = sqlstate(e)
                    codes[code] = codes.get(code, 0) + 1
                    messages.add(f"{code} {str(e).splitlines()[0]}")
                    if ok_after:
                        errors_after += 1
                    else:
                        errors_before += 1
                    if autocommit:
                        conn.close()
                        conn = connect(autocommit)
                    else:
                        conn.rollback()
                    continue
                ok_after += 1
                if row != (k, f"a{k}", 7) or second != (f"a{k}",):
                    fail(f"client {w} after ALTER: got {row!r}, {second!r}; want {(k, f'a{k}', 7)!r}")
        finally:
            conn.close()
        with LOCK:
            stats[w] = {"errors_before_success": errors_before, "errors_after_success": errors_after,
                        "codes": codes, "successes": ok_after, "messages": sorted(messages)}
        if set(codes) - {"0A000"}:
            fail(f"client {w}: errors other than 0A000 after the ALTER: {sorted(messages)}")
        if ok_after == 0:
            fail(f"client {w}: the statements never worked again after the ALTER ({sorted(messages)})")
        if errors_after:
            fail(f"client {w}: {errors_after} errors after the statements had worked again ({sorted(messages)})")

    threads = [threading.Thread(target=guarded(worker), args=(w,)) for w in range(CLIENTS)]
    for t in threads:
        t.start()
    before.wait(60)
    with psycopg.connect(admin_conninfo, autocommit=True) as admin:
        admin.execute(f'ALTER TABLE "{schema}".txn_wide ADD COLUMN b int NOT NULL DEFAULT 7')
    altered.wait(60)
    for t in threads:
        t.join(120)
    errors = [s["errors_before_success"] for s in stats.values()]
    return {"clients": CLIENTS, "autocommit": autocommit, "max_errors_per_client": max(errors, default=0),
            "total_errors": sum(errors), "per_client": stats}


# ------------------------------------------------------------------------------------------------------------


def mode_rollback():
    with connect() as conn:
        setup_items(conn)
    stats = {}

    def worker(w):
        deliberate = 0
        unexpected = {}
        with connect(autocommit=False) as conn:
            for i in range(60):
                try:
                    for j in range(3):
                        sql, params, want = QUERIES[(i + j) % len(QUERIES)]
                        got = conn.execute(sql, params(i, w)).fetchone()
                        if got != want(i, w):
                            fail(f"client {w} transaction {i} ({sql}): got {got!r}, want {want(i, w)!r}")
                    if i % 10 == 5:
                        conn.execute("SELECT 1 / %s::int", (0,))
                    conn.commit()
                except psycopg.errors.DivisionByZero:
                    deliberate += 1
                    conn.rollback()
                except psycopg.Error as e:
                    code = sqlstate(e)
                    if len(unexpected) == 0 or code not in unexpected:
                        print(f"client {w} transaction {i}: {code} {e}", flush=True)
                    unexpected[code] = unexpected.get(code, 0) + 1
                    conn.rollback()
        with LOCK:
            stats[w] = {"deliberate": deliberate, "unexpected": unexpected}
        if unexpected:
            fail(f"client {w}: unexpected errors {unexpected}")
        if deliberate != 6:
            fail(f"client {w}: {deliberate} deliberate errors, want 6")

    run_threads(worker)
    return {"clients": CLIENTS, "unexpected": {w: s["unexpected"] for w, s in stats.items() if s["unexpected"]}}


# ------------------------------------------------------------------------------------------------------------


def mode_pipeline():
    out = {}
    with connect() as conn:
        conn.execute("DROP TABLE IF EXISTS txn_pipe")
        conn.execute("CREATE TABLE txn_pipe (seq serial PRIMARY KEY, batch int NOT NULL, n int NOT NULL)")
        # 1. a large batch of several statement texts, results in the order sent
        with conn.pipeline() as p:
            curs = []
            for i in range(600):
                cur = conn.cursor()
                if i % 3 == 0:
                    cur.execute("SELECT %s::int * 2", (i,))
                elif i % 3 == 1:
                    cur.execute("SELECT %s::text || 'x', %s::int", (str(i), i))
                else:
                    cur.execute("INSERT INTO txn_pipe (batch, n) VALUES (1, %s) RETURNING n", (i,))
                curs.append(cur)
            p.sync()
            for i, cur in enumerate(curs):
                got = cur.fetchone()
                want = (i * 2,) if i % 3 == 0 else (f"{i}x", i) if i % 3 == 1 else (i,)
                if got != want:
                    fail(f"pipeline batch 1 statement {i}: got {got!r}, want {want!r}")
        order = [r[0] for r in conn.execute("SELECT n FROM txn_pipe WHERE batch = 1 ORDER BY seq")]
        if order != [i for i in range(600) if i % 3 == 2]:
            fail(f"pipeline batch 1: inserts ran out of order or went missing ({len(order)} rows)")
        out["batch1_rows"] = len(order)

        # 2. an error in the middle: earlier results arrive, later statements are skipped until the Sync
        before, after = [], []
        error = None
        try:
            with conn.pipeline() as p:
                for i in range(20):
                    cur = conn.cursor()
                    cur.execute("INSERT INTO txn_pipe (batch, n) VALUES (2, %s) RETURNING n", (i,))
                    before.append(cur)
                conn.cursor().execute("SELECT 1 / %s::int", (0,))
                for i in range(20):
                    cur = conn.cursor()
                    cur.execute("SELECT %s::int * 2", (i,))
                    after.append(cur)
                p.sync()
        except psycopg.Error as e:
            error = sqlstate(e)
        out["batch2_error"] = error
        if error != "22012":
            fail(f"pipeline batch 2: error {error!r}, want 22012 (division by zero)")
        def outcome(cur):
            try:
                return repr(cur.fetchone())
            except psycopg.Error as e:
                return type(e).__name__
        out["batch2_before"] = [outcome(cur) for cur in before]
        # psycopg raises as soon as it reads the error, which may be before it queued all 20 (PostgreSQL
        # flushes an error at once): how many got queued is timing. None of them may have run.
        out["batch2_after_with_results"] = [o for o in map(outcome, after) if o.startswith("(")]
        if out["batch2_after_with_results"]:
            fail(f"pipeline batch 2: statements after the error returned rows: {out['batch2_after_with_results']}")
        n2 = conn.execute("SELECT count(*) FROM txn_pipe WHERE batch = 2").fetchone()[0]
        out["batch2_rows"] = n2
        if n2 != 0:
            fail(f"pipeline batch 2: {n2} inserts survived, want 0 (one implicit transaction up to the Sync)")

        # 3. later batches are fine, with the same statements
        for batch in (3, 4):
            with conn.pipeline() as p:
                curs = []
                for i in range(100):
                    cur = conn.cursor()
                    if i % 2:
                        cur.execute("SELECT %s::int * 2", (i,))
                    else:
                        cur.execute("INSERT INTO txn_pipe (batch, n) VALUES (%s, %s) RETURNING n", (batch, i))
                    curs.append(cur)
                p.sync()
                for i, cur in enumerate(curs):
                    got = cur.fetchone()
                    want = (i * 2,) if i % 2 else (i,)
                    if got != want:
                        fail(f"pipeline batch {batch} statement {i}: got {got!r}, want {want!r}")
            rows = [r[0] for r in conn.execute("SELECT n FROM txn_pipe WHERE batch = %s ORDER BY seq", (batch,))]
            if rows != list(range(0, 100, 2)):
                fail(f"pipeline batch {batch}: rows {rows[:5]}... ({len(rows)})")
            out[f"batch{batch}_rows"] = len(rows)
        # 4. several Syncs inside one pipeline, an error in the second part only
        results = []
        try:
            with conn.pipeline() as p:
                a = conn.cursor()
                a.execute("INSERT INTO txn_pipe (batch, n) VALUES (5, %s) RETURNING n", (1,))
                p.sync()
                b = conn.cursor()
                b.execute("INSERT INTO txn_pipe (batch, n) VALUES (5, %s) RETURNING n", (2,))
                conn.cursor().execute("SELECT 1 / %s::int", (0,))
                p.sync()
                c = conn.cursor()
                c.execute("INSERT INTO txn_pipe (batch, n) VALUES (5, %s) RETURNING n", (3,))
                p.sync()
                results.append(c.fetchone())
        except psycopg.Error as e:
            results.append(sqlstate(e))
        rows = [r[0] for r in conn.execute("SELECT n FROM txn_pipe WHERE batch = 5 ORDER BY seq")]
        out["batch5_rows"] = rows
        out["batch5_results"] = [repr(r) for r in results]
        if 1 not in rows or 2 in rows:
            fail(f"pipeline with three Syncs: rows {rows}, want 1 kept and 2 rolled back")
        if conn.execute("SELECT 'still fine'").fetchone() != ("still fine",):
            fail("connection unusable after the pipelines")
    return out


MODES = {"concurrent": mode_concurrent, "stale": lambda: mode_stale(False),
         "stale-autocommit": lambda: mode_stale(True), "rollback": mode_rollback, "pipeline": mode_pipeline}


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode not in MODES:
        print(f"usage: {sys.argv[0]} {'|'.join(MODES)}", file=sys.stderr)
        sys.exit(2)
    try:
        summary = MODES[mode]()
    except Exception:
        fail(f"{mode}: unexpected exception\n{traceback.format_exc()}")
        summary = {}
    print("SUMMARY " + json.dumps(summary, sort_keys=True, default=str), flush=True)
    if FAILURES:
        print(f"{len(FAILURES)} failures", flush=True)
        sys.exit(1)
    print(f"all {mode} checks passed", flush=True)


if __name__ == "__main__":
    main()
