"""An ORM-style client that writes `public` (psycopg 3): SET search_path TO public on connect, then tables
qualified with public, an unqualified name, set_config, strings and current_schema(). Prints one JSON line.

Usage: virtual_schema_psycopg.py CONNINFO LABEL
"""
import json
import sys

import psycopg

conninfo, label = sys.argv[1], sys.argv[2]
out = {}
with psycopg.connect(conninfo, autocommit=True, prepare_threshold=0) as conn:
    conn.execute("SET search_path TO public")
    conn.execute('CREATE TABLE IF NOT EXISTS public."Item" (id serial PRIMARY KEY, label text NOT NULL)')
    conn.execute('INSERT INTO "public"."Item" (label) VALUES (%s), (%s)', (label, label + "-2"))
    out["qualified"] = [r[0] for r in conn.execute('SELECT label FROM public."Item" ORDER BY id')]
    out["unqualified"] = conn.execute('SELECT count(*) FROM "Item"').fetchone()[0]
    with conn.transaction():
        conn.execute('UPDATE public."Item" SET label = label || %s WHERE id = 1', ("!",))
    out["after_update"] = conn.execute('SELECT label FROM public."Item" WHERE id = 1').fetchone()[0]
    conn.execute("SELECT set_config('search_path', 'public', false)")
    out["after_set_config"] = conn.execute('SELECT count(*) FROM "Item"').fetchone()[0]
    out["string"] = conn.execute("SELECT 'public.\"Item\"'").fetchone()[0]
    out["current_schema_is_real"] = conn.execute("SELECT current_schema() <> 'public'").fetchone()[0]
    with conn.cursor() as cur:
        with cur.copy('COPY public."Item" (label) FROM STDIN') as copy:
            copy.write_row((label + "-copied",))
    out["after_copy"] = conn.execute('SELECT count(*) FROM public."Item"').fetchone()[0]
print(json.dumps(out, sort_keys=True))
