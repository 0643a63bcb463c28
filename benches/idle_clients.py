#!/usr/bin/env python3
"""Memory and CPU of idle clients: N client connections logged in and then left idle, held by pgtenant
(transaction pooling, JWT login) and by PgBouncer (transaction mode, md5 auth), one after the other.

Usage: benches/idle_clients.py [--clients 10000] [--idle-seconds 10] [--concurrency 200]

For each proxy: its resident memory (VmRSS from /proc) before the clients log in, after all of them did
(and answered one `SELECT 1`, so each went through a transaction), and the RSS per client from the
difference; then the proxy's CPU time over `--idle-seconds` while every client stays idle (it should be ~0).
The clients speak the raw protocol from one asyncio process (startup message, cleartext password for
pgtenant or md5 for PgBouncer, a simple query), so the client side costs little. The open-file limit is
raised for this process and the proxies it starts.
"""
import argparse
import asyncio
import hashlib
import os
import resource
import struct
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_env import bench_env, cpu_seconds  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def startup(user, database):
    body = struct.pack(">I", 196608)
    for k, v in (("user", user), ("database", database)):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack(">I", len(body) + 4) + body


def message(tag, body):
    return tag + struct.pack(">I", len(body) + 4) + body


async def read_message(reader):
    head = await reader.readexactly(5)
    (length,) = struct.unpack(">I", head[1:])
    return head[:1], await reader.readexactly(length - 4)


async def until_ready(reader):
    while True:
        tag, body = await read_message(reader)
        if tag == b"E":
            raise RuntimeError(body.decode(errors="replace"))
        if tag == b"Z":
            return


async def connect(host, port, user, password, database):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(startup(user, database))
    tag, body = await read_message(reader)
    if tag == b"E":
        raise RuntimeError(body.decode(errors="replace"))
    code = struct.unpack(">I", body[:4])[0] if tag == b"R" else None
    if code == 3:  # cleartext (pgtenant's token)
        writer.write(message(b"p", password.encode() + b"\0"))
    elif code == 5:  # md5 (PgBouncer's default auth_type)
        inner = hashlib.md5((password + user).encode()).hexdigest()
        outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
        writer.write(message(b"p", b"md5" + outer.encode() + b"\0"))
    await until_ready(reader)
    writer.write(message(b"Q", b"SELECT 1\0"))
    await until_ready(reader)
    return reader, writer


async def hold(name, pid, target, clients, concurrency, idle_seconds):
    host, port, user, password, database = target
    before = rss_kib(pid)
    gate = asyncio.Semaphore(concurrency)
    errors = []

    async def one():
        async with gate:
            try:
                return await asyncio.wait_for(connect(host, port, user, password, database), 30)
            except Exception as e:  # noqa: BLE001 - reported, not fatal
                errors.append(str(e) or type(e).__name__)
                return None

    started = time.time()
    conns = [c for c in await asyncio.gather(*(one() for _ in range(clients))) if c]
    login_secs = time.time() - started
    await asyncio.sleep(1)
    after = rss_kib(pid)
    cpu_before = cpu_seconds(pid)
    await asyncio.sleep(idle_seconds)
    idle_cpu = cpu_seconds(pid) - cpu_before
    per_client = (after - before) * 1024 / max(len(conns), 1)
    print(f"{name:<10} {len(conns):>7} {before / 1024:>9.1f} {after / 1024:>9.1f} {per_client:>12.0f} "
          f"{idle_cpu * 1000:>14.0f} {login_secs:>9.1f}", flush=True)
    if errors:
        print(f"  {len(errors)} logins failed, first: {errors[0][:200]}")
    for _, writer in conns:
        writer.close()
    await asyncio.sleep(2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--idle-seconds", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=200)
    args = ap.parse_args()
    want = args.clients * 2 + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, hard)), hard))
    with bench_env(8, max_clients=args.clients + 100) as env:
        url = urllib.parse.urlparse(env.targets["pgtenant"])
        targets = {
            "pgtenant": ("127.0.0.1", url.port, urllib.parse.unquote(url.username),
                         urllib.parse.unquote(url.password), url.path.lstrip("/")),
        }
        if "pgbouncer" in env.targets:
            kv = dict(p.split("=", 1) for p in env.targets["pgbouncer"].split())
            targets["pgbouncer"] = ("127.0.0.1", int(kv["port"]), kv["user"], kv["password"], kv["dbname"])
        print(f"{args.clients} idle clients, logged in {args.concurrency} at a time, then idle for "
              f"{args.idle_seconds} s\n")
        print(f"{'proxy':<10} {'clients':>7} {'RSS MiB':>9} {'with them':>9} {'bytes/client':>12} "
              f"{'idle CPU ms':>14} {'login s':>9}")
        for name in ("pgtenant", "pgbouncer"):
            if name in targets:
                asyncio.run(hold(name, env.pids[name], targets[name], args.clients, args.concurrency,
                                 args.idle_seconds))


if __name__ == "__main__":
    main()
