#!/usr/bin/env python3
"""Driver conformance script for psycopg 3 (run by tests/conformance.rs).

Usage: conformance_psycopg.py URL PREFIX

URL is a libpq connection string or URI; PREFIX (e.g. "cf_1a2b3c4d_") starts the name of every table the
script creates, so several copies can run at once against the same schema. The script runs a fixed list of
protocol features and prints one JSON object per step on stdout: what the driver observed (rows, command
tags, row counts, errors with SQLSTATE, notices, COPY bytes). PREFIX is replaced by "t_" in the output, and
nothing that legitimately differs between targets (backend pid, now(), role or schema names) is printed, so
the transcript of a run directly against PostgreSQL and through pgtenant must be identical.

A step that fails records the error and the script goes on: the exit status is 0 unless the script itself
is broken; the last line is {"step": "end"}.
"""

import hashlib
import json
import sys
import traceback
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

try:
    import psycopg
    from psycopg.types.json import Json, Jsonb
except ImportError as e:  # the Rust side checks this first; keep the message here too
    print(f'psycopg 3 is not importable ({e}): pip install "psycopg[binary]"', file=sys.stderr)
    sys.exit(2)

if len(sys.argv) != 3:
    print(__doc__, file=sys.stderr)
    sys.exit(2)
URL, PREFIX = sys.argv[1], sys.argv[2]

ITEMS = f"{PREFIX}items"
COPYT = f"{PREFIX}copy"
BIG = f"{PREFIX}big"
MANY = f"{PREFIX}many"

LARGE = 4 * 1024 * 1024


# ------------------------------------------------------------------------------------------------------------
# Normalised output
# ------------------------------------------------------------------------------------------------------------


def digest(b):
    return hashlib.sha256(b).hexdigest()


def norm(v):
    """A JSON-able, type-revealing form of a value the driver returned."""
    if v is None or isinstance(v, (bool, int)):
        return v
    if isinstance(v, float):
        return {"float": repr(v)}
    if isinstance(v, str):
        if len(v) > 300:
            return {"text_len": len(v), "sha256": digest(v.encode())}
        return v
    if isinstance(v, Decimal):
        return {"numeric": str(v)}
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        if len(b) > 300:
            return {"bytes_len": len(b), "sha256": digest(b)}
        return {"bytes": b.hex()}
    if isinstance(v, datetime):
        return {"timestamp": v.isoformat()}
    if isinstance(v, (date, time)):
        return {type(v).__name__: v.isoformat()}
    if isinstance(v, timedelta):
        return {"interval": str(v)}
    if isinstance(v, (list, tuple)):
        return [norm(x) for x in v]
    if isinstance(v, dict):
        return {"json": {k: norm(x) for k, x in v.items()}}
    return {type(v).__name__: str(v)}


def rows_of(cur):
    if cur.description is None:
        return None
    return {
        "columns": [c.name for c in cur.description],
        "rows": [norm(list(r)) for r in cur.fetchall()],
    }


def result(cur):
    """Everything the cursor shows about its current result."""
    out = {"tag": cur.statusmessage, "rowcount": cur.rowcount}
    rows = rows_of(cur)
    if rows is not None:
        out.update(rows)
    return out


def error(e):
    d = e.diag
    return {
        "class": type(e).__name__,
        "sqlstate": e.sqlstate,
        "severity": d.severity_nonlocalized,
        "message": d.message_primary,
        "detail": d.message_detail,
        "hint": d.message_hint,
        "context": d.context,
    }


NOTICES = []


def on_notice(d):
    NOTICES.append(
        {
            "severity": d.severity_nonlocalized,
            "sqlstate": d.sqlstate,
            "message": d.message_primary,
            "detail": d.message_detail,
            "hint": d.message_hint,
        }
    )


def emit(record):
    line = json.dumps(record, sort_keys=True, ensure_ascii=False)
    print(line.replace(PREFIX, "t_"), flush=True)


def report_backend():
    """The server backend this step ended on, on stderr (never in the transcript): the test checks that
    transaction pooling served the copies of the script from a shared, bounded set of server connections."""
    try:
        pid = conn.execute("SELECT pg_backend_pid()", prepare=False).fetchone()[0]
        print(f"backend_pid {pid}", file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - e.g. inside a failed transaction: nothing to report
        pass
    NOTICES.clear()


def step(name):
    """Runs the decorated function at once as a step; its return value (or its error) is the record."""

    def run(fn):
        record = {"step": name}
        try:
            record["out"] = fn()
        except psycopg.Error as e:
            record["error"] = error(e)
        except Exception as e:  # noqa: BLE001 - recorded; the next steps show whether the connection survived
            record["exception"] = f"{type(e).__name__}: {e}"
            print(traceback.format_exc(), file=sys.stderr)
        if NOTICES:
            record["notices"] = list(NOTICES)
            NOTICES.clear()
        emit(record)
        report_backend()
        return fn

    return run


def attempt(fn):
    """Runs fn; its result, or the error it raised, as a value (for several statements in one step)."""
    try:
        return {"ok": fn()}
    except psycopg.Error as e:
        return {"error": error(e)}


def one(sql, params=None, **kw):
    cur = conn.cursor()
    cur.execute(sql, params, **kw)
    return result(cur)


def simple(sql):
    """The simple query protocol (no parameters, not prepared); every result of a multi-statement query."""
    cur = conn.cursor()
    cur.execute(sql, prepare=False)
    out = [result(cur)]
    while cur.nextset():
        out.append(result(cur))
    return out


def alive():
    return one("SELECT 1 AS alive", prepare=False)["rows"]


# ------------------------------------------------------------------------------------------------------------
# The steps
# ------------------------------------------------------------------------------------------------------------

# prepare_threshold=0: every parameterised statement is server-prepared (named) from its first execution.
conn = psycopg.connect(URL, autocommit=True, prepare_threshold=0, connect_timeout=10)
conn.add_notice_handler(on_notice)
emit({"step": "driver", "out": {"driver": "psycopg", "libpq": psycopg.pq.version() // 10000}})


@step("setup")
def _():
    return simple(
        f"""
        DROP TABLE IF EXISTS {ITEMS}, {COPYT}, {BIG}, {MANY};
        CREATE TABLE {ITEMS} (
            id int PRIMARY KEY, name text NOT NULL, amount numeric(12, 2), at timestamptz, doc jsonb,
            data bytea, tags text[]);
        CREATE TABLE {COPYT} (id int, name text, amount numeric(12, 2), data bytea);
        CREATE TABLE {BIG} (id int PRIMARY KEY, body text, data bytea);
        CREATE TABLE {MANY} (n int PRIMARY KEY, label text);
        CREATE TYPE {PREFIX}mood AS ENUM ('sad', 'ok', 'happy');
        CREATE TYPE {PREFIX}pair AS (a int, b text);
        CREATE FUNCTION {PREFIX}noisy(n int) RETURNS int LANGUAGE plpgsql AS $$
        BEGIN
            RAISE NOTICE 'noisy %', n USING DETAIL = 'detail of ' || n, HINT = 'a hint';
            RETURN n * 2;
        END $$;
        """
    )


@step("simple_select")
def _():
    return simple(
        "SELECT 1 AS int, 'text'::text AS text, NULL::int AS null, 2.50::numeric(4,2) AS numeric, "
        "true AS bool, '\\x00ff'::bytea AS bytea, ARRAY[1,2,NULL] AS arr, '{\"a\": [1, null]}'::jsonb AS jsonb, "
        "'2024-02-29 23:59:59.123456+00'::timestamptz AS tstz, '1 day 02:03:04'::interval AS ival, "
        "1.5::float8 AS float8"
    )


PARAMS = (
    42,
    "Zürich 東京 'single' \"double\" \\ 🙂",
    b"\x00\x01\xfe\xff" * 8,
    Decimal("-12345678901234567890.0123456789"),
    datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=timezone.utc),
    Json({"k": [1, "two", None, {"n": 3.5}]}),
    [1, None, -3],
    ["a", "b,c", "{}", '"q"', None],
    None,
    "",
)
PARAM_SQL = (
    "SELECT %s::int AS i, %s::text AS t, %s::bytea AS b, %s::numeric AS n, %s::timestamptz AS ts, "
    "%s::json AS j, %s::int[] AS ia, %s::text[] AS ta, %s::text AS nul, %s::text AS empty"
)


@step("params_text_results")
def _():
    return one(PARAM_SQL, PARAMS)


@step("params_binary_results")
def _():
    return one(PARAM_SQL, PARAMS, binary=True)


@step("params_binary_in")
def _():
    cur = conn.cursor()
    cur.execute(
        "SELECT %b::int8 + 1 AS i, %b::bytea AS b, %b::text AS t, %b::float8 AS f, %b::bool AS bo",
        (2**40, b"\x00\x10\x80", "bin ✓", 0.25, False),
    )
    return result(cur)


@step("insert_tags")
def _():
    out = []
    for i in range(1, 6):
        out.append(
            one(
                f"INSERT INTO {ITEMS} (id, name, amount, at, doc, data, tags) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    i,
                    f"item {i}",
                    Decimal(i) * Decimal("1.25"),
                    datetime(2024, 1, i, 12, 0, tzinfo=timezone.utc),
                    Jsonb({"i": i}),
                    bytes([i] * i),
                    [f"t{i}", None],
                ),
            )
        )
    out.append(one(f"INSERT INTO {ITEMS} (id, name) VALUES (%s, %s) RETURNING id, name", (6, "six")))
    return out


@step("executemany")
def _():
    cur = conn.cursor()
    cur.executemany(
        f"INSERT INTO {ITEMS} (id, name, amount) VALUES (%s, %s, %s)",
        [(100 + i, f"bulk {i}", Decimal(i)) for i in range(200)],
    )
    return {"rowcount": cur.rowcount, "count": one(f"SELECT count(*) FROM {ITEMS}")["rows"]}


@step("executemany_with_error")
def _():
    out = []
    cur = conn.cursor()
    try:
        cur.executemany(
            f"INSERT INTO {ITEMS} (id, name) VALUES (%s, %s)",
            [(400 + i, f"batch {i}") for i in range(20)] + [(1, "dup")] + [(420 + i, "after dup") for i in range(5)],
        )
    except psycopg.Error as e:
        out.append({"error": error(e)})
    out.append(one(f"SELECT count(*) FROM {ITEMS} WHERE id >= %s AND id < %s", (400, 500)))
    out.append(one(f"DELETE FROM {ITEMS} WHERE id >= %s AND id < %s", (400, 500)))
    return out


@step("update_delete_select_tags")
def _():
    return [
        one(f"UPDATE {ITEMS} SET amount = amount + 1 WHERE id >= %s", (100,)),
        one(f"DELETE FROM {ITEMS} WHERE id >= %s AND id < %s", (250, 300)),
        one(f"SELECT id, name, amount FROM {ITEMS} WHERE id < %s ORDER BY id", (10,)),
        one(f"UPDATE {ITEMS} SET name = name WHERE false"),
        simple(f"UPDATE {ITEMS} SET name = name WHERE id = 1; DELETE FROM {ITEMS} WHERE id = -1"),
    ]


@step("prepared_reused")
def _():
    total = 0
    seen = []
    for i in range(300):
        cur = conn.cursor()
        cur.execute(f"SELECT id, amount FROM {ITEMS} WHERE id = %s", (100 + i % 150,))
        row = cur.fetchone()
        total += int(row[0])
        if i % 50 == 0:
            seen.append(norm(list(row)))
        cur.execute("SELECT %s::int * 2 AS doubled, %s::text AS label", (i, f"l{i}"))
        total += cur.fetchone()[0]
    return {"total": total, "sample": seen}


@step("many_distinct_statements")
def _():
    # More texts than psycopg keeps prepared (it closes the oldest) and than pgtenant keeps per server
    # connection in transaction pooling (500, least recently used closed): every one still answers right.
    total = 0
    for round_ in range(2):
        for i in range(600):
            cur = conn.cursor()
            cur.execute(f"SELECT %s::int + {i} AS v", (round_,))
            total += cur.fetchone()[0]
    return {"total": total}


@step("enum_and_composite_types")
def _():
    return [
        one(f"SELECT %s::{PREFIX}mood AS m, ROW(1, 'x')::{PREFIX}pair AS p, ARRAY['ok', 'sad']::{PREFIX}mood[] AS ms", ("happy",)),
        one(f"SELECT (ROW(%s, %s)::{PREFIX}pair).b AS b", (7, "seven")),
        attempt(lambda: one(f"SELECT %s::{PREFIX}mood", ("furious",))),
    ]


@step("tracked_settings")
def _():
    ts = "SELECT '2024-07-01 12:34:56.789+00'::timestamptz::text AS ts, '1 day 2 hours'::interval::text AS i"
    out = [
        simple("SET TimeZone = 'America/New_York'; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'iso_8601'"),
        simple("SET application_name = 'conformance-app'"),
    ]
    for _ in range(3):
        out.append(one(ts + ", current_setting('application_name') AS app WHERE %s", (True,)))
        out.append(simple(ts))
    out.append(simple("BEGIN; SET LOCAL TimeZone = 'Asia/Tokyo'; " + ts + "; COMMIT"))
    out.append(simple(ts))
    out.append(simple("BEGIN; SET LOCAL statement_timeout = '4s'; SHOW statement_timeout; COMMIT"))
    out.append(simple("RESET TimeZone; RESET DateStyle; RESET IntervalStyle; RESET application_name"))
    out.append(simple(ts))
    return out


@step("txn_commit")
def _():
    with conn.transaction():
        a = one(f"INSERT INTO {ITEMS} (id, name) VALUES (%s, %s)", (1000, "committed"))
        b = one(f"SELECT name FROM {ITEMS} WHERE id = %s", (1000,))
    return [a, b, one(f"SELECT count(*) FROM {ITEMS} WHERE id = %s", (1000,))]


@step("txn_rollback")
def _():
    return [
        simple("BEGIN"),
        one(f"INSERT INTO {ITEMS} (id, name) VALUES (%s, %s)", (1001, "rolled back")),
        simple("ROLLBACK"),
        one(f"SELECT count(*) FROM {ITEMS} WHERE id = %s", (1001,)),
    ]


@step("savepoints")
def _():
    out = [simple("BEGIN")]
    out.append(one(f"INSERT INTO {ITEMS} (id, name) VALUES (%s, %s)", (1002, "kept")))
    out.append(simple("SAVEPOINT s1"))
    out.append(attempt(lambda: one(f"INSERT INTO {ITEMS} (id, name) VALUES (%s, %s)", (1002, "dup"))))
    out.append(simple("ROLLBACK TO SAVEPOINT s1"))
    out.append(one(f"INSERT INTO {ITEMS} (id, name) VALUES (%s, %s)", (1003, "after savepoint")))
    out.append(simple("RELEASE SAVEPOINT s1"))
    out.append(simple("COMMIT"))
    out.append(one(f"SELECT id, name FROM {ITEMS} WHERE id BETWEEN %s AND %s ORDER BY id", (1002, 1004)))
    return out


@step("nested_transaction_blocks")
def _():
    out = []
    with conn.transaction():
        out.append(one(f"INSERT INTO {ITEMS} (id, name) VALUES (%s, %s)", (1010, "outer")))
        try:
            with conn.transaction():
                out.append(one(f"INSERT INTO {ITEMS} (id, name) VALUES (%s, %s)", (1011, "inner")))
                one(f"INSERT INTO {ITEMS} (id, name) VALUES (%s, %s)", (1010, "inner dup"))
        except psycopg.Error as e:
            out.append({"inner error": error(e)})
    out.append(one(f"SELECT id, name FROM {ITEMS} WHERE id BETWEEN %s AND %s ORDER BY id", (1010, 1011)))
    return out


ERRORS = [
    ("err_unique_violation", lambda: one(f"INSERT INTO {ITEMS} (id, name) VALUES (%s, %s)", (1, "dup"))),
    ("err_division_by_zero", lambda: one("SELECT 1 / %s::int AS x", (0,))),
    ("err_division_by_zero_simple", lambda: simple("SELECT 1 / 0")),
    ("err_syntax", lambda: one("SELEC %s::int", (1,))),
    ("err_syntax_simple", lambda: simple("SELEC 1")),
    ("err_undefined_table", lambda: one("SELECT * FROM no_such_table_anywhere WHERE x = %s", (1,))),
    ("err_undefined_table_simple", lambda: simple("SELECT * FROM no_such_table_anywhere")),
    ("err_not_null", lambda: one(f"INSERT INTO {ITEMS} (id, name) VALUES (%s, NULL)", (7,))),
    ("err_bad_input", lambda: one("SELECT %s::int AS x", ("twelve",))),
    (
        "err_raise_exception",
        lambda: simple(
            "DO $$ BEGIN RAISE EXCEPTION 'custom % failure', 'Zürich' "
            "USING ERRCODE = 'P0042', DETAIL = 'the detail', HINT = 'the hint'; END $$"
        ),
    ),
]
for _name, _fn in ERRORS:
    step(_name)(lambda fn=_fn: fn())
    step(f"{_name}_then")(lambda: alive())


@step("error_in_transaction")
def _():
    return [
        simple("BEGIN"),
        one(f"INSERT INTO {ITEMS} (id, name) VALUES (%s, %s)", (1020, "lost")),
        attempt(lambda: one("SELECT 1 / %s::int", (0,))),
        attempt(lambda: one("SELECT %s::int AS after_error", (1,))),
        attempt(lambda: simple("SELECT 1")),
        {"status": conn.info.transaction_status.name},
        simple("ROLLBACK"),
        {"status": conn.info.transaction_status.name},
        one(f"SELECT count(*) FROM {ITEMS} WHERE id = %s", (1020,)),
    ]


@step("commit_of_failed_transaction")
def _():
    return [
        simple("BEGIN"),
        attempt(lambda: simple("SELECT * FROM no_such_table_anywhere")),
        simple("COMMIT"),
        {"status": conn.info.transaction_status.name},
        alive(),
    ]


@step("notices")
def _():
    return [
        simple(
            "DO $$ BEGIN RAISE NOTICE 'notice % of %', 1, 'Zürich 東京'; RAISE WARNING 'careful: %', 42; "
            "RAISE NOTICE 'coded' USING ERRCODE = '01P42', DETAIL = 'd', HINT = 'h'; END $$"
        ),
        one(f"SELECT {PREFIX}noisy(%s) AS v", (21,)),
        simple(f"SELECT {PREFIX}noisy(1) AS a, {PREFIX}noisy(2) AS b"),
    ]


@step("notices_in_transaction")
def _():
    with conn.transaction():
        a = one(f"SELECT {PREFIX}noisy(%s) AS v", (5,))
        b = simple("DO $$ BEGIN RAISE WARNING 'inside'; END $$")
    return [a, b]


@step("empty_query")
def _():
    return [simple(""), simple(";"), alive()]


@step("multi_statement_simple_query")
def _():
    return simple(
        f"SELECT 1 AS a; SELECT 'two' AS b, NULL AS c; UPDATE {ITEMS} SET name = name WHERE id <= 3; "
        f"INSERT INTO {ITEMS} (id, name) VALUES (2000, 'multi'), (2001, 'multi'); "
        f"SELECT count(*) FROM {ITEMS} WHERE name = 'multi'"
    )


@step("multi_statement_with_error")
def _():
    return [
        attempt(
            lambda: simple(
                f"INSERT INTO {ITEMS} (id, name) VALUES (2002, 'lost'); SELECT 1 / 0; "
                f"INSERT INTO {ITEMS} (id, name) VALUES (2003, 'never')"
            )
        ),
        one(f"SELECT count(*) FROM {ITEMS} WHERE id IN (2002, 2003)"),
    ]


@step("multi_statement_with_transaction")
def _():
    return [
        simple(
            f"BEGIN; INSERT INTO {ITEMS} (id, name) VALUES (2010, 'in block'); COMMIT; "
            f"BEGIN; INSERT INTO {ITEMS} (id, name) VALUES (2011, 'rolled'); ROLLBACK; "
            f"SELECT id FROM {ITEMS} WHERE id IN (2010, 2011)"
        ),
        {"status": conn.info.transaction_status.name},
    ]


def copy_in(sql, chunks):
    cur = conn.cursor()
    with cur.copy(sql) as copy:
        for c in chunks:
            copy.write(c)
    return {"tag": cur.statusmessage, "rowcount": cur.rowcount}


def copy_out(sql, params=None):
    cur = conn.cursor()
    data = bytearray()
    with cur.copy(sql, params) as copy:
        for chunk in copy:
            data += chunk
    return {"tag": cur.statusmessage, "rowcount": cur.rowcount, "data": norm(bytes(data))}


def copy_table():
    return one(f"SELECT id, name, amount, data FROM {COPYT} ORDER BY id, name")


@step("copy_in_text")
def _():
    return [
        copy_in(
            f"COPY {COPYT} (id, name, amount, data) FROM STDIN",
            [b"1\tone\t1.50\t\\\\x0001\n2\ttab\\there\t\\N\t\\N\n", "3\tZürich \\\\ 東京\t-3\t\\\\xff\n".encode()],
        ),
        copy_table(),
    ]


@step("copy_in_csv")
def _():
    return [
        copy_in(
            f"COPY {COPYT} (id, name, amount) FROM STDIN (FORMAT csv, HEADER true)",
            [b'id,name,amount\n10,"comma, quote "" and\nnewline",10.10\n11,,\n', b'12,"",12\n'],
        ),
        copy_table(),
    ]


@step("copy_in_binary")
def _():
    cur = conn.cursor()
    with cur.copy(f"COPY {COPYT} (id, name, amount, data) FROM STDIN (FORMAT binary)") as copy:
        copy.set_types(["int4", "text", "numeric", "bytea"])
        copy.write_row((20, "binary ✓", Decimal("20.20"), b"\x00\x01\x02"))
        copy.write_row((21, None, None, None))
    return [{"tag": cur.statusmessage, "rowcount": cur.rowcount}, copy_table()]


@step("copy_out_text")
def _():
    return copy_out(f"COPY (SELECT id, name, amount, data FROM {COPYT} ORDER BY id, name) TO STDOUT")


@step("copy_out_csv")
def _():
    return copy_out(f"COPY (SELECT id, name, amount FROM {COPYT} ORDER BY id, name) TO STDOUT (FORMAT csv, HEADER)")


@step("copy_out_binary")
def _():
    return copy_out(f"COPY (SELECT id, name, amount, data FROM {COPYT} ORDER BY id, name) TO STDOUT (FORMAT binary)")


@step("copy_out_binary_rows")
def _():
    cur = conn.cursor()
    rows = []
    with cur.copy(f"COPY (SELECT id, name, data FROM {COPYT} ORDER BY id, name) TO STDOUT (FORMAT binary)") as copy:
        copy.set_types(["int4", "text", "bytea"])
        for row in copy.rows():
            rows.append(norm(list(row)))
    return {"tag": cur.statusmessage, "rows": rows}


@step("copy_out_with_parameters")
def _():
    # With parameters psycopg sends the COPY with the extended protocol (Parse/Bind/Execute/Sync).
    sql = f"COPY (SELECT id, name FROM {COPYT} WHERE id < %s AND name <> %s ORDER BY id) TO STDOUT (FORMAT csv)"
    out = [copy_out(sql, (20, "one"))]
    with conn.transaction():
        out.append(copy_out(sql, (3, "")))
        out.append(one(f"SELECT count(*) FROM {COPYT} WHERE id < %s", (20,)))
    out.append(attempt(lambda: copy_out("COPY (SELECT 1 / %s::int) TO STDOUT", (0,))))
    out.append(alive())
    return out


@step("copy_in_transaction")
def _():
    out = [simple("BEGIN")]
    out.append(copy_in(f"COPY {COPYT} (id, name) FROM STDIN", [b"30\tin txn\n31\tin txn\n"]))
    out.append(copy_out(f"COPY (SELECT id, name FROM {COPYT} WHERE id >= 30 ORDER BY id) TO STDOUT (FORMAT csv)"))
    out.append(one(f"SELECT count(*) FROM {COPYT} WHERE id >= %s", (30,)))
    out.append(simple("ROLLBACK"))
    out.append(one(f"SELECT count(*) FROM {COPYT} WHERE id >= %s", (30,)))
    with conn.transaction():
        out.append(copy_in(f"COPY {COPYT} (id, name) FROM STDIN (FORMAT csv)", [b"32,committed\n"]))
    out.append(one(f"SELECT count(*) FROM {COPYT} WHERE id >= %s", (30,)))
    return out


@step("copy_bad_row")
def _():
    return [
        attempt(lambda: copy_in(f"COPY {COPYT} (id, name) FROM STDIN", [b"40\tgood\n41\tgood\n", b"x42\tbad\n43\tgood\n"])),
        {"status": conn.info.transaction_status.name},
        one(f"SELECT count(*) FROM {COPYT} WHERE id >= %s", (40,)),
        alive(),
    ]


@step("copy_bad_row_in_transaction")
def _():
    return [
        simple("BEGIN"),
        one(f"INSERT INTO {COPYT} (id, name) VALUES (%s, %s)", (50, "before copy")),
        attempt(lambda: copy_in(f"COPY {COPYT} (id, name) FROM STDIN (FORMAT csv)", [b"51,ok\n52,ok,extra\n"])),
        {"status": conn.info.transaction_status.name},
        attempt(alive),
        simple("ROLLBACK"),
        one(f"SELECT count(*) FROM {COPYT} WHERE id >= %s", (50,)),
    ]


class ClientAbort(Exception):
    pass


@step("copy_aborted_by_client")
def _():
    out = []
    cur = conn.cursor()
    try:
        with cur.copy(f"COPY {COPYT} (id, name) FROM STDIN") as copy:
            copy.write(b"60\tsent\n61\tsent\n")
            raise ClientAbort("client gives up")
    except ClientAbort as e:
        out.append({"raised": str(e)})
    except psycopg.Error as e:
        out.append({"error": error(e)})
    out.append({"status": conn.info.transaction_status.name})
    out.append(one(f"SELECT count(*) FROM {COPYT} WHERE id >= %s", (60,)))
    out.append(alive())
    return out


@step("copy_aborted_by_client_in_transaction")
def _():
    out = [simple("BEGIN")]
    cur = conn.cursor()
    try:
        with cur.copy(f"COPY {COPYT} (id, name) FROM STDIN") as copy:
            copy.write(b"62\tsent\n")
            raise ClientAbort("client gives up in a transaction")
    except ClientAbort as e:
        out.append({"raised": str(e)})
    except psycopg.Error as e:
        out.append({"error": error(e)})
    out.append({"status": conn.info.transaction_status.name})
    out.append(attempt(alive))
    out.append(simple("ROLLBACK"))
    out.append(one(f"SELECT count(*) FROM {COPYT} WHERE id >= %s", (60,)))
    return out


@step("copy_out_error")
def _():
    return [
        attempt(lambda: copy_out("COPY (SELECT 1 / (3 - g) FROM generate_series(1, 5) g) TO STDOUT")),
        alive(),
    ]


@step("copy_many_rows")
def _():
    lines = "".join(f"{i}\tline {i}\n" for i in range(1000, 11000)).encode()
    chunks = [lines[i : i + 65536] for i in range(0, len(lines), 65536)]
    return [
        copy_in(f"COPY {COPYT} (id, name) FROM STDIN", chunks),
        copy_out(f"COPY (SELECT id, name FROM {COPYT} WHERE id >= 1000 ORDER BY id) TO STDOUT"),
    ]


def large_text():
    return "".join(chr(0x20 + (i * 7919) % 0x5F) for i in range(LARGE)) + "Zürich"


def large_bytes():
    return bytes((i * 31 + 7) % 256 for i in range(LARGE))


@step("large_values")
def _():
    text, data = large_text(), large_bytes()
    return [
        one("SELECT %s::text AS t, length(%s::text) AS n", (text, text)),
        one(f"INSERT INTO {BIG} (id, body, data) VALUES (%s, %s, %s)", (1, text, data)),
        one(f"SELECT body, data, md5(data) FROM {BIG} WHERE id = %s", (1,)),
        one(f"SELECT body, data FROM {BIG} WHERE id = %s", (1,), binary=True),
        simple(f"SELECT length(body), md5(body) FROM {BIG}"),
        copy_out(f"COPY (SELECT body, data FROM {BIG}) TO STDOUT"),
    ]


@step("many_rows")
def _():
    ids = list(range(10000))
    out = [one(f"INSERT INTO {MANY} (n, label) SELECT g, 'label ' || g FROM unnest(%s::int[]) g", (ids,))]
    for binary in (False, True):
        cur = conn.cursor()
        cur.execute(f"SELECT n, label FROM {MANY} ORDER BY n", binary=binary)
        rows = cur.fetchall()
        out.append(
            {
                "tag": cur.statusmessage,
                "count": len(rows),
                "sha256": digest(json.dumps(norm(rows)).encode()),
            }
        )
    cur = conn.cursor()
    cur.execute("SELECT g, md5(g::text) FROM generate_series(1, 10000) g", prepare=False)
    rows = cur.fetchall()
    out.append({"tag": cur.statusmessage, "count": len(rows), "sha256": digest(json.dumps(norm(rows)).encode())})
    return out


@step("server_side_cursor")
def _():
    out = []
    with conn.transaction():
        cur = conn.cursor(name="conformance_cursor")
        cur.itersize = 333
        cur.execute(f"SELECT n, label FROM {MANY} WHERE n < %s ORDER BY n", (5000,))
        first = cur.fetchmany(10)
        rest = cur.fetchall()
        out.append({"first": norm(first), "rest": len(rest), "sha256": digest(json.dumps(norm(rest)).encode())})
        cur.close()
        scroll = conn.cursor(name="conformance_scroll", scrollable=True)
        scroll.execute(f"SELECT n FROM {MANY} WHERE n < 100 ORDER BY n")
        scroll.scroll(50, mode="absolute")
        out.append({"after scroll": norm(scroll.fetchmany(3))})
        scroll.scroll(-10)
        out.append({"back": norm(scroll.fetchone())})
        scroll.close()
    out.append(simple("BEGIN; DECLARE c1 CURSOR FOR SELECT g FROM generate_series(1, 10) g"))
    out.append(simple("FETCH 3 FROM c1"))
    out.append(simple("MOVE 2 IN c1; FETCH NEXT FROM c1"))
    out.append(attempt(lambda: simple("FETCH FROM no_such_cursor")))
    out.append(simple("ROLLBACK"))
    return out


@step("pipeline")
def _():
    out = []
    with conn.pipeline():
        curs = []
        for i in range(20):
            c = conn.cursor()
            c.execute("SELECT %s::int AS i, %s::text AS t", (i, f"p{i}"))
            curs.append(c)
        c = conn.cursor()
        c.execute(f"INSERT INTO {ITEMS} (id, name) VALUES (%s, %s)", (3000, "pipelined"))
        curs.append(c)
    for c in curs:
        out.append(result(c))
    try:
        with conn.pipeline():
            conn.execute(f"INSERT INTO {ITEMS} (id, name) VALUES (%s, %s)", (3001, "in failed pipeline"))
            conn.execute("SELECT 1 / %s::int", (0,))
            conn.execute(f"INSERT INTO {ITEMS} (id, name) VALUES (%s, %s)", (3002, "skipped"))
    except psycopg.Error as e:
        out.append({"pipeline error": error(e)})
    out.append(one(f"SELECT id FROM {ITEMS} WHERE id >= %s ORDER BY id", (3000,)))
    return out


@step("final_state")
def _():
    return [
        one(f"SELECT count(*), sum(id), sum(amount), md5(string_agg(name, ',' ORDER BY id)) FROM {ITEMS}"),
        one(f"SELECT count(*), sum(id), md5(string_agg(coalesce(name, '-'), ',' ORDER BY id, name)) FROM {COPYT}"),
        one(f"SELECT count(*), sum(n) FROM {MANY}"),
        {"status": conn.info.transaction_status.name},
    ]


@step("teardown")
def _():
    return simple(
        f"DROP TABLE {ITEMS}, {COPYT}, {BIG}, {MANY}; DROP FUNCTION {PREFIX}noisy(int); "
        f"DROP TYPE {PREFIX}mood, {PREFIX}pair"
    )


conn.close()
emit({"step": "end"})
