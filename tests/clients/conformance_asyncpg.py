#!/usr/bin/env python3
"""Driver conformance script for asyncpg (run by tests/conformance.rs).

Usage: conformance_asyncpg.py URL PREFIX

URL is a postgresql:// URI; PREFIX (e.g. "cf_1a2b3c4d_") starts the name of every table the script creates,
so several copies can run at once against the same schema. The script runs a fixed list of protocol
features and prints one JSON object per step on stdout: what the driver observed (rows, command tags, errors
with SQLSTATE, notices, COPY bytes). PREFIX is replaced by "t_" in the output, and nothing that legitimately
differs between targets (backend pid, now(), role or schema names) is printed, so the transcript of a run
directly against PostgreSQL and through pgtenant must be identical.

asyncpg speaks the extended protocol with binary formats for everything that has parameters, keeps a cache
of named prepared statements (every fetch below goes through it), pipelines executemany, and uses the simple
protocol for execute() without arguments. A step that fails records the error and the script goes on: the
exit status is 0 unless the script itself is broken; the last line is {"step": "end"}.
"""

import asyncio
import hashlib
import io
import json
import sys
import traceback
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

try:
    import asyncpg
except ImportError as e:  # the Rust side checks this first; keep the message here too
    print(f"asyncpg is not importable ({e}): pip install asyncpg", file=sys.stderr)
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
    if isinstance(v, asyncpg.Record):
        return {"record": [[k, norm(x)] for k, x in v.items()]}
    if isinstance(v, (list, tuple)):
        return [norm(x) for x in v]
    if isinstance(v, dict):
        return {"dict": {k: norm(x) for k, x in v.items()}}
    return {type(v).__name__: str(v)}


def rows(records):
    return [norm(list(r.values())) for r in records]


def columns(records):
    return list(records[0].keys()) if records else []


def fetched(records):
    return {"columns": columns(records), "rows": rows(records)}


def error(e):
    return {
        "class": type(e).__name__,
        "sqlstate": getattr(e, "sqlstate", None),
        "severity": getattr(e, "severity_en", None),
        "message": getattr(e, "message", str(e)),
        "detail": getattr(e, "detail", None),
        "hint": getattr(e, "hint", None),
        "context": getattr(e, "context", None),
    }


NOTICES = []


def on_log(_conn, m):
    NOTICES.append(
        {
            "severity": m.severity_en,
            "sqlstate": m.sqlstate,
            "message": m.message,
            "detail": m.detail,
            "hint": m.hint,
        }
    )


def emit(record):
    line = json.dumps(record, sort_keys=True, ensure_ascii=False)
    print(line.replace(PREFIX, "t_"), flush=True)


STEPS = []


def step(name):
    def register(fn):
        STEPS.append((name, fn))
        return fn

    return register


async def run_step(name, fn):
    record = {"step": name}
    try:
        record["out"] = await fn()
    except asyncpg.PostgresError as e:
        record["error"] = error(e)
    except Exception as e:  # noqa: BLE001 - recorded; the next steps show whether the connection survived
        record["exception"] = f"{type(e).__name__}: {e}"
        print(traceback.format_exc(), file=sys.stderr)
    # Log listeners are called with call_soon: let them run before the record is closed.
    for _ in range(3):
        await asyncio.sleep(0)
    if NOTICES:
        record["notices"] = list(NOTICES)
        NOTICES.clear()
    emit(record)
    # The server backend this step ended on, on stderr (never in the transcript): the test checks that
    # transaction pooling served the copies of the script from a shared, bounded set of server connections.
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        print(f"backend_pid {pid}", file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - e.g. inside a failed transaction: nothing to report
        pass
    NOTICES.clear()


async def attempt(coro):
    """Awaits coro; its result, or the server error it raised, as a value."""
    try:
        return {"ok": await coro}
    except asyncpg.PostgresError as e:
        return {"error": error(e)}


def status(conn):
    return {"in_transaction": conn.is_in_transaction()}


# ------------------------------------------------------------------------------------------------------------
# The steps
# ------------------------------------------------------------------------------------------------------------

conn = None


async def alive():
    return rows(await conn.fetch("SELECT 1 AS alive"))


@step("setup")
async def _():
    return await conn.execute(
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
async def _():
    # No arguments: fetch still uses the extended protocol (and the statement cache).
    return fetched(
        await conn.fetch(
            "SELECT 1 AS int, 'text'::text AS text, NULL::int AS null, 2.50::numeric(4,2) AS numeric, "
            "true AS bool, '\\x00ff'::bytea AS bytea, ARRAY[1,2,NULL] AS arr, '{\"a\": [1, null]}'::jsonb AS jsonb, "
            "'2024-02-29 23:59:59.123456+00'::timestamptz AS tstz, '1 day 02:03:04'::interval AS ival, "
            "1.5::float8 AS float8"
        )
    )


@step("simple_protocol_execute")
async def _():
    return [
        await conn.execute("SELECT 1"),
        await conn.execute(f"UPDATE {ITEMS} SET name = name WHERE false"),
    ]


PARAMS = (
    42,
    "Zürich 東京 'single' \"double\" \\ 🙂",
    b"\x00\x01\xfe\xff" * 8,
    Decimal("-12345678901234567890.0123456789"),
    datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=timezone.utc),
    json.dumps({"k": [1, "two", None, {"n": 3.5}]}),
    [1, None, -3],
    ["a", "b,c", "{}", '"q"', None],
    None,
    "",
    2**40,
    0.25,
    False,
)
PARAM_SQL = (
    "SELECT $1::int AS i, $2::text AS t, $3::bytea AS b, $4::numeric AS n, $5::timestamptz AS ts, "
    "$6::json AS j, $7::int[] AS ia, $8::text[] AS ta, $9::text AS nul, $10::text AS empty, "
    "$11::int8 + 1 AS i8, $12::float8 AS f, $13::bool AS bo"
)


@step("params_binary")
async def _():
    return fetched(await conn.fetch(PARAM_SQL, *PARAMS))


@step("params_fetchrow_fetchval")
async def _():
    row = await conn.fetchrow("SELECT $1::text || '!' AS shout, $2::int[] AS arr", "hey", [3, 2, 1])
    val = await conn.fetchval("SELECT $1::numeric * 2", Decimal("1.005"))
    none = await conn.fetchrow("SELECT 1 WHERE false")
    return {"row": norm(row), "val": norm(val), "none": norm(none)}


@step("insert_tags")
async def _():
    out = []
    for i in range(1, 6):
        out.append(
            await conn.execute(
                f"INSERT INTO {ITEMS} (id, name, amount, at, doc, data, tags) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                i,
                f"item {i}",
                Decimal(i) * Decimal("1.25"),
                datetime(2024, 1, i, 12, 0, tzinfo=timezone.utc),
                json.dumps({"i": i}),
                bytes([i] * i),
                [f"t{i}", None],
            )
        )
    out.append(fetched(await conn.fetch(f"INSERT INTO {ITEMS} (id, name) VALUES ($1, $2) RETURNING id, name", 6, "six")))
    return out


@step("executemany")
async def _():
    await conn.executemany(
        f"INSERT INTO {ITEMS} (id, name, amount) VALUES ($1, $2, $3)",
        [(100 + i, f"bulk {i}", Decimal(i)) for i in range(200)],
    )
    return rows(await conn.fetch(f"SELECT count(*) FROM {ITEMS}"))


@step("executemany_with_error")
async def _():
    out = []
    try:
        await conn.executemany(
            f"INSERT INTO {ITEMS} (id, name) VALUES ($1, $2)",
            [(400 + i, f"batch {i}") for i in range(20)] + [(1, "dup")] + [(420 + i, "after dup") for i in range(5)],
        )
    except asyncpg.PostgresError as e:
        out.append({"error": error(e)})
    out.append(rows(await conn.fetch(f"SELECT count(*) FROM {ITEMS} WHERE id >= $1 AND id < $2", 400, 500)))
    out.append(await conn.execute(f"DELETE FROM {ITEMS} WHERE id >= $1 AND id < $2", 400, 500))
    return out


@step("update_delete_select_tags")
async def _():
    return [
        await conn.execute(f"UPDATE {ITEMS} SET amount = amount + 1 WHERE id >= $1", 100),
        await conn.execute(f"DELETE FROM {ITEMS} WHERE id >= $1 AND id < $2", 250, 300),
        await conn.execute(f"SELECT id FROM {ITEMS} WHERE id < $1", 10),
        fetched(await conn.fetch(f"SELECT id, name, amount FROM {ITEMS} WHERE id < $1 ORDER BY id", 10)),
        await conn.execute(f"UPDATE {ITEMS} SET name = name WHERE id = 1; DELETE FROM {ITEMS} WHERE id = -1"),
    ]


@step("prepared_reused")
async def _():
    total = 0
    seen = []
    stmt = await conn.prepare(f"SELECT id, amount FROM {ITEMS} WHERE id = $1")
    for i in range(300):
        row = await stmt.fetchrow(100 + i % 150)
        total += row[0]
        if i % 50 == 0:
            seen.append(norm(list(row.values())))
        # The same text through the connection's statement cache.
        total += await conn.fetchval("SELECT $1::int * 2 AS doubled", i)
    attrs = [[a.name, a.type.name] for a in stmt.get_attributes()]
    params = [t.name for t in stmt.get_parameters()]
    return {"total": total, "sample": seen, "attributes": attrs, "parameters": params}


@step("many_distinct_statements")
async def _():
    # More texts than asyncpg's statement cache holds (it closes the oldest) and than pgtenant keeps per server
    # connection in transaction pooling (500, least recently used closed): every one still answers right.
    total = 0
    for round_ in range(2):
        for i in range(600):
            total += await conn.fetchval(f"SELECT $1::int + {i} AS v", round_)
    return {"total": total}


@step("enum_and_composite_types")
async def _():
    # asyncpg introspects types it does not know with queries of its own (prepared, cached) at first use.
    return [
        fetched(await conn.fetch(f"SELECT $1::{PREFIX}mood AS m, ROW(1, 'x')::{PREFIX}pair AS p, ARRAY['ok', 'sad']::{PREFIX}mood[] AS ms", "happy")),
        fetched(await conn.fetch(f"SELECT $1::{PREFIX}pair AS p", (7, "seven"))),
        await attempt(conn.fetch(f"SELECT $1::{PREFIX}mood", "furious")),
    ]


@step("tracked_settings")
async def _():
    ts = "SELECT '2024-07-01 12:34:56.789+00'::timestamptz::text AS ts, '1 day 2 hours'::interval::text AS i"
    out = [
        await conn.execute("SET TimeZone = 'America/New_York'; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'iso_8601'"),
        await conn.execute("SET application_name = 'conformance-app'"),
    ]
    for _ in range(3):
        out.append(rows(await conn.fetch(ts + ", current_setting('application_name') AS app WHERE $1", True)))
        out.append(rows(await conn.fetch(ts)))
    out.append(await conn.execute("BEGIN; SET LOCAL TimeZone = 'Asia/Tokyo'"))
    out.append(rows(await conn.fetch(ts)))
    out.append(await conn.execute("COMMIT"))
    out.append(rows(await conn.fetch(ts)))
    out.append(await conn.execute("RESET TimeZone; RESET DateStyle; RESET IntervalStyle; RESET application_name"))
    out.append(rows(await conn.fetch(ts)))
    return out


@step("txn_commit")
async def _():
    out = []
    async with conn.transaction():
        out.append(await conn.execute(f"INSERT INTO {ITEMS} (id, name) VALUES ($1, $2)", 1000, "committed"))
        out.append(status(conn))
    out.append(rows(await conn.fetch(f"SELECT count(*) FROM {ITEMS} WHERE id = $1", 1000)))
    return out


@step("txn_rollback")
async def _():
    out = []
    tr = conn.transaction()
    await tr.start()
    out.append(await conn.execute(f"INSERT INTO {ITEMS} (id, name) VALUES ($1, $2)", 1001, "rolled back"))
    await tr.rollback()
    out.append(rows(await conn.fetch(f"SELECT count(*) FROM {ITEMS} WHERE id = $1", 1001)))
    out.append(await conn.execute("BEGIN"))
    out.append(await conn.execute(f"INSERT INTO {ITEMS} (id, name) VALUES (1001, 'rolled back')"))
    out.append(await conn.execute("ROLLBACK"))
    out.append(rows(await conn.fetch(f"SELECT count(*) FROM {ITEMS} WHERE id = $1", 1001)))
    return out


@step("savepoints")
async def _():
    out = []
    async with conn.transaction():
        out.append(await conn.execute(f"INSERT INTO {ITEMS} (id, name) VALUES ($1, $2)", 1002, "kept"))
        try:
            async with conn.transaction():
                out.append(await conn.execute(f"INSERT INTO {ITEMS} (id, name) VALUES ($1, $2)", 1004, "inner"))
                await conn.execute(f"INSERT INTO {ITEMS} (id, name) VALUES ($1, $2)", 1002, "dup")
        except asyncpg.PostgresError as e:
            out.append({"inner error": error(e)})
        out.append(await conn.execute(f"INSERT INTO {ITEMS} (id, name) VALUES ($1, $2)", 1003, "after savepoint"))
        out.append(await conn.execute("SAVEPOINT s2"))
        out.append(await conn.execute("ROLLBACK TO SAVEPOINT s2"))
        out.append(await conn.execute("RELEASE SAVEPOINT s2"))
    out.append(fetched(await conn.fetch(f"SELECT id, name FROM {ITEMS} WHERE id BETWEEN $1 AND $2 ORDER BY id", 1002, 1004)))
    return out


ERRORS = [
    ("err_unique_violation", lambda: conn.execute(f"INSERT INTO {ITEMS} (id, name) VALUES ($1, $2)", 1, "dup")),
    ("err_division_by_zero", lambda: conn.fetch("SELECT 1 / $1::int AS x", 0)),
    ("err_division_by_zero_simple", lambda: conn.execute("SELECT 1 / 0")),
    ("err_syntax", lambda: conn.fetch("SELEC $1::int", 1)),
    ("err_syntax_simple", lambda: conn.execute("SELEC 1")),
    ("err_undefined_table", lambda: conn.fetch("SELECT * FROM no_such_table_anywhere WHERE x = $1", 1)),
    ("err_undefined_table_simple", lambda: conn.execute("SELECT * FROM no_such_table_anywhere")),
    ("err_not_null", lambda: conn.execute(f"INSERT INTO {ITEMS} (id, name) VALUES ($1, NULL)", 7)),
    ("err_bad_input", lambda: conn.fetch("SELECT $1::text::int AS x", "twelve")),
    (
        "err_raise_exception",
        lambda: conn.execute(
            "DO $$ BEGIN RAISE EXCEPTION 'custom % failure', 'Zürich' "
            "USING ERRCODE = 'P0042', DETAIL = 'the detail', HINT = 'the hint'; END $$"
        ),
    ),
]
for _name, _fn in ERRORS:
    step(_name)(lambda fn=_fn: fn())
    step(f"{_name}_then")(alive)


@step("error_in_transaction")
async def _():
    out = [await conn.execute("BEGIN")]
    out.append(await conn.execute(f"INSERT INTO {ITEMS} (id, name) VALUES ($1, $2)", 1020, "lost"))
    out.append(await attempt(conn.fetch("SELECT 1 / $1::int", 0)))
    out.append(await attempt(conn.fetch("SELECT $1::int AS after_error", 1)))
    out.append(await attempt(conn.execute("SELECT 1")))
    out.append(status(conn))
    out.append(await conn.execute("ROLLBACK"))
    out.append(status(conn))
    out.append(rows(await conn.fetch(f"SELECT count(*) FROM {ITEMS} WHERE id = $1", 1020)))
    return out


@step("error_in_transaction_block")
async def _():
    out = []
    try:
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {ITEMS} (id, name) VALUES ($1, $2)", 1021, "lost")
            await conn.execute("SELECT 1 / 0")
    except asyncpg.PostgresError as e:
        out.append({"error": error(e)})
    out.append(status(conn))
    out.append(rows(await conn.fetch(f"SELECT count(*) FROM {ITEMS} WHERE id = $1", 1021)))
    return out


@step("commit_of_failed_transaction")
async def _():
    return [
        await conn.execute("BEGIN"),
        await attempt(conn.execute("SELECT * FROM no_such_table_anywhere")),
        await conn.execute("COMMIT"),
        status(conn),
        await alive(),
    ]


@step("notices")
async def _():
    return [
        await conn.execute(
            "DO $$ BEGIN RAISE NOTICE 'notice % of %', 1, 'Zürich 東京'; RAISE WARNING 'careful: %', 42; "
            "RAISE NOTICE 'coded' USING ERRCODE = '01P42', DETAIL = 'd', HINT = 'h'; END $$"
        ),
        await conn.fetchval(f"SELECT {PREFIX}noisy($1) AS v", 21),
        await conn.execute(f"SELECT {PREFIX}noisy(1) AS a, {PREFIX}noisy(2) AS b"),
    ]


@step("notices_in_transaction")
async def _():
    async with conn.transaction():
        a = await conn.fetchval(f"SELECT {PREFIX}noisy($1) AS v", 5)
        b = await conn.execute("DO $$ BEGIN RAISE WARNING 'inside'; END $$")
    return [a, b]


@step("empty_query")
async def _():
    # asyncpg's simple-query path does not expect EmptyQueryResponse (an AttributeError inside asyncpg): what it
    # raises is part of the transcript, and so is whether the connection is still usable afterwards.
    out = []
    for call in (lambda: conn.execute(""), lambda: conn.execute(";"), lambda: conn.fetch("")):
        try:
            out.append(await attempt(call()))
        except Exception as e:  # noqa: BLE001
            out.append({"exception": f"{type(e).__name__}: {e}"})
    out.append(await alive())
    return out


@step("multi_statement_simple_query")
async def _():
    return [
        await conn.execute(
            f"SELECT 1 AS a; SELECT 'two' AS b, NULL AS c; UPDATE {ITEMS} SET name = name WHERE id <= 3; "
            f"INSERT INTO {ITEMS} (id, name) VALUES (2000, 'multi'), (2001, 'multi')"
        ),
        rows(await conn.fetch(f"SELECT count(*) FROM {ITEMS} WHERE name = 'multi'")),
    ]


@step("multi_statement_with_error")
async def _():
    return [
        await attempt(
            conn.execute(
                f"INSERT INTO {ITEMS} (id, name) VALUES (2002, 'lost'); SELECT 1 / 0; "
                f"INSERT INTO {ITEMS} (id, name) VALUES (2003, 'never')"
            )
        ),
        rows(await conn.fetch(f"SELECT count(*) FROM {ITEMS} WHERE id IN (2002, 2003)")),
    ]


@step("multi_statement_with_transaction")
async def _():
    return [
        await conn.execute(
            f"BEGIN; INSERT INTO {ITEMS} (id, name) VALUES (2010, 'in block'); COMMIT; "
            f"BEGIN; INSERT INTO {ITEMS} (id, name) VALUES (2011, 'rolled'); ROLLBACK; "
            f"SELECT id FROM {ITEMS} WHERE id IN (2010, 2011)"
        ),
        rows(await conn.fetch(f"SELECT id FROM {ITEMS} WHERE id IN (2010, 2011)")),
        status(conn),
    ]


async def copy_out(query, **opts):
    data = bytearray()

    async def write(chunk):
        data.extend(chunk)

    tag = await conn.copy_from_query(query, output=write, **opts)
    return {"tag": tag, "data": norm(bytes(data))}


async def copy_table():
    return fetched(await conn.fetch(f"SELECT id, name, amount, data FROM {COPYT} ORDER BY id, name"))


async def chunks(parts, fail_after=None):
    for i, p in enumerate(parts):
        if fail_after is not None and i == fail_after:
            raise ClientAbort("client gives up")
        yield p


class ClientAbort(Exception):
    pass


@step("copy_in_text")
async def _():
    return [
        await conn.copy_to_table(
            COPYT,
            columns=["id", "name", "amount", "data"],
            source=chunks([b"1\tone\t1.50\t\\\\x0001\n2\ttab\\there\t\\N\t\\N\n", "3\tZürich \\\\ 東京\t-3\t\\\\xff\n".encode()]),
        ),
        await copy_table(),
    ]


@step("copy_in_csv")
async def _():
    return [
        await conn.copy_to_table(
            COPYT,
            columns=["id", "name", "amount"],
            format="csv",
            header=True,
            source=io.BytesIO(b'id,name,amount\n10,"comma, quote "" and\nnewline",10.10\n11,,\n12,"",12\n'),
        ),
        await copy_table(),
    ]


@step("copy_in_binary_records")
async def _():
    return [
        await conn.copy_records_to_table(
            COPYT,
            columns=["id", "name", "amount", "data"],
            records=[(20, "binary ✓", Decimal("20.20"), b"\x00\x01\x02"), (21, None, None, None)],
        ),
        await copy_table(),
    ]


@step("copy_out_text")
async def _():
    return await copy_out(f"SELECT id, name, amount, data FROM {COPYT} ORDER BY id, name")


@step("copy_out_csv")
async def _():
    return await copy_out(f"SELECT id, name, amount FROM {COPYT} ORDER BY id, name", format="csv", header=True)


@step("copy_out_binary")
async def _():
    return await copy_out(f"SELECT id, name, amount, data FROM {COPYT} ORDER BY id, name", format="binary")


@step("copy_in_transaction")
async def _():
    out = []
    tr = conn.transaction()
    await tr.start()
    try:
        out.append(await conn.copy_to_table(COPYT, columns=["id", "name"], source=io.BytesIO(b"30\tin txn\n31\tin txn\n")))
        out.append(await copy_out(f"SELECT id, name FROM {COPYT} WHERE id >= 30 ORDER BY id", format="csv"))
        out.append(rows(await conn.fetch(f"SELECT count(*) FROM {COPYT} WHERE id >= $1", 30)))
    finally:
        await tr.rollback()
    out.append(rows(await conn.fetch(f"SELECT count(*) FROM {COPYT} WHERE id >= $1", 30)))
    async with conn.transaction():
        out.append(await conn.copy_records_to_table(COPYT, columns=["id", "name"], records=[(32, "committed")]))
    out.append(rows(await conn.fetch(f"SELECT count(*) FROM {COPYT} WHERE id >= $1", 30)))
    return out


@step("copy_bad_row")
async def _():
    return [
        await attempt(
            conn.copy_to_table(COPYT, columns=["id", "name"], source=chunks([b"40\tgood\n41\tgood\n", b"x42\tbad\n43\tgood\n"]))
        ),
        status(conn),
        rows(await conn.fetch(f"SELECT count(*) FROM {COPYT} WHERE id >= $1", 40)),
        await alive(),
    ]


@step("copy_bad_row_in_transaction")
async def _():
    out = [await conn.execute("BEGIN")]
    out.append(await conn.execute(f"INSERT INTO {COPYT} (id, name) VALUES ($1, $2)", 50, "before copy"))
    out.append(await attempt(conn.copy_to_table(COPYT, columns=["id", "name"], format="csv", source=io.BytesIO(b"51,ok\n52,ok,extra\n"))))
    out.append(status(conn))
    out.append(await attempt(conn.fetch("SELECT 1")))
    out.append(await conn.execute("ROLLBACK"))
    out.append(rows(await conn.fetch(f"SELECT count(*) FROM {COPYT} WHERE id >= $1", 50)))
    return out


@step("copy_aborted_by_client")
async def _():
    out = []
    try:
        await conn.copy_to_table(COPYT, columns=["id", "name"], source=chunks([b"60\tsent\n61\tsent\n", b"62\tnot sent\n"], fail_after=1))
    except ClientAbort as e:
        out.append({"raised": str(e)})
    except asyncpg.PostgresError as e:
        out.append({"error": error(e)})
    out.append(status(conn))
    out.append(rows(await conn.fetch(f"SELECT count(*) FROM {COPYT} WHERE id >= $1", 60)))
    out.append(await alive())
    return out


@step("copy_aborted_by_client_in_transaction")
async def _():
    out = []
    try:
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {COPYT} (id, name) VALUES ($1, $2)", 63, "before copy")
            await conn.copy_to_table(COPYT, columns=["id", "name"], source=chunks([b"64\tsent\n", b"65\tnot sent\n"], fail_after=1))
    except ClientAbort as e:
        out.append({"raised": str(e)})
    except asyncpg.PostgresError as e:
        out.append({"error": error(e)})
    out.append(status(conn))
    out.append(rows(await conn.fetch(f"SELECT count(*) FROM {COPYT} WHERE id >= $1", 60)))
    out.append(await alive())
    return out


@step("copy_out_error")
async def _():
    return [
        await attempt(copy_out("SELECT 1 / (3 - g) FROM generate_series(1, 5) g")),
        await alive(),
    ]


@step("copy_many_rows")
async def _():
    lines = "".join(f"{i}\tline {i}\n" for i in range(1000, 11000)).encode()
    parts = [lines[i : i + 65536] for i in range(0, len(lines), 65536)]
    return [
        await conn.copy_to_table(COPYT, columns=["id", "name"], source=chunks(parts)),
        await copy_out(f"SELECT id, name FROM {COPYT} WHERE id >= 1000 ORDER BY id"),
        await conn.copy_records_to_table(MANY, columns=["n", "label"], records=[(-i, f"rec {i}") for i in range(1, 5001)]),
    ]


def large_text():
    return "".join(chr(0x20 + (i * 7919) % 0x5F) for i in range(LARGE)) + "Zürich"


def large_bytes():
    return bytes((i * 31 + 7) % 256 for i in range(LARGE))


@step("large_values")
async def _():
    text, data = large_text(), large_bytes()
    return [
        fetched(await conn.fetch("SELECT $1::text AS t, length($1::text) AS n", text)),
        await conn.execute(f"INSERT INTO {BIG} (id, body, data) VALUES ($1, $2, $3)", 1, text, data),
        fetched(await conn.fetch(f"SELECT body, data, md5(data) FROM {BIG} WHERE id = $1", 1)),
        await conn.execute(f"SELECT length(body), md5(body) FROM {BIG}"),
        await copy_out(f"SELECT body, data FROM {BIG}"),
    ]


@step("many_rows")
async def _():
    out = [await conn.execute(f"INSERT INTO {MANY} (n, label) SELECT g, 'label ' || g FROM unnest($1::int[]) g", list(range(10000)))]
    recs = await conn.fetch(f"SELECT n, label FROM {MANY} WHERE n >= 0 ORDER BY n")
    out.append({"count": len(recs), "sha256": digest(json.dumps(rows(recs)).encode())})
    recs = await conn.fetch("SELECT g, md5(g::text) FROM generate_series(1, 10000) g")
    out.append({"count": len(recs), "sha256": digest(json.dumps(rows(recs)).encode())})
    return out


@step("server_side_cursor")
async def _():
    out = []
    async with conn.transaction():
        seen = []
        async for r in conn.cursor(f"SELECT n, label FROM {MANY} WHERE n >= 0 AND n < $1 ORDER BY n", 5000, prefetch=333):
            seen.append(norm(list(r.values())))
        out.append({"iterated": len(seen), "sha256": digest(json.dumps(seen).encode())})
        cur = await conn.cursor(f"SELECT n FROM {MANY} WHERE n >= 0 AND n < 100 ORDER BY n")
        out.append({"fetch": rows(await cur.fetch(3))})
        out.append({"forward": await cur.forward(40)})
        out.append({"fetchrow": norm(await cur.fetchrow())})
        out.append({"fetch rest": len(await cur.fetch(1000))})
    try:
        await conn.cursor("SELECT 1")
    except asyncpg.InterfaceError as e:
        out.append({"outside transaction": str(e)})
    out.append(await conn.execute("BEGIN; DECLARE c1 CURSOR FOR SELECT g FROM generate_series(1, 10) g"))
    out.append(rows(await conn.fetch("FETCH 3 FROM c1")))
    out.append(await conn.execute("MOVE 2 IN c1"))
    out.append(rows(await conn.fetch("FETCH NEXT FROM c1")))
    out.append(await attempt(conn.execute("FETCH FROM no_such_cursor")))
    out.append(await conn.execute("ROLLBACK"))
    return out


@step("final_state")
async def _():
    return [
        rows(await conn.fetch(f"SELECT count(*), sum(id), sum(amount), md5(string_agg(name, ',' ORDER BY id)) FROM {ITEMS}")),
        rows(await conn.fetch(f"SELECT count(*), sum(id), md5(string_agg(coalesce(name, '-'), ',' ORDER BY id, name)) FROM {COPYT}")),
        rows(await conn.fetch(f"SELECT count(*), sum(n) FROM {MANY}")),
        status(conn),
    ]


@step("teardown")
async def _():
    return await conn.execute(
        f"DROP TABLE {ITEMS}, {COPYT}, {BIG}, {MANY}; DROP FUNCTION {PREFIX}noisy(int); "
        f"DROP TYPE {PREFIX}mood, {PREFIX}pair"
    )


async def main():
    global conn
    conn = await asyncpg.connect(URL, timeout=10)
    conn.add_log_listener(on_log)
    emit({"step": "driver", "out": {"driver": "asyncpg", "version": asyncpg.__version__.split(".")[0]}})
    for name, fn in STEPS:
        await run_step(name, fn)
    await conn.close()
    emit({"step": "end"})


asyncio.run(main())
