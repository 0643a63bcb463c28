#!/usr/bin/env python3
"""pgbench through PostgreSQL directly, PgBouncer (transaction mode) and pgtenant (transaction mode).

Usage: benches/pooler_compare.py [--seconds 5] [--rounds 2] [--clients 8,64,256] [--pool 8]
                                 [--workloads select,tpcb] [--modes simple,extended,prepared] [--no-connect]
                                 [--virtual-schema-off-too] [--no-pgbouncer]

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
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_env import bench_env, cpu_seconds, pgbench, run  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", default="8,64,256")
    ap.add_argument("--pool", type=int, default=8)
    ap.add_argument("--workloads", default="select,tpcb")
    ap.add_argument("--modes", default="simple,extended,prepared")
    ap.add_argument("--no-connect", action="store_true", help="skip the pgbench -C runs")
    ap.add_argument("--no-pgbouncer", action="store_true", help="skip PgBouncer")
    ap.add_argument("--virtual-schema-off-too", action="store_true",
                    help="also run pgtenant with the virtual schema rewrite off (column pgtenant_novs)")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    with bench_env(args.pool, with_pgbouncer=not args.no_pgbouncer) as env:
        targets = env.targets
        pgtenant_pid = env.pids["pgtenant"]
        print(f"PostgreSQL {run(['psql', '--version']).stdout.split()[-1]}, {os.cpu_count()} cores, "
              f"{args.seconds}s per run, {args.rounds} rounds, {args.pool} server connections per pooler\n", flush=True)

        names = ("direct", "pgbouncer", "pgtenant") + (("pgtenant_novs",) if args.virtual_schema_off_too else ())
        order = [t for t in names if t in targets]
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
                            before = cpu_seconds(pgtenant_pid) if t.startswith("pgtenant") else None
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
            print(f"\nconnect per transaction (pgbench -C -S -M simple, 8 clients), {args.rounds} rounds, medians:")
            runs = {t: [] for t in order}
            cpu_per_login = {t: [] for t in order}
            for r in range(args.rounds):
                for t in order[r % len(order):] + order[:r % len(order)]:
                    # The proxy's process (none for direct); pgtenant_novs is the same pgtenant.
                    pid = env.pids.get("pgtenant" if t.startswith("pgtenant") else t)
                    before = cpu_seconds(pid) if pid else None
                    res = pgbench(targets[t], 8, "simple", "select", args.seconds, connect=True)
                    if before is not None and res["transactions"]:
                        cpu_per_login[t].append((cpu_seconds(pid) - before) / res["transactions"])
                    runs[t].append(res)
            base = statistics.median(x["tps"] for x in runs["direct"]) if "direct" in runs else None
            for t in order:
                tps = statistics.median(x["tps"] for x in runs[t])
                every = "/".join(f"{x['tps']:.0f}" for x in runs[t])
                ratio = f"{tps / base:.2f}x direct" if base else ""
                cpu = (f", CPU {statistics.median(cpu_per_login[t]) * 1e6:.0f} µs/login"
                       if cpu_per_login[t] else "")
                errors = "; ".join({x["error"] for x in runs[t] if x["error"]})
                print(f"  {t:<10} {tps:>9.0f} tps ({every}) {ratio}{cpu} {errors}", flush=True)

if __name__ == "__main__":
    main()
