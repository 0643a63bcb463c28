#!/usr/bin/env python3
"""pgbench through PostgreSQL directly, PgBouncer (transaction mode) and pgtenant (transaction mode).

Usage: benches/pooler_compare.py [--seconds 5] [--rounds 2] [--clients 8,64,256] [--pool 8]
                                 [--workloads select,tpcb] [--modes simple,extended,prepared] [--no-connect]

One throwaway cluster (`pgtenant dev` with the release binary, in a temp folder), pgbench tables (scale 10)
in the demo tenant's schema. Direct runs and PgBouncer use a role `bench` that is a member of the tenant
role with its search_path, so all three targets run the same queries on the same tables. Each pooler gets
the same number of server connections (--pool). Within each round the targets alternate in order; the
report gives median tps and latency over rounds and the median of the per-round ratios to direct. Also:
connect-per-transaction (`pgbench -C -S`) and pgtenant's CPU seconds per transaction (from /proc).
PgBouncer 1.18 is found on PATH or under /usr/sbin (Debian package `pgbouncer`); without it, its column
is skipped.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(cmd, env=None, check=True, timeout=None):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    return p


def psql(conninfo, sql):
    return run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", conninfo, "-c", sql]).stdout.strip()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def pgbench(conninfo, clients, mode, workload, seconds, connect=False):
    cmd = ["pgbench", "-n", "-c", str(clients), "-j", "2", "-T", str(seconds), "-M", mode]
    if workload == "select":
        cmd.append("-S")
    if connect:
        cmd.append("-C")
    cmd.append(conninfo)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 60)
    tps = re.search(r"^tps = ([0-9.]+)", p.stdout, re.M)
    lat = re.search(r"^latency average = ([0-9.]+) ms", p.stdout, re.M)
    done = re.search(r"number of transactions actually processed: (\d+)", p.stdout)
    failed = p.returncode != 0 or tps is None
    return {
        "tps": float(tps.group(1)) if tps else 0.0,
        "latency_ms": float(lat.group(1)) if lat else float("nan"),
        "transactions": int(done.group(1)) if done else 0,
        "failed": failed,
        "error": (p.stderr.strip().splitlines() or [""])[-1] if failed else "",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", default="8,64,256")
    ap.add_argument("--pool", type=int, default=8)
    ap.add_argument("--workloads", default="select,tpcb")
    ap.add_argument("--modes", default="simple,extended,prepared")
    ap.add_argument("--no-connect", action="store_true", help="skip the pgbench -C runs")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "pgtenant")
    work = tempfile.mkdtemp(prefix="pgtenant-compare-")
    os.chmod(work, 0o755)
    proxy_port = free_port()
    dev = subprocess.Popen(
        [binary, "dev", "--dir", os.path.join(work, "dev"), "--port", str(proxy_port),
         "--pool-mode", "transaction", "--pool-size", str(args.pool)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PGTENANT_LOG": "warn"})
    bouncer = None
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
        cfg = tomllib.load(open(os.path.join(work, "dev", "dev.toml"), "rb"))["upstream"]
        pg_port, su_password, db = cfg["port"], cfg["admin_password"], cfg["database"]
        su = f"host=127.0.0.1 port={pg_port} user=postgres password={su_password} dbname={db}"
        schema, role = psql(su, "SELECT schema_name, role_name FROM pgtenant.organizations ORDER BY created_at LIMIT 1").split("|")
        psql(su, f"CREATE ROLE bench LOGIN PASSWORD 'bench' INHERIT IN ROLE {role}")
        psql(su, f"ALTER ROLE bench SET search_path = {schema}")
        print(f"loading pgbench tables (scale 10) into {schema} through pgtenant...", flush=True)
        run(["pgbench", "-i", "-s", "10", "-q", url])
        targets = {"direct": f"host=127.0.0.1 port={pg_port} user=bench password=bench dbname={db}",
                   "pgtenant": url}

        bouncer_bin = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
        if bouncer_bin:
            bdir = os.path.join(work, "pgbouncer")
            os.makedirs(bdir)
            bport = free_port()
            with open(os.path.join(bdir, "pgbouncer.ini"), "w") as f:
                f.write(f"""[databases]
{db} = host=127.0.0.1 port={pg_port} dbname={db} user=bench password=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {bport}
unix_socket_dir =
auth_type = trust
auth_file = {bdir}/users.txt
pool_mode = transaction
default_pool_size = {args.pool}
max_client_conn = 2000
max_db_connections = {args.pool}
ignore_startup_parameters = extra_float_digits,options
logfile = {bdir}/pgbouncer.log
""")
            with open(os.path.join(bdir, "users.txt"), "w") as f:
                f.write('"bench" ""\n')
            run(["chown", "-R", "postgres", bdir], check=False)
            cmd = [bouncer_bin, os.path.join(bdir, "pgbouncer.ini")]
            if os.geteuid() == 0:
                cmd = ["runuser", "-u", "postgres", "--"] + cmd
            bouncer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
            targets["pgbouncer"] = f"host=127.0.0.1 port={bport} user=bench dbname={db}"
            version = run([bouncer_bin, "--version"], check=False).stdout.splitlines()[:1]
            print(f"PgBouncer: {version[0] if version else bouncer_bin}")
        else:
            print("PgBouncer not found: its column is skipped (apt-get install pgbouncer)")

        pgtenant_pid = int(run(["pgrep", "-f", f"pgtenant dev --dir {os.path.join(work, 'dev')}"]).stdout.split()[0])
        print(f"PostgreSQL {run(['psql', '--version']).stdout.split()[-1]}, {os.cpu_count()} cores, "
              f"{args.seconds}s per run, {args.rounds} rounds, {args.pool} server connections per pooler\n", flush=True)

        order = [t for t in ("direct", "pgbouncer", "pgtenant") if t in targets]
        header = f"{'workload':<8} {'mode':<9} {'clients':>7} | " + " | ".join(f"{t:>22}" for t in order) + " | ratios to direct"
        print(header)
        print("-" * len(header))
        for workload in args.workloads.split(","):
            for mode in args.modes.split(","):
                for c in clients:
                    results = {t: [] for t in order}
                    ratios = {t: [] for t in order if t != "direct"}
                    cpu = []
                    for r in range(args.rounds):
                        rotated = order[r % len(order):] + order[:r % len(order)]
                        round_tps = {}
                        for t in rotated:
                            before = cpu_seconds(pgtenant_pid) if t == "pgtenant" else None
                            res = pgbench(targets[t], c, mode, workload, args.seconds)
                            if before is not None and res["transactions"]:
                                cpu.append((cpu_seconds(pgtenant_pid) - before) / res["transactions"])
                            results[t].append(res)
                            round_tps[t] = res["tps"]
                        for t in ratios:
                            if round_tps.get("direct"):
                                ratios[t].append(round_tps[t] / round_tps["direct"])
                    cells = []
                    for t in order:
                        ok = [x for x in results[t] if not x["failed"]]
                        if not ok:
                            cells.append(f"{'fails':>22}")
                            continue
                        tps = statistics.median(x["tps"] for x in ok)
                        lat = statistics.median(x["latency_ms"] for x in ok)
                        cells.append(f"{tps:>10.0f} tps {lat:>6.2f} ms")
                    ratio_text = ", ".join(
                        f"{t} {statistics.median(v):.2f}" if v and all(not x['failed'] for x in results[t]) else f"{t} fails"
                        for t, v in ratios.items())
                    cpu_text = f", pgtenant CPU {statistics.median(cpu) * 1e6:.1f} µs/txn" if cpu else ""
                    print(f"{workload:<8} {mode:<9} {c:>7} | " + " | ".join(cells) + f" | {ratio_text}{cpu_text}", flush=True)
                    for t in order:
                        errors = {x["error"] for x in results[t] if x["failed"] and x["error"]}
                        for e in errors:
                            print(f"    {t}: {e}")
        if not args.no_connect:
            print("\nconnect per transaction (pgbench -C -S -M simple, 8 clients):")
            base = None
            for t in order:
                res = pgbench(targets[t], 8, "simple", "select", args.seconds, connect=True)
                if t == "direct":
                    base = res["tps"]
                ratio = f"{res['tps'] / base:.2f}x direct" if base else ""
                print(f"  {t:<10} {res['tps']:>9.0f} tps {res['latency_ms']:>7.2f} ms  {ratio} {res['error']}", flush=True)
    finally:
        if bouncer:
            bouncer.terminate()
            bouncer.wait(timeout=10)
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            dev.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
