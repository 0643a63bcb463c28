#!/usr/bin/env python3
"""Fidelity checks of psycopg 3 through pgtenant (run by tests/fidelity.rs).

The libpq connection string comes in the environment variable PGTENANT_CONNINFO (or as the first argument).
Every check runs, each failure is printed, and the exit status is non-zero if any check failed, so one run
shows everything that is wrong. Needs psycopg 3.2 or later: pip install "psycopg[binary]".
"""

import math
import os
import struct
import sys
import threading
import time
import traceback
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

try:
    import psycopg
    from psycopg import pq
    from psycopg.types.json import Jsonb
except ImportError as e:  # the Rust side checks this first; keep the message here too
    print(f'psycopg 3 is not importable ({e}): pip install "psycopg[binary]"', file=sys.stderr)
    sys.exit(2)

CONNINFO = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PGTENANT_CONNINFO", "")
if not CONNINFO:
    print("no connection string: set PGTENANT_CONNINFO", file=sys.stderr)
    sys.exit(2)

FAILURES = []


def fail(what):
    FAILURES.append(what)
    print(f"FAIL: {what}", flush=True)


def expect(cond, what):
    if not cond:
        fail(what)
    return cond


def expect_equal(label, got, want):
    if got != want or type(got) is not type(want) and not _same_number(got, want):
        fail(f"{label}: got {got!r} ({type(got).__name__}), want {want!r} ({type(want).__name__})")
        return False
    return True


def _same_number(got, want):
    # psycopg loads an integer too large for int8 back as Decimal; equal values are fine.
    return isinstance(got, (int, Decimal)) and isinstance(want, (int, Decimal)) and got == want


def connect(**kwargs):
    return psycopg.connect(CONNINFO, autocommit=True, connect_timeout=10, **kwargs)


def section(name):
    def wrap(fn):
        def run():
            before = len(FAILURES)
            try:
                fn()
            except Exception:  # an unexpected exception is a failure of that check, not of the run
                fail(f"{name}: unexpected exception\n{traceback.format_exc()}")
            status = "ok" if len(FAILURES) == before else "FAILED"
            print(f"{status}: {name}", flush=True)

        run.__name__ = name
        SECTIONS.append(run)
        return fn

    return wrap


SECTIONS = []
TZ_PLUS_0530 = timezone(timedelta(hours=5, minutes=30))


@section("startup parameters and ParameterStatus")
def startup_parameters():
    with connect(application_name="fidelity-psycopg") as conn:
        info = conn.info
        expect_equal("ParameterStatus application_name", info.parameter_status("application_name"), "fidelity-psycopg")
        expect_equal("SHOW application_name", conn.execute("SHOW application_name").fetchone()[0], "fidelity-psycopg")
        expect_equal("client_encoding", info.parameter_status("client_encoding"), "UTF8")
        expect_equal("server_encoding", info.parameter_status("server_encoding"), "UTF8")
        expect(info.parameter_status("server_version") is not None, "server_version reported")
        # A SET that changes a GUC_REPORT setting produces a ParameterStatus, which must reach the client.
        conn.execute("SET TimeZone TO 'Asia/Kolkata'")
        expect_equal("ParameterStatus TimeZone after SET", info.parameter_status("TimeZone"), "Asia/Kolkata")
        expect_equal("psycopg's view of the time zone", str(info.timezone), "Asia/Kolkata")
        real_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        # Informational: the BackendKeyData pid is pgtenant's own key, not the server process id.
        print(f"info: BackendKeyData pid {info.backend_pid}, pg_backend_pid() {real_pid}", flush=True)


@section("parameterised queries")
def parameterised_queries():
    cases = [
        ("int", 42),
        ("negative int", -7),
        ("int8", 2**62),
        ("beyond int8", 10**30),
        ("bool", True),
        ("float", 0.1),
        ("text", "Zürich 東京 'single' \"double\" back\\slash, comma; 🙂"),
        ("empty text", ""),
        ("none", None),
        ("bytes", bytes(range(256)) * 4),
        ("decimal", Decimal("12345678901234567890.000000000123")),
        ("negative decimal", Decimal("-0.5")),
        ("date", date(1999, 12, 31)),
        ("datetime with tz", datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=TZ_PLUS_0530)),
        ("uuid", uuid.UUID("4a7d1ed4-14c3-4b1e-9e43-2f0c7b1f6f0e")),
        ("int list", [1, 2, None, 4]),
        ("text list", ["a", "b,c", 'd"e', "{}", None, "東京"]),
        ("nested list", [[1, 2], [3, 4]]),
    ]
    doc = {"a": [1, "ü", None, True], "b": {"c": 1.5, "d": "東京"}, "e": ""}
    with connect() as conn:
        for binary in (False, True):
            for prepare in (False, True):
                mode = f"binary={binary}, prepare={prepare}"
                with conn.cursor(binary=binary) as cur:
                    for label, value in cases:
                        # psycopg sends a list of str as an untyped literal: say it is text[].
                        cast = "::text[]" if label == "text list" else ""
                        cur.execute(f"SELECT %s{cast}", (value,), prepare=prepare)
                        expect_equal(f"SELECT %s of {label} ({mode})", cur.fetchone()[0], value)
                    cur.execute("SELECT %s::jsonb", (Jsonb(doc),), prepare=prepare)
                    expect_equal(f"jsonb ({mode})", cur.fetchone()[0], doc)
                    cur.execute(
                        "SELECT %(a)s::int + %(b)s::int, %(s)s || '!'", {"a": 40, "b": 2, "s": "named"}, prepare=prepare
                    )
                    expect_equal(f"named parameters ({mode})", cur.fetchone(), (42, "named!"))

        # The tenant's own tables (from the tenant migrations) through parameters.
        with conn.transaction():
            emp_id = conn.execute(
                "INSERT INTO employees (email, full_name, role) VALUES (%s, %s, %s) RETURNING id",
                ("müller@example.com", "Jürgen Müller-東京", "doctor"),
            ).fetchone()[0]
            doc_id = conn.execute(
                "INSERT INTO doctors (employee_id, full_name, specialty, license_no) VALUES (%s, %s, %s, %s) RETURNING id",
                (emp_id, "Dr. Jürgen Müller", None, "LIC-" + uuid.uuid4().hex[:8]),
            ).fetchone()[0]
            pat_id = conn.execute(
                "INSERT INTO patients (full_name, date_of_birth, email, doctor_id) VALUES (%s, %s, %s, %s) RETURNING id",
                ("O'Brien, \"Pat\"", date(1980, 2, 29), None, doc_id),
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO orders (patient_id, description, amount, status) VALUES (%s, %s, %s, %s)",
                (pat_id, "Röntgen; 2 × views", Decimal("1234.50"), "paid"),
            )
        row = conn.execute(
            "SELECT p.full_name, p.date_of_birth, p.email, d.specialty, o.description, o.amount, o.status "
            "FROM orders o JOIN patients p ON p.id = o.patient_id JOIN doctors d ON d.id = p.doctor_id "
            "WHERE p.id = %s",
            (pat_id,),
        ).fetchone()
        expect_equal(
            "tenant tables round trip",
            row,
            ("O'Brien, \"Pat\"", date(1980, 2, 29), None, None, "Röntgen; 2 × views", Decimal("1234.50"), "paid"),
        )

        # executemany runs in pipeline mode on libpq >= 14: many Parse/Bind/Execute before one Sync.
        conn.execute("CREATE TABLE fidelity_py_many (n int PRIMARY KEY, label text)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO fidelity_py_many (n, label) VALUES (%s, %s)",
                [(i, f"row {i} ü") for i in range(500)],
            )
        expect_equal(
            "executemany rows",
            conn.execute("SELECT count(*), sum(n), max(label) FROM fidelity_py_many").fetchone(),
            (500, sum(range(500)), "row 99 ü"),
        )
        # An explicit pipeline with an error in the middle: the error surfaces, later work is skipped, and the
        # connection stays usable.
        try:
            with conn.pipeline():
                conn.execute("INSERT INTO fidelity_py_many (n, label) VALUES (1000, 'before error')")
                conn.execute("SELECT 1 / 0")
                conn.execute("INSERT INTO fidelity_py_many (n, label) VALUES (1001, 'after error')")
            fail("pipeline with a division by zero raised nothing")
        except psycopg.errors.DivisionByZero:
            pass
        present = {r[0] for r in conn.execute("SELECT n FROM fidelity_py_many WHERE n >= 1000")}
        # Until the Sync, the pipeline is one implicit transaction: the error rolls back the first insert too.
        expect_equal("rows after the failed pipeline", present, set())
        expect_equal("usable after the failed pipeline", conn.execute("SELECT 'ok'").fetchone()[0], "ok")


def float_bits(x):
    return struct.pack(">d", x)


@section("binary format results round-trip exactly")
def binary_round_trip():
    utc = timezone.utc
    cases = {
        "int8": [-(2**63), 2**63 - 1, 0, -1],
        "numeric": [
            Decimal("98765432109876543210.0123456789"),
            Decimal("-0.000000000000000000000000001"),
            Decimal("0"),
            Decimal("1000000000000000000000000000000.000"),
            Decimal("NaN"),
        ],
        "bytea": [bytes(range(256)) * 64, b"", b"\x00", b"\\x00"],
        "timestamptz": [
            datetime(2000, 1, 1, tzinfo=utc),
            datetime(1969, 7, 20, 20, 17, 40, 123456, tzinfo=utc),
            datetime(1900, 1, 1, 0, 0, 0, 1, tzinfo=TZ_PLUS_0530),
            datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=utc),
        ],
        "float8": [0.1, -0.0, 1e308, 5e-324, 2.0**-1074, 1 / 3, math.inf, -math.inf, math.nan],
    }
    with connect() as conn:
        conn.execute("SET TimeZone TO 'UTC'")
        with conn.cursor(binary=True) as cur:
            for typ, values in cases.items():
                for value in values:
                    label = f"binary {typ} {value!r:.60}"
                    cur.execute(f"SELECT %b::{typ}", (value,))
                    expect_equal(f"{label}: result format", cur.pgresult.fformat(0), 1)
                    got = cur.fetchone()[0]
                    if typ == "float8":
                        if math.isnan(value):
                            expect(isinstance(got, float) and math.isnan(got), f"{label}: got {got!r}")
                        else:
                            expect_equal(f"{label} (bits)", float_bits(got), float_bits(value))
                    elif typ == "numeric" and value.is_nan():
                        expect(isinstance(got, Decimal) and got.is_nan(), f"{label}: got {got!r}")
                    elif typ == "numeric":
                        expect_equal(label, got, value)
                        expect_equal(f"{label} (digits and scale)", got.as_tuple(), value.as_tuple())
                    else:
                        expect_equal(label, got, value)
            # All five types in one binary row, from a table.
            conn.execute(
                "CREATE TABLE fidelity_py_binary (i int8, n numeric, b bytea, t timestamptz, f float8)"
            )
            row = (2**63 - 1, Decimal("3.14159265358979323846264338327950288"), bytes(range(256)),
                   datetime(2024, 2, 29, 12, 0, 0, 500, tzinfo=utc), 2.0**0.5)
            cur.execute("INSERT INTO fidelity_py_binary VALUES (%b, %b, %b, %b, %b)", row)
            cur.execute("SELECT i, n, b, t, f FROM fidelity_py_binary")
            expect_equal("binary row formats", [cur.pgresult.fformat(i) for i in range(5)], [1] * 5)
            got = cur.fetchone()
            expect_equal("binary row", got, row)


@section("transaction rolled back by an exception")
def transactions():
    class Boom(Exception):
        pass

    with connect() as conn:
        conn.execute("CREATE TABLE fidelity_py_tx (id int PRIMARY KEY, note text)")
        try:
            with conn.transaction():
                conn.execute("INSERT INTO fidelity_py_tx VALUES (1, 'rolled back')")
                expect_equal("status inside the block", conn.info.transaction_status, pq.TransactionStatus.INTRANS)
                raise Boom()
        except Boom:
            pass
        expect_equal("status after rollback", conn.info.transaction_status, pq.TransactionStatus.IDLE)
        expect_equal("row 1 gone", conn.execute("SELECT count(*) FROM fidelity_py_tx WHERE id = 1").fetchone()[0], 0)

        with conn.transaction():
            conn.execute("INSERT INTO fidelity_py_tx VALUES (2, 'committed')")
        with conn.transaction():
            conn.execute("INSERT INTO fidelity_py_tx VALUES (3, 'outer')")
            with conn.transaction():
                conn.execute("INSERT INTO fidelity_py_tx VALUES (4, 'savepoint rolled back')")
                raise psycopg.Rollback()
        try:
            with conn.transaction():
                conn.execute("INSERT INTO fidelity_py_tx VALUES (5, 'error')")
                try:
                    conn.execute("SELECT 1 / 0")
                finally:
                    expect_equal("status after an error in a transaction", conn.info.transaction_status,
                                 pq.TransactionStatus.INERROR)
            fail("division by zero raised nothing")
        except psycopg.errors.DivisionByZero as e:
            expect_equal("SQLSTATE of division by zero", e.sqlstate, "22012")
            expect_equal("message", e.diag.message_primary, "division by zero")
        ids = [r[0] for r in conn.execute("SELECT id FROM fidelity_py_tx ORDER BY id")]
        expect_equal("rows that survived", ids, [2, 3])


def wait_until_running(watcher, pid, needle, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = watcher.execute("SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row and row[0] == "active" and needle in (row[1] or ""):
            return True
        time.sleep(0.05)
    return False


@section("cancel a running query from another thread")
def cancel():
    with connect() as conn, connect() as watcher:
        methods = [("cancel", conn.cancel)]
        if hasattr(conn, "cancel_safe"):
            methods.append(("cancel_safe", conn.cancel_safe))
        for name, method in methods:
            real_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            errors = []

            def canceller():
                try:
                    if not wait_until_running(watcher, real_pid, "pg_sleep(30)"):
                        errors.append("pg_sleep(30) never showed as active in pg_stat_activity")
                    method()
                except Exception:
                    errors.append(traceback.format_exc())

            thread = threading.Thread(target=canceller)
            thread.start()
            started = time.monotonic()
            try:
                conn.execute("SELECT pg_sleep(30)")
                fail(f"{name}: pg_sleep(30) finished without being cancelled")
            except psycopg.errors.QueryCanceled as e:
                elapsed = time.monotonic() - started
                expect(elapsed < 10, f"{name}: cancel took {elapsed:.1f}s")
                expect_equal(f"{name}: SQLSTATE", e.sqlstate, "57014")
            thread.join(15)
            for err in errors:
                fail(f"{name}: canceller: {err}")
            expect_equal(f"{name}: status after cancel", conn.info.transaction_status, pq.TransactionStatus.IDLE)
            expect_equal(f"{name}: usable after cancel", conn.execute("SELECT 41 + 1").fetchone()[0], 42)


@section("server notices reach the notice handler")
def notices():
    with connect() as conn:
        got = []
        conn.add_notice_handler(lambda d: got.append((d.severity, d.sqlstate, d.message_primary)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'fidelity notice %', 'Zürich 東京'; RAISE WARNING 'careful: %', 42; END $$")
        expect_equal(
            "notices",
            got,
            [("NOTICE", "00000", "fidelity notice Zürich 東京"), ("WARNING", "01000", "careful: 42")],
        )
        expect_equal("usable after notices", conn.execute("SELECT 1").fetchone()[0], 1)


@section("LISTEN/NOTIFY between two connections")
def listen_notify():
    channel = "fidelity_" + uuid.uuid4().hex[:12]
    with connect() as listener, connect() as notifier:
        listener.execute(f"LISTEN {channel}")
        notifier_pid = notifier.execute("SELECT pg_backend_pid()").fetchone()[0]
        notifier.execute("SELECT pg_notify(%s, %s)", (channel, "payload Zürich 東京"))
        notifier.execute(f"NOTIFY {channel}, 'second'")
        with notifier.transaction():
            notifier.execute(f"NOTIFY {channel}, 'in a transaction'")
        # The listener is idle: the notifications arrive unsolicited, between queries.
        started = time.monotonic()
        got = list(listener.notifies(timeout=5, stop_after=3))
        expect(time.monotonic() - started < 5, "notifications took the whole timeout")
        expect_equal("notifications", [(n.channel, n.payload) for n in got],
                     [(channel, "payload Zürich 東京"), (channel, "second"), (channel, "in a transaction")])
        expect_equal("notifier pids", {n.pid for n in got}, {notifier_pid})
        # A notification sent in a rolled-back transaction is never delivered.
        try:
            with notifier.transaction():
                notifier.execute(f"NOTIFY {channel}, 'rolled back'")
                raise psycopg.Rollback()
        except psycopg.Rollback:
            pass
        notifier.execute(f"NOTIFY {channel}, 'last'")
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
        expect_equal("after the rolled-back NOTIFY", got, ["last"])
        expect_equal("listener usable", listener.execute("SELECT 'still here'").fetchone()[0], "still here")


@section("libpq asking for protocol 3.2 is downgraded to 3.0")
def protocol_negotiation():
    # libpq 18 can ask for protocol 3.2 (max_protocol_version); a PostgreSQL 15 server answers with
    # NegotiateProtocolVersion offering 3.0, and libpq goes on with 3.0. Older libpq lacks the option.
    if pq.version() < 180000:
        print(f"skipped: libpq {pq.version()} predates max_protocol_version", flush=True)
        return
    with connect(max_protocol_version="3.2") as conn:
        expect_equal("negotiated protocol", conn.info.pgconn.protocol_version, 3)
        expect_equal("query after negotiation", conn.execute("SELECT 6 * 7").fetchone()[0], 42)


def main():
    print(f"psycopg {psycopg.__version__}, libpq {pq.version()}, implementation {pq.__impl__}", flush=True)
    for run in SECTIONS:
        run()
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed:", file=sys.stderr)
        for f in FAILURES:
            print(f"  - {f}", file=sys.stderr)
        sys.exit(1)
    print("all psycopg checks passed", flush=True)


if __name__ == "__main__":
    main()
