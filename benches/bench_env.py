"""The environment the pooler benchmarks share: a throwaway cluster started by `pgtenant dev` (release binary,
temp folder, transaction pooling), pgbench tables (scale 10) in the demo tenant's schema, a role `bench`
(member of the tenant role, with its search_path) for direct runs and PgBouncer, and PgBouncer 1.18
(Debian package `pgbouncer`) in transaction mode with the same number of server connections.
"""
import contextlib
import hashlib
import os
import re
import resource
import shutil
import signal
import socket
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
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 60)
    except subprocess.TimeoutExpired:
        # PgBouncer 1.18 can hang pgbench -M prepared: a run that does not end is a failed run.
        return {"tps": 0.0, "latency_ms": float("nan"), "transactions": 0, "failed": True,
                "error": f"pgbench did not finish within {seconds * 4 + 60} s"}
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


class Env:
    """targets: name -> libpq conninfo; pids: name -> process id of the proxy (pgtenant, pgbouncer)."""

    def __init__(self):
        self.targets = {}
        self.pids = {}


@contextlib.contextmanager
def bench_env(pool, pool_mode="transaction", with_pgbouncer=True, max_clients=None):
    # PGTENANT_BENCH_BINARY: measure that build (an older one, to compare) instead of building this tree.
    binary = os.environ.get("PGTENANT_BENCH_BINARY")
    if not binary:
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target", "release", "pgtenant")
    work = tempfile.mkdtemp(prefix="pgtenant-bench-")
    os.chmod(work, 0o755)
    proxy_port = free_port()
    # pgtenant logs as it would in production (info: a line per login and per session end) to a file, as
    # PgBouncer logs its connections to its logfile: PGTENANT_BENCH_LOG=warn measures without those lines.
    log = open(os.path.join(work, "pgtenant.log"), "w")
    dev = subprocess.Popen(
        [binary, "dev", "--dir", os.path.join(work, "dev"), "--port", str(proxy_port),
         "--pool-mode", pool_mode, "--pool-size", str(pool)]
        + (["--max-clients", str(max_clients)] if max_clients else []),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
        env={**os.environ, "PGTENANT_LOG": os.environ.get("PGTENANT_BENCH_LOG", "info")})
    log.close()
    bouncer = None
    env = Env()
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
        # sslmode=disable everywhere: no target pays an SSLRequest round trip the others do not.
        env.targets = {"direct": f"host=127.0.0.1 port={pg_port} user=bench password=bench dbname={db} sslmode=disable",
                       "pgtenant": url,
                       # The same, with the virtual schema rewrite turned off for the session.
                       "pgtenant_novs": url + ("&" if "?" in url else "?") + "options=-c%20pgtenant.virtual_schema%3Doff"}
        bouncer_bin = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
        if bouncer_bin and with_pgbouncer:
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
auth_type = md5
auth_file = {bdir}/users.txt
pool_mode = transaction
default_pool_size = {pool}
max_client_conn = 20000
max_db_connections = {pool}
ignore_startup_parameters = extra_float_digits,options
logfile = {bdir}/pgbouncer.log
""")
            with open(os.path.join(bdir, "users.txt"), "w") as f:
                # md5, PgBouncer's default: one password round trip per login, as pgtenant's token is.
                f.write(f'"bench" "md5{hashlib.md5(b"benchbench").hexdigest()}"\n')
            run(["chown", "-R", "postgres", bdir], check=False)
            cmd = [bouncer_bin, os.path.join(bdir, "pgbouncer.ini")]
            # runuser's PAM session puts the open-file limit back to its default: PgBouncer gets this
            # process's (benches/idle_clients.py raises it) through prlimit.
            nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if shutil.which("prlimit"):
                cmd = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] + cmd
            if os.geteuid() == 0:
                cmd = ["runuser", "-u", "postgres", "--"] + cmd
            bouncer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
            env.targets["pgbouncer"] = f"host=127.0.0.1 port={bport} user=bench password=bench dbname={db} sslmode=disable"
            env.pids["pgbouncer"] = int(run(["pgrep", "-x", "-f", f"{bouncer_bin} {bdir}/pgbouncer.ini"]).stdout.split()[0])
            version = run([bouncer_bin, "--version"], check=False).stdout.splitlines()[:1]
            print(f"PgBouncer: {version[0] if version else bouncer_bin}")
        elif with_pgbouncer:
            print("PgBouncer not found: its column is skipped (apt-get install pgbouncer)")
        env.pids["pgtenant"] = dev.pid
        yield env
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
