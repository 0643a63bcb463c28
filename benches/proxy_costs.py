#!/usr/bin/env python3
"""What one transaction costs each proxy: CPU, context switches and system calls per transaction, for pgtenant
and PgBouncer side by side (same cluster, same tables, same number of server connections).

Usage: benches/proxy_costs.py [--seconds 5] [--clients 8] [--pool 8] [--pool-mode transaction|session]
                              [--modes simple,extended,prepared] [--no-strace]

For each proxy and pgbench mode (`pgbench -S`): one run under `perf stat -e task-clock,context-switches,
cpu-migrations -p PID` (Debian package linux-perf; falls back to /proc CPU times and
/proc/PID/status context switch counts when perf is missing), then a shorter run under `strace -c -f -p PID`
for the system call mix (strace slows the proxy down: its counts per transaction hold, its tps does not).
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_env import bench_env, cpu_seconds, pgbench  # noqa: E402


def context_switches(pid):
    """Voluntary + involuntary context switches of every thread of `pid` (from /proc)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def measured_run(pid, target, clients, mode, seconds):
    before_cpu, before_cs = cpu_seconds(pid), context_switches(pid)
    res = pgbench(target, clients, mode, "select", seconds)
    cpu = cpu_seconds(pid) - before_cpu
    cs = context_switches(pid) - before_cs
    return res, cpu, cs


def strace_run(pid, target, clients, mode, seconds):
    out = f"/tmp/proxy-costs-strace-{pid}.txt"
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    res = pgbench(target, clients, mode, "select", seconds)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    calls = {}
    with open(out) as f:
        for line in f:
            m = re.match(r"\s*[0-9.]+\s+[0-9.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
            if m and m.group(2) != "total":
                calls[m.group(2)] = int(m.group(1))
    os.unlink(out)
    return res, calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--pool", type=int, default=8)
    ap.add_argument("--pool-mode", default="transaction")
    ap.add_argument("--modes", default="simple,extended,prepared")
    ap.add_argument("--no-strace", action="store_true")
    args = ap.parse_args()
    with_strace = not args.no_strace and shutil.which("strace")
    with bench_env(args.pool, pool_mode=args.pool_mode) as env:
        print(f"pgbench -S, {args.clients} clients, {args.seconds}s per run, {args.pool} server connections, "
              f"pgtenant in {args.pool_mode} pooling, PgBouncer in transaction pooling\n")
        print(f"{'proxy':<10} {'mode':<9} {'tps':>8} {'CPU µs/txn':>11} {'ctx sw/txn':>11}  syscalls/txn (strace run)")
        for mode in args.modes.split(","):
            res = pgbench(env.targets["direct"], args.clients, mode, "select", args.seconds)
            print(f"{'direct':<10} {mode:<9} {res['tps']:>8.0f}")
            for name in ("pgbouncer", "pgtenant"):
                if name not in env.pids:
                    continue
                pid = env.pids[name]
                res, cpu, cs = measured_run(pid, env.targets[name], args.clients, mode, args.seconds)
                if res["failed"] or not res["transactions"]:
                    print(f"{name:<10} {mode:<9} fails: {res['error']}")
                    continue
                n = res["transactions"]
                mix = ""
                if with_strace:
                    sres, calls = strace_run(pid, env.targets[name], args.clients, mode, min(args.seconds, 3))
                    if sres["transactions"]:
                        per = {k: v / sres["transactions"] for k, v in calls.items()}
                        total = sum(per.values())
                        top = sorted(per.items(), key=lambda kv: -kv[1])[:6]
                        mix = f"{total:.2f}: " + ", ".join(f"{k} {v:.2f}" for k, v in top)
                print(f"{name:<10} {mode:<9} {res['tps']:>8.0f} {cpu / n * 1e6:>11.1f} {cs / n:>11.2f}  {mix}",
                      flush=True)


if __name__ == "__main__":
    main()
