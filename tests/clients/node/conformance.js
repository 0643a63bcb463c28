#!/usr/bin/env node
// Driver conformance script for node-postgres (run by tests/conformance.rs).
//
// Usage: node conformance.js URL PREFIX
//
// URL is a postgres:// URI; PREFIX (e.g. "cf_1a2b3c4d_") starts the name of every table the script creates,
// so several copies can run at once against the same schema. The script runs a fixed list of protocol
// features and prints one JSON object per step on stdout: what the driver observed (rows, command tags, row
// counts, errors with SQLSTATE, notices, COPY bytes). PREFIX is replaced by "t_" in the output, and nothing
// that legitimately differs between targets (backend pid, now(), role or schema names) is printed, so the
// transcript of a run directly against PostgreSQL and through pgtenant must be identical.
//
// node-postgres uses the simple query protocol for a query without values, the extended protocol (unnamed
// statement, text formats) with values, and a named statement prepared once per connection with `name:`; a
// second connection made with `binary: true` asks for binary results. COPY goes through pg-copy-streams, cursors (a portal read in batches) through
// pg-cursor. A step that fails records the error and the script goes on: the exit status is 0 unless the
// script itself is broken; the last line is {"step":"end"}.

'use strict';

const crypto = require('crypto');
const { Client } = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');
const Cursor = require('pg-cursor');

if (process.argv.length !== 4) {
  process.stderr.write('usage: node conformance.js URL PREFIX\n');
  process.exit(2);
}
const URL = process.argv[2];
const PREFIX = process.argv[3];

const ITEMS = `${PREFIX}items`;
const COPYT = `${PREFIX}copy`;
const BIG = `${PREFIX}big`;
const MANY = `${PREFIX}many`;
const LARGE = 4 * 1024 * 1024;

// ------------------------------------------------------------------------------------------------------------
// Normalised output
// ------------------------------------------------------------------------------------------------------------

function digest(b) {
  return crypto.createHash('sha256').update(b).digest('hex');
}

function norm(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === 'boolean') return v;
  if (typeof v === 'number') return { number: String(v) };
  if (typeof v === 'bigint') return { bigint: String(v) };
  if (typeof v === 'string') {
    if (v.length > 300) return { text_len: v.length, sha256: digest(Buffer.from(v, 'utf8')) };
    return v;
  }
  if (Buffer.isBuffer(v)) {
    if (v.length > 300) return { bytes_len: v.length, sha256: digest(v) };
    return { bytes: v.toString('hex') };
  }
  if (v instanceof Date) return { date: isNaN(v) ? 'invalid' : v.toISOString() };
  if (Array.isArray(v)) return v.map(norm);
  if (typeof v === 'object') {
    const out = {};
    for (const k of Object.keys(v).sort()) out[k] = norm(v[k]);
    return { object: out };
  }
  return { [typeof v]: String(v) };
}

function result(r) {
  const out = { command: r.command, rowCount: r.rowCount };
  if (r.fields && r.fields.length) {
    // Type OIDs of built-in types only: types the script creates get other OIDs on every target.
    out.columns = r.fields.map((f) => [f.name, f.dataTypeID < 16384 ? f.dataTypeID : 'created type', f.format]);
    out.rows = r.rows.map((row) => (Array.isArray(row) ? row.map(norm) : norm(row)));
  }
  return out;
}

function results(r) {
  return Array.isArray(r) ? r.map(result) : [result(r)];
}

function error(e) {
  if (e && e.code !== undefined && e.severity !== undefined) {
    return {
      sqlstate: e.code,
      severity: e.severity,
      message: e.message,
      detail: e.detail === undefined ? null : e.detail,
      hint: e.hint === undefined ? null : e.hint,
      context: e.where === undefined ? null : e.where,
    };
  }
  return { exception: `${e && e.name}: ${e && e.message}` };
}

const NOTICES = [];

function emit(record) {
  const line = JSON.stringify(sortKeys(record));
  process.stdout.write(line.split(PREFIX).join('t_') + '\n');
}

function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') {
    const out = {};
    for (const k of Object.keys(v).sort()) out[k] = sortKeys(v[k]);
    return out;
  }
  return v;
}

const STEPS = [];
function step(name, fn) {
  STEPS.push([name, fn]);
}

async function attempt(promise) {
  try {
    return { ok: await promise };
  } catch (e) {
    return { error: error(e) };
  }
}

// ------------------------------------------------------------------------------------------------------------
// The steps
// ------------------------------------------------------------------------------------------------------------

let client;

// Binary results come from a second connection made with `binary: true`. node-postgres decodes every value of
// a DataRow as UTF-8 text, binary ones too (lossy for non-text types): they are compared as the driver gives
// them; the text-format steps are the exact check of values.
let binaryClient;
const RAW = { getTypeParser: () => (v) => v };

async function q(text, values) {
  const config = { text, rowMode: 'array' };
  if (values !== undefined) config.values = values;
  return results(await client.query(config));
}

async function qb(text, values) {
  return results(await binaryClient.query({ text, values, rowMode: 'array', types: RAW }));
}

async function alive() {
  return (await client.query({ text: 'SELECT 1 AS alive', rowMode: 'array' })).rows;
}

async function count(sql, values) {
  return (await client.query({ text: sql, values, rowMode: 'array' })).rows;
}

step('setup', () =>
  q(`
    DROP TABLE IF EXISTS ${ITEMS}, ${COPYT}, ${BIG}, ${MANY};
    CREATE TABLE ${ITEMS} (
        id int PRIMARY KEY, name text NOT NULL, amount numeric(12, 2), at timestamptz, doc jsonb,
        data bytea, tags text[]);
    CREATE TABLE ${COPYT} (id int, name text, amount numeric(12, 2), data bytea);
    CREATE TABLE ${BIG} (id int PRIMARY KEY, body text, data bytea);
    CREATE TABLE ${MANY} (n int PRIMARY KEY, label text);
    CREATE TYPE ${PREFIX}mood AS ENUM ('sad', 'ok', 'happy');
    CREATE TYPE ${PREFIX}pair AS (a int, b text);
    CREATE FUNCTION ${PREFIX}noisy(n int) RETURNS int LANGUAGE plpgsql AS $$
    BEGIN
        RAISE NOTICE 'noisy %', n USING DETAIL = 'detail of ' || n, HINT = 'a hint';
        RETURN n * 2;
    END $$;
  `));

const SIMPLE_SELECT =
  "SELECT 1 AS int, 'text'::text AS text, NULL::int AS null, 2.50::numeric(4,2) AS numeric, " +
  "true AS bool, '\\x00ff'::bytea AS bytea, ARRAY[1,2,NULL] AS arr, '{\"a\": [1, null]}'::jsonb AS jsonb, " +
  "'2024-02-29 23:59:59.123456+00'::timestamptz AS tstz, '1 day 02:03:04'::interval AS ival, " +
  '1.5::float8 AS float8, 9007199254740993::int8 AS int8';

step('simple_select', () => q(SIMPLE_SELECT));
step('simple_select_object_rows', async () => results(await client.query(SIMPLE_SELECT)));

const PARAMS = [
  42,
  'Zürich 東京 \'single\' "double" \\ 🙂',
  Buffer.from([0, 1, 0xfe, 0xff, 0, 1, 0xfe, 0xff]),
  '-12345678901234567890.0123456789',
  '2024-02-29 23:59:59.123456+00',
  { k: [1, 'two', null, { n: 3.5 }] },
  [1, null, -3],
  ['a', 'b,c', '{}', '"q"', null],
  null,
  '',
  new Date(Date.UTC(2024, 1, 29, 12, 0, 0, 5)),
];
const PARAM_SQL =
  'SELECT $1::int AS i, $2::text AS t, $3::bytea AS b, $4::numeric AS n, $5::timestamptz AS ts, ' +
  '$6::json AS j, $7::int[] AS ia, $8::text[] AS ta, $9::text AS nul, $10::text AS empty, ' +
  '$11::timestamptz AS date_param';

step('params_text_results', () => q(PARAM_SQL, PARAMS));
step('params_binary_results', () => qb(PARAM_SQL, PARAMS));

step('insert_tags', async () => {
  const out = [];
  for (let i = 1; i <= 5; i++) {
    out.push(
      ...(await q(`INSERT INTO ${ITEMS} (id, name, amount, at, doc, data, tags) VALUES ($1, $2, $3, $4, $5, $6, $7)`, [
        i,
        `item ${i}`,
        (i * 1.25).toFixed(2),
        `2024-01-0${i} 12:00:00+00`,
        JSON.stringify({ i }),
        Buffer.alloc(i, i),
        [`t${i}`, null],
      ])),
    );
  }
  out.push(...(await q(`INSERT INTO ${ITEMS} (id, name) VALUES ($1, $2) RETURNING id, name`, [6, 'six'])));
  return out;
});

step('many_inserts_named', async () => {
  // node-postgres has no executemany: one named statement, prepared once, executed 200 times.
  let rows = 0;
  for (let i = 0; i < 200; i++) {
    const r = await client.query({
      name: 'conformance-insert',
      text: `INSERT INTO ${ITEMS} (id, name, amount) VALUES ($1, $2, $3)`,
      values: [100 + i, `bulk ${i}`, String(i)],
    });
    rows += r.rowCount;
  }
  return { rows, count: await count(`SELECT count(*) FROM ${ITEMS}`) };
});

step('update_delete_select_tags', async () => [
  await q(`UPDATE ${ITEMS} SET amount = amount + 1 WHERE id >= $1`, [100]),
  await q(`DELETE FROM ${ITEMS} WHERE id >= $1 AND id < $2`, [250, 300]),
  await q(`SELECT id, name, amount FROM ${ITEMS} WHERE id < $1 ORDER BY id`, [10]),
  await q(`UPDATE ${ITEMS} SET name = name WHERE false`),
  await q(`UPDATE ${ITEMS} SET name = name WHERE id = 1; DELETE FROM ${ITEMS} WHERE id = -1`),
]);

step('prepared_reused', async () => {
  let total = 0;
  const seen = [];
  for (let i = 0; i < 300; i++) {
    const r = await client.query({
      name: 'conformance-fetch',
      text: `SELECT id, amount FROM ${ITEMS} WHERE id = $1`,
      values: [100 + (i % 150)],
      rowMode: 'array',
    });
    total += r.rows[0][0];
    if (i % 50 === 0) seen.push(r.rows[0].map(norm));
    const d = await client.query({ name: 'conformance-double', text: 'SELECT $1::int * 2 AS doubled', values: [i], rowMode: 'array' });
    total += d.rows[0][0];
    // The same text unnamed (parsed every time), and in binary on the other connection.
    const u = await client.query({ text: 'SELECT $1::int * 2 AS doubled', values: [i], rowMode: 'array' });
    total += u.rows[0][0];
    const b = await binaryClient.query({ text: 'SELECT $1::int * 2 AS doubled', values: [i], rowMode: 'array', types: RAW });
    if (i % 50 === 0) seen.push(norm(b.rows[0][0]));
  }
  return { total, sample: seen };
});

step('named_statement_errors', async () => [
  await attempt(client.query({ name: 'conformance-bad', text: 'SELECT 1 / $1::int', values: [0] })),
  await attempt(client.query({ name: 'conformance-bad', text: 'SELECT 1 / $1::int', values: [1], rowMode: 'array' }).then(results)),
  await attempt(client.query({ name: 'conformance-syntax', text: 'SELEC $1', values: [1] })),
  await alive(),
]);

step('many_distinct_statements', async () => {
  // 600 named statements on one connection: more than pgtenant keeps per server connection in transaction
  // pooling (500, least recently used closed), then each used again (re-prepared where it was closed).
  let total = 0;
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 600; i++) {
      const r = await client.query({ name: `conformance-distinct-${i}`, text: `SELECT $1::int + ${i} AS v`, values: [round], rowMode: 'array' });
      total += r.rows[0][0];
    }
  }
  return { total };
});

step('enum_and_composite_types', async () => [
  await q(`SELECT $1::${PREFIX}mood AS m, ROW(1, 'x')::${PREFIX}pair AS p, ARRAY['ok', 'sad']::${PREFIX}mood[] AS ms`, ['happy']),
  await q(`SELECT ($1::${PREFIX}pair).b AS b`, ['(7,seven)']),
  await attempt(q(`SELECT $1::${PREFIX}mood`, ['furious'])),
]);

step('tracked_settings', async () => {
  const ts = "SELECT '2024-07-01 12:34:56.789+00'::timestamptz::text AS ts, '1 day 2 hours'::interval::text AS i";
  const out = [
    await q("SET TimeZone = 'America/New_York'; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'iso_8601'"),
    await q("SET application_name = 'conformance-app'"),
  ];
  for (let i = 0; i < 3; i++) {
    out.push(await q(ts + ", current_setting('application_name') AS app WHERE $1", [true]));
    out.push(await q(ts));
  }
  out.push(await q(`BEGIN; SET LOCAL TimeZone = 'Asia/Tokyo'; ${ts}; COMMIT`));
  out.push(await q(ts));
  out.push(await q("BEGIN; SET LOCAL statement_timeout = '4s'; SHOW statement_timeout; COMMIT"));
  out.push(await q('RESET TimeZone; RESET DateStyle; RESET IntervalStyle; RESET application_name'));
  out.push(await q(ts));
  return out;
});

step('txn_commit', async () => [
  await q('BEGIN'),
  await q(`INSERT INTO ${ITEMS} (id, name) VALUES ($1, $2)`, [1000, 'committed']),
  await q(`SELECT name FROM ${ITEMS} WHERE id = $1`, [1000]),
  await q('COMMIT'),
  await count(`SELECT count(*) FROM ${ITEMS} WHERE id = $1`, [1000]),
]);

step('txn_rollback', async () => [
  await q('BEGIN'),
  await q(`INSERT INTO ${ITEMS} (id, name) VALUES ($1, $2)`, [1001, 'rolled back']),
  await q('ROLLBACK'),
  await count(`SELECT count(*) FROM ${ITEMS} WHERE id = $1`, [1001]),
]);

step('savepoints', async () => [
  await q('BEGIN'),
  await q(`INSERT INTO ${ITEMS} (id, name) VALUES ($1, $2)`, [1002, 'kept']),
  await q('SAVEPOINT s1'),
  await attempt(q(`INSERT INTO ${ITEMS} (id, name) VALUES ($1, $2)`, [1002, 'dup'])),
  await q('ROLLBACK TO SAVEPOINT s1'),
  await q(`INSERT INTO ${ITEMS} (id, name) VALUES ($1, $2)`, [1003, 'after savepoint']),
  await q('RELEASE SAVEPOINT s1'),
  await q('COMMIT'),
  await q(`SELECT id, name FROM ${ITEMS} WHERE id BETWEEN $1 AND $2 ORDER BY id`, [1002, 1004]),
]);

const ERRORS = [
  ['err_unique_violation', () => q(`INSERT INTO ${ITEMS} (id, name) VALUES ($1, $2)`, [1, 'dup'])],
  ['err_division_by_zero', () => q('SELECT 1 / $1::int AS x', [0])],
  ['err_division_by_zero_simple', () => q('SELECT 1 / 0')],
  ['err_syntax', () => q('SELEC $1::int', [1])],
  ['err_syntax_simple', () => q('SELEC 1')],
  ['err_undefined_table', () => q('SELECT * FROM no_such_table_anywhere WHERE x = $1', [1])],
  ['err_undefined_table_simple', () => q('SELECT * FROM no_such_table_anywhere')],
  ['err_not_null', () => q(`INSERT INTO ${ITEMS} (id, name) VALUES ($1, NULL)`, [7])],
  ['err_bad_input', () => q('SELECT $1::int AS x', ['twelve'])],
  [
    'err_raise_exception',
    () =>
      q(
        "DO $$ BEGIN RAISE EXCEPTION 'custom % failure', 'Zürich' " +
          "USING ERRCODE = 'P0042', DETAIL = 'the detail', HINT = 'the hint'; END $$",
      ),
  ],
];
for (const [name, fn] of ERRORS) {
  step(name, fn);
  step(`${name}_then`, alive);
}

step('error_in_transaction', async () => [
  await q('BEGIN'),
  await q(`INSERT INTO ${ITEMS} (id, name) VALUES ($1, $2)`, [1020, 'lost']),
  await attempt(q('SELECT 1 / $1::int', [0])),
  await attempt(q('SELECT $1::int AS after_error', [1])),
  await attempt(q('SELECT 1')),
  await q('ROLLBACK'),
  await count(`SELECT count(*) FROM ${ITEMS} WHERE id = $1`, [1020]),
]);

step('commit_of_failed_transaction', async () => [
  await q('BEGIN'),
  await attempt(q('SELECT * FROM no_such_table_anywhere')),
  await q('COMMIT'),
  await alive(),
]);

step('notices', async () => [
  await q(
    "DO $$ BEGIN RAISE NOTICE 'notice % of %', 1, 'Zürich 東京'; RAISE WARNING 'careful: %', 42; " +
      "RAISE NOTICE 'coded' USING ERRCODE = '01P42', DETAIL = 'd', HINT = 'h'; END $$",
  ),
  await q(`SELECT ${PREFIX}noisy($1) AS v`, [21]),
  await q(`SELECT ${PREFIX}noisy(1) AS a, ${PREFIX}noisy(2) AS b`),
]);

step('notices_in_transaction', async () => [
  await q('BEGIN'),
  await q(`SELECT ${PREFIX}noisy($1) AS v`, [5]),
  await q("DO $$ BEGIN RAISE WARNING 'inside'; END $$"),
  await q('COMMIT'),
]);

step('empty_query', async () => [await attempt(q('')), await attempt(q(';')), await alive()]);

step('multi_statement_simple_query', () =>
  q(
    `SELECT 1 AS a; SELECT 'two' AS b, NULL AS c; UPDATE ${ITEMS} SET name = name WHERE id <= 3; ` +
      `INSERT INTO ${ITEMS} (id, name) VALUES (2000, 'multi'), (2001, 'multi'); ` +
      `SELECT count(*) FROM ${ITEMS} WHERE name = 'multi'`,
  ));

step('multi_statement_with_error', async () => [
  await attempt(
    q(
      `INSERT INTO ${ITEMS} (id, name) VALUES (2002, 'lost'); SELECT 1 / 0; ` +
        `INSERT INTO ${ITEMS} (id, name) VALUES (2003, 'never')`,
    ),
  ),
  await count(`SELECT count(*) FROM ${ITEMS} WHERE id IN (2002, 2003)`),
]);

step('multi_statement_with_transaction', () =>
  q(
    `BEGIN; INSERT INTO ${ITEMS} (id, name) VALUES (2010, 'in block'); COMMIT; ` +
      `BEGIN; INSERT INTO ${ITEMS} (id, name) VALUES (2011, 'rolled'); ROLLBACK; ` +
      `SELECT id FROM ${ITEMS} WHERE id IN (2010, 2011)`,
  ));

// COPY through pg-copy-streams.

function copyIn(sql, chunks, abortAfter) {
  return new Promise((resolve, reject) => {
    const stream = client.query(copyFrom(sql));
    stream.on('error', reject);
    stream.on('finish', () => resolve({ rowCount: stream.rowCount }));
    for (let i = 0; i < chunks.length; i++) {
      if (abortAfter !== undefined && i === abortAfter) {
        stream.destroy(new Error('client gives up'));
        return;
      }
      stream.write(chunks[i]);
    }
    stream.end();
  });
}

function copyOut(sql) {
  return new Promise((resolve, reject) => {
    const stream = client.query(copyTo(sql));
    const parts = [];
    stream.on('data', (c) => parts.push(c));
    stream.on('error', reject);
    stream.on('end', () => resolve({ rowCount: stream.rowCount, data: norm(Buffer.concat(parts)) }));
  });
}

function copyTable() {
  return q(`SELECT id, name, amount, data FROM ${COPYT} ORDER BY id, name`);
}

// Binary COPY rows of (int4, text, bytea): header, tuples, trailer.
function binaryCopy(rows) {
  const parts = [Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1'), Buffer.alloc(8)];
  for (const [id, name, data] of rows) {
    const tuple = [Buffer.from([0, 3])];
    const field = (b) => {
      const len = Buffer.alloc(4);
      if (b === null) {
        len.writeInt32BE(-1);
        tuple.push(len);
      } else {
        len.writeInt32BE(b.length);
        tuple.push(len, b);
      }
    };
    const idb = Buffer.alloc(4);
    idb.writeInt32BE(id);
    field(idb);
    field(name === null ? null : Buffer.from(name, 'utf8'));
    field(data);
    parts.push(...tuple);
  }
  parts.push(Buffer.from([0xff, 0xff]));
  return Buffer.concat(parts);
}

step('copy_in_text', async () => [
  await copyIn(`COPY ${COPYT} (id, name, amount, data) FROM STDIN`, [
    Buffer.from('1\tone\t1.50\t\\\\x0001\n2\ttab\\there\t\\N\t\\N\n'),
    Buffer.from('3\tZürich \\\\ 東京\t-3\t\\\\xff\n', 'utf8'),
  ]),
  await copyTable(),
]);

step('copy_in_csv', async () => [
  await copyIn(`COPY ${COPYT} (id, name, amount) FROM STDIN (FORMAT csv, HEADER true)`, [
    Buffer.from('id,name,amount\n10,"comma, quote "" and\nnewline",10.10\n11,,\n'),
    Buffer.from('12,"",12\n'),
  ]),
  await copyTable(),
]);

step('copy_in_binary', async () => {
  const data = binaryCopy([
    [20, 'binary ✓', Buffer.from([0, 1, 2])],
    [21, null, null],
  ]);
  // Split mid-tuple: CopyData boundaries need not follow rows.
  return [await copyIn(`COPY ${COPYT} (id, name, data) FROM STDIN (FORMAT binary)`, [data.subarray(0, 25), data.subarray(25)]), await copyTable()];
});

step('copy_out_text', () => copyOut(`COPY (SELECT id, name, amount, data FROM ${COPYT} ORDER BY id, name) TO STDOUT`));
step('copy_out_csv', () => copyOut(`COPY (SELECT id, name, amount FROM ${COPYT} ORDER BY id, name) TO STDOUT (FORMAT csv, HEADER)`));
step('copy_out_binary', () => copyOut(`COPY (SELECT id, name, amount, data FROM ${COPYT} ORDER BY id, name) TO STDOUT (FORMAT binary)`));

step('copy_in_transaction', async () => [
  await q('BEGIN'),
  await copyIn(`COPY ${COPYT} (id, name) FROM STDIN`, [Buffer.from('30\tin txn\n31\tin txn\n')]),
  await copyOut(`COPY (SELECT id, name FROM ${COPYT} WHERE id >= 30 ORDER BY id) TO STDOUT (FORMAT csv)`),
  await count(`SELECT count(*) FROM ${COPYT} WHERE id >= $1`, [30]),
  await q('ROLLBACK'),
  await count(`SELECT count(*) FROM ${COPYT} WHERE id >= $1`, [30]),
  await q('BEGIN'),
  await copyIn(`COPY ${COPYT} (id, name) FROM STDIN (FORMAT csv)`, [Buffer.from('32,committed\n')]),
  await q('COMMIT'),
  await count(`SELECT count(*) FROM ${COPYT} WHERE id >= $1`, [30]),
]);

step('copy_bad_row', async () => [
  await attempt(copyIn(`COPY ${COPYT} (id, name) FROM STDIN`, [Buffer.from('40\tgood\n41\tgood\n'), Buffer.from('x42\tbad\n43\tgood\n')])),
  await count(`SELECT count(*) FROM ${COPYT} WHERE id >= $1`, [40]),
  await alive(),
]);

step('copy_bad_row_in_transaction', async () => [
  await q('BEGIN'),
  await q(`INSERT INTO ${COPYT} (id, name) VALUES ($1, $2)`, [50, 'before copy']),
  await attempt(copyIn(`COPY ${COPYT} (id, name) FROM STDIN (FORMAT csv)`, [Buffer.from('51,ok\n52,ok,extra\n')])),
  await attempt(alive()),
  await q('ROLLBACK'),
  await count(`SELECT count(*) FROM ${COPYT} WHERE id >= $1`, [50]),
]);

step('copy_aborted_by_client', async () => [
  await attempt(copyIn(`COPY ${COPYT} (id, name) FROM STDIN`, [Buffer.from('60\tsent\n61\tsent\n'), Buffer.from('62\tnot sent\n')], 1)),
  await count(`SELECT count(*) FROM ${COPYT} WHERE id >= $1`, [60]),
  await alive(),
]);

step('copy_aborted_by_client_in_transaction', async () => [
  await q('BEGIN'),
  await attempt(copyIn(`COPY ${COPYT} (id, name) FROM STDIN`, [Buffer.from('63\tsent\n'), Buffer.from('64\tnot sent\n')], 1)),
  await attempt(alive()),
  await q('ROLLBACK'),
  await count(`SELECT count(*) FROM ${COPYT} WHERE id >= $1`, [60]),
]);

step('copy_out_error', async () => [await attempt(copyOut('COPY (SELECT 1 / (3 - g) FROM generate_series(1, 5) g) TO STDOUT')), await alive()]);

step('copy_many_rows', async () => {
  let lines = '';
  for (let i = 1000; i < 11000; i++) lines += `${i}\tline ${i}\n`;
  const buf = Buffer.from(lines);
  const chunks = [];
  for (let i = 0; i < buf.length; i += 65536) chunks.push(buf.subarray(i, i + 65536));
  return [
    await copyIn(`COPY ${COPYT} (id, name) FROM STDIN`, chunks),
    await copyOut(`COPY (SELECT id, name FROM ${COPYT} WHERE id >= 1000 ORDER BY id) TO STDOUT`),
  ];
});

function largeText() {
  const codes = new Array(LARGE);
  for (let i = 0; i < LARGE; i++) codes[i] = 0x20 + ((i * 7919) % 0x5f);
  return Buffer.from(codes).toString('latin1') + 'Zürich';
}

function largeBytes() {
  const b = Buffer.alloc(LARGE);
  for (let i = 0; i < LARGE; i++) b[i] = (i * 31 + 7) % 256;
  return b;
}

step('large_values', async () => {
  const text = largeText();
  const data = largeBytes();
  return [
    await q('SELECT $1::text AS t, length($1::text) AS n', [text]),
    await q(`INSERT INTO ${BIG} (id, body, data) VALUES ($1, $2, $3)`, [1, text, data]),
    await q(`SELECT body, data, md5(data) FROM ${BIG} WHERE id = $1`, [1]),
    await qb(`SELECT body, data FROM ${BIG} WHERE id = $1`, [1]),
    await q(`SELECT length(body), md5(body) FROM ${BIG}`),
    await copyOut(`COPY (SELECT body, data FROM ${BIG}) TO STDOUT`),
  ];
});

step('many_rows', async () => {
  const ids = [];
  for (let i = 0; i < 10000; i++) ids.push(i);
  const out = [await q(`INSERT INTO ${MANY} (n, label) SELECT g, 'label ' || g FROM unnest($1::int[]) g`, [ids])];
  for (const binary of [false, true]) {
    const c = binary ? binaryClient : client;
    const r = await c.query({ text: `SELECT n, label FROM ${MANY} WHERE n >= $1 ORDER BY n`, values: [0], rowMode: 'array', types: binary ? RAW : undefined });
    out.push({ command: r.command, rowCount: r.rowCount, sha256: digest(JSON.stringify(r.rows.map((x) => x.map(norm)))) });
  }
  const r = await client.query({ text: 'SELECT g, md5(g::text) FROM generate_series(1, 10000) g', rowMode: 'array' });
  out.push({ command: r.command, rowCount: r.rowCount, sha256: digest(JSON.stringify(r.rows.map((x) => x.map(norm)))) });
  return out;
});

function readCursor(cursor, n) {
  return cursor.read(n);
}

step('cursor_in_transaction', async () => {
  const out = [await q('BEGIN')];
  const cursor = client.query(new Cursor(`SELECT n, label FROM ${MANY} WHERE n < $1 ORDER BY n`, [5000], { rowMode: 'array' }));
  const first = await readCursor(cursor, 10);
  let rest = [];
  for (;;) {
    const batch = await readCursor(cursor, 333);
    if (batch.length === 0) break;
    rest = rest.concat(batch);
  }
  await cursor.close();
  out.push({ first: first.map((r) => r.map(norm)), rest: rest.length, sha256: digest(JSON.stringify(rest.map((r) => r.map(norm)))) });
  out.push(await q('DECLARE c1 CURSOR FOR SELECT g FROM generate_series(1, 10) g'));
  out.push(await q('FETCH 3 FROM c1'));
  out.push(await q('MOVE 2 IN c1; FETCH NEXT FROM c1'));
  out.push(await attempt(q('FETCH FROM no_such_cursor')));
  out.push(await q('ROLLBACK'));
  return out;
});

step('cursor_outside_transaction', async () => {
  // pg-cursor sends Parse/Bind/Describe/Execute(n)/Flush and a Sync only when it is done: the portal lives in
  // the implicit transaction between reads.
  const cursor = client.query(new Cursor('SELECT g, md5(g::text) FROM generate_series(1, 1000) g', [], { rowMode: 'array' }));
  const batches = [];
  for (;;) {
    const batch = await readCursor(cursor, 100);
    if (batch.length === 0) break;
    batches.push(batch.length);
  }
  await cursor.close();
  return [{ batches }, await alive()];
});

step('final_state', async () => [
  await q(`SELECT count(*), sum(id), sum(amount), md5(string_agg(name, ',' ORDER BY id)) FROM ${ITEMS}`),
  await q(`SELECT count(*), sum(id), md5(string_agg(coalesce(name, '-'), ',' ORDER BY id, name)) FROM ${COPYT}`),
  await q(`SELECT count(*), sum(n) FROM ${MANY}`),
]);

step('teardown', () =>
  q(`DROP TABLE ${ITEMS}, ${COPYT}, ${BIG}, ${MANY}; DROP FUNCTION ${PREFIX}noisy(int); DROP TYPE ${PREFIX}mood, ${PREFIX}pair`));

async function main() {
  client = new Client({ connectionString: URL, connectionTimeoutMillis: 10000 });
  client.on('notice', (m) =>
    NOTICES.push({
      severity: m.severity,
      sqlstate: m.code,
      message: m.message,
      detail: m.detail === undefined ? null : m.detail,
      hint: m.hint === undefined ? null : m.hint,
    }),
  );
  let broken = null;
  client.on('error', (e) => {
    broken = e;
  });
  await client.connect();
  binaryClient = new Client({ connectionString: URL, connectionTimeoutMillis: 10000, binary: true });
  binaryClient.on('error', (e) => {
    broken = e;
  });
  await binaryClient.connect();
  emit({ step: 'driver', out: { driver: 'node-postgres', pg: require('pg/package.json').version.split('.')[0] } });
  for (const [name, fn] of STEPS) {
    const record = { step: name };
    if (broken) {
      record.exception = `connection error: ${broken.message}`;
    } else {
      try {
        record.out = await fn();
      } catch (e) {
        record.error = error(e);
        if (!(e && e.code)) process.stderr.write(`${name}: ${e && e.stack}\n`);
      }
    }
    if (NOTICES.length) record.notices = NOTICES.splice(0);
    emit(record);
    // The server backends this step ended on, on stderr (never in the transcript): the test checks that
    // transaction pooling served the copies of the script from a shared, bounded set of server connections.
    for (const c of [client, binaryClient]) {
      if (broken) break;
      try {
        const r = await c.query({ text: 'SELECT pg_backend_pid()', rowMode: 'array', types: RAW });
        process.stderr.write(`backend_pid ${r.rows[0][0]}\n`);
      } catch (e) {
        // e.g. inside a failed transaction: nothing to report
      }
    }
    NOTICES.splice(0);
  }
  await client.end().catch(() => {});
  await binaryClient.end().catch(() => {});
  emit({ step: 'end' });
}

main().catch((e) => {
  process.stderr.write(`conformance.js: ${e && e.stack}\n`);
  process.exit(1);
});
