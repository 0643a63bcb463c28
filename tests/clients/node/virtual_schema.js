// An ORM-style client that writes `public` (node-postgres): SET search_path TO public on connect, qualified
// names through the extended protocol (parameters, named statements), an unqualified name, strings and
// current_schema(). Prints one JSON line.
//
// Usage: node virtual_schema.js URL LABEL
const { Client } = require('pg');

async function main() {
  const [url, label] = process.argv.slice(2);
  const client = new Client({ connectionString: url });
  await client.connect();
  const out = {};
  await client.query('SET search_path TO public');
  await client.query('CREATE TABLE IF NOT EXISTS public."Note" (id serial PRIMARY KEY, body text NOT NULL)');
  await client.query({ name: 'insert-note', text: 'INSERT INTO "public"."Note" (body) VALUES ($1)', values: [label] });
  await client.query({ name: 'insert-note', text: 'INSERT INTO "public"."Note" (body) VALUES ($1)', values: [label + '-2'] });
  out.qualified = (await client.query('SELECT body FROM public."Note" ORDER BY id')).rows.map((r) => r.body);
  out.unqualified = Number((await client.query('SELECT count(*) AS n FROM "Note"')).rows[0].n);
  await client.query('BEGIN');
  await client.query('UPDATE public."Note" SET body = body || $1 WHERE id = 1', ['!']);
  await client.query('COMMIT');
  out.after_update = (await client.query('SELECT body FROM public."Note" WHERE id = 1')).rows[0].body;
  out.string = (await client.query("SELECT 'public.\"Note\"' AS s")).rows[0].s;
  out.current_schema_is_real = (await client.query("SELECT current_schema() <> 'public' AS r")).rows[0].r;
  await client.end();
  console.log(JSON.stringify(out, Object.keys(out).sort()));
}

main().catch((e) => {
  console.error(e.code || '', e.message);
  process.exit(1);
});
