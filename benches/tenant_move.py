#!/usr/bin/env python3
"""Moving a tenant between clusters under write load: how long the move takes and how long the tenant's
writes wait at the switch, for tenants of about 100 MB and 1 GB.

Usage: benches/tenant_move.py [--sizes-mb 100,1000] [--clients 4]

For each size: a throwaway cluster and proxy from `pgtenant dev` (release binary, transaction pooling, 4
server connections), a second cluster started here (initdb + pg_ctl, as the `postgres` OS user when run as
root) added as cluster `b`, pgbench tables in the demo tenant's schema loaded through pgtenant at the scale
that gives the size (pgbench_history with REPLICA IDENTITY FULL, as the move asks), then pgbench TPC-B through
pgtenant in back-to-back 2-second runs with per-transaction logs while `pgtenant tenant move <tenant> --to b`
runs. Reported: the move's wall time, the pause the mover measured (the tenant's new transactions held), the
longest transaction latency pgbench saw during the move (what a client sees of the pause), transactions and
failed pgbench runs.
"""
import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_env import ROOT, free_port, psql, run  # noqa: E402

B_PASSWORD = "bench-cluster-b"
# pgbench -i: about 15 MB of tables and indexes per scale unit.
MB_PER_SCALE = 15


def as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


def start_cluster_b(work, bindir):
    data = os.path.join(work, "b")
    os.makedirs(data)
    pwfile = os.path.join(work, "b.pw")
    with open(pwfile, "w") as f:
        f.write(B_PASSWORD)
    if os.geteuid() == 0:
        run(["chown", "-R", "postgres", work])
    run(as_postgres([os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres", f"--pwfile={pwfile}",
                     "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"]))
    port = free_port()
    opts = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={work} -c fsync=off " \
           "-c max_connections=200 -c password_encryption=scram-sha-256"
    run(as_postgres([os.path.join(bindir, "pg_ctl"), "start", "-w", "-D", data, "-o", opts,
                     "-l", os.path.join(work, "b.log")]))
    conn = f"host=127.0.0.1 port={port} user=postgres password={B_PASSWORD} dbname=postgres"
    psql(conn, "CREATE DATABASE app")
    return data, port


def stop_cluster(bindir, data):
    run(as_postgres([os.path.join(bindir, "pg_ctl"), "stop", "-m", "fast", "-D", data]), check=False)


def bench_chunk(url, clients, prefix):
    """One 2-second TPC-B run with a per-transaction log; returns (transactions, failed)."""
    p = subprocess.run(["pgbench", "-n", "-c", str(clients), "-j", "2", "-T", "2", "-l",
                        f"--log-prefix={prefix}", url], capture_output=True, text=True, timeout=120)
    done = re.search(r"number of transactions actually processed: (\d+)", p.stdout)
    return (int(done.group(1)) if done else 0), p.returncode != 0


def longest_latency_ms(prefix):
    longest = 0
    for path in glob.glob(prefix + "*"):
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3:
                    longest = max(longest, int(fields[2]))
    return longest / 1000


def one_size(size_mb, clients, binary, bindir):
    work = tempfile.mkdtemp(prefix="pgtenant-move-bench-")
    os.chmod(work, 0o755)
    proxy_port = free_port()
    env = {**os.environ, "PGTENANT_LOG": "warn", "PGTENANT_CLUSTER_B_ADMIN_PASSWORD": B_PASSWORD}
    dev = subprocess.Popen([binary, "dev", "--dir", os.path.join(work, "dev"), "--port", str(proxy_port),
                            "--pool-mode", "transaction", "--pool-size", "4"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    b_data = None
    try:
        url = None
        deadline = time.time() + 120
        while time.time() < deadline:
            line = dev.stdout.readline()
            if line.startswith("postgres://"):
                url = line.strip()
                break
        if not url:
            sys.exit("pgtenant dev did not start")
        config = os.path.join(work, "dev", "dev.toml")
        cfg = tomllib.load(open(config, "rb"))["upstream"]
        su = f"host=127.0.0.1 port={cfg['port']} user=postgres password={cfg['admin_password']} dbname={cfg['database']}"
        bwork = os.path.join(work, "bcluster")
        os.makedirs(bwork)
        b_data, b_port = start_cluster_b(bwork, bindir)
        run([binary, "--config", config, "cluster", "add", "b", "--host", "127.0.0.1", "--port", str(b_port),
             "--database", "app"], env=env)
        slug = psql(su, "SELECT slug FROM pgtenant.organizations ORDER BY created_at LIMIT 1")
        scale = max(1, round(size_mb / MB_PER_SCALE))
        print(f"[{size_mb} MB] loading pgbench scale {scale} into tenant {slug} through pgtenant...", flush=True)
        run(["pgbench", "-i", "-s", str(scale), "-q", url], timeout=3600)
        psql(url, "ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
        size = int(psql(su, "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
                            "ON n.oid = c.relnamespace JOIN pgtenant.organizations o ON o.schema_name = n.nspname "
                            "WHERE c.relkind = 'r'"))
        logs = os.path.join(work, "logs")
        os.makedirs(logs)
        mover = subprocess.Popen([binary, "--config", config, "tenant", "move", slug, "--to", "b"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        started = time.time()
        transactions, failed_runs, chunk = 0, 0, 0
        while True:
            done = mover.poll() is not None
            n, failed = bench_chunk(url, clients, os.path.join(logs, f"c{chunk}"))
            transactions += n
            failed_runs += failed
            chunk += 1
            if done:
                break
        out, err = mover.communicate()
        move_s = time.time() - started if mover.returncode == 0 else float("nan")
        held = re.search(r"new transactions were held (\d+) ms", out)
        if mover.returncode != 0:
            print(f"[{size_mb} MB] the move failed:\n{out}\n{err}")
        print(f"[{size_mb} MB] tenant of {size / 1e6:.0f} MB: move {move_s:.1f} s (wall, including the copy), "
              f"new transactions held {held.group(1) if held else '?'} ms (mover), longest pgbench transaction "
              f"{longest_latency_ms(os.path.join(logs, 'c'))} ms; {transactions} transactions in {chunk} "
              f"2-second pgbench runs, {failed_runs} failed runs", flush=True)
    finally:
        if b_data:
            stop_cluster(bindir, b_data)
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            dev.kill()
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="100,1000")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "pgtenant")
    bindir = run(["pg_config", "--bindir"]).stdout.strip()
    if not os.path.exists(os.path.join(bindir, "initdb")):
        bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
    for size in args.sizes_mb.split(","):
        one_size(int(size), args.clients, binary, bindir)


if __name__ == "__main__":
    main()
