#!/usr/bin/env python3
"""Login rate through pgtenant with HS256 tokens and with RS256 tokens whose key comes from a JWKS.

Usage: benches/login_rate.py [--seconds 10] [--rounds 3] [--clients 8] [--log info]

The environment of pooler_compare.py (`pgtenant dev`, release binary, transaction pooling, pgbench tables at
scale 10 in the demo tenant), plus a second pgtenant (`pgtenant serve`) on the same cluster whose config is
dev.toml with `auth.algorithms = ["HS256", "RS256"]` and `auth.jwks_url` pointing at a JWKS served by this
script on loopback (an RSA-2048 key made with openssl, which also signs the RS256 tokens). The same instance
takes both kinds of token, so the runs differ only in the token. Each run is `pgbench -n -C -S -M simple`
(a new connection, so a login, per transaction) with `--clients` clients; HS and RS runs alternate within
each round; the report gives every run and the medians. `--log` is the PGTENANT_LOG of the measured
instance (`info`, the default, writes the audit line of every login).
"""
import argparse
import base64
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_env import ROOT, bench_env, free_port, pgbench, psql  # noqa: E402


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_rsa_key(folder):
    key = os.path.join(folder, "bench-rsa.pem")
    subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)
    modulus = subprocess.run(["openssl", "rsa", "-in", key, "-noout", "-modulus"], check=True,
                             capture_output=True, text=True).stdout.strip().split("=", 1)[1]
    n = bytes.fromhex(modulus)
    jwks = {"keys": [{"kty": "RSA", "kid": "bench-1", "use": "sig", "alg": "RS256",
                      "n": b64url(n), "e": b64url((65537).to_bytes(3, "big"))}]}
    return key, jwks


def rs256_token(key, claims):
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench-1"}).encode())
    payload = b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing_input,
                               check=True, capture_output=True).stdout
    return f"{header}.{payload}.{b64url(signature)}"


def serve_jwks(jwks):
    body = json.dumps(jwks).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_toml(path, config):
    with open(path, "w") as f:
        for section, values in config.items():
            f.write(f"[{section}]\n")
            for k, v in values.items():
                f.write(f"{k} = {toml_value(v)}\n")
    os.chmod(path, 0o600)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--pool", type=int, default=8)
    ap.add_argument("--log", default="info")
    args = ap.parse_args()
    with bench_env(args.pool, with_pgbouncer=False) as env:
        work = tempfile.mkdtemp(prefix="pgtenant-login-bench-")
        key, jwks = make_rsa_key(work)
        jwks_server = serve_jwks(jwks)
        # The dev config of bench_env's `pgtenant dev` (its folder is the pgtenant process's --dir).
        cmdline = open(f"/proc/{env.pids['pgtenant']}/cmdline").read().split("\0")
        dev_dir = cmdline[cmdline.index("--dir") + 1]
        config = tomllib.load(open(os.path.join(dev_dir, "dev.toml"), "rb"))
        port = free_port()
        config["server"]["listen"] = f"127.0.0.1:{port}"
        config["server"].pop("metrics_listen", None)
        config["auth"]["algorithms"] = ["HS256", "RS256"]
        config["auth"]["jwks_url"] = [f"http://127.0.0.1:{jwks_server.server_port}/jwks.json"]
        config_path = os.path.join(work, "login-bench.toml")
        write_toml(config_path, config)
        binary = os.path.join(ROOT, "target", "release", "pgtenant")
        proxy = subprocess.Popen([binary, "--config", config_path, "serve"], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={**os.environ, "PGTENANT_LOG": args.log})
        try:
            up = config["upstream"]
            su = (f"host={up['host']} port={up['port']} user={up['admin_user']} "
                  f"password={up['admin_password']} dbname={up['database']}")
            user_id, email = psql(su, "SELECT id, email FROM pgtenant.users ORDER BY created_at LIMIT 1").split("|")
            hs = subprocess.run([binary, "--config", config_path, "token", "--email", email, "--ttl", "2h"],
                                check=True, capture_output=True, text=True, cwd=ROOT).stdout.strip()
            now = int(time.time())
            rs = rs256_token(key, {"sub": user_id, "email": email, "iat": now, "exp": now + 7200,
                                   "jti": uuid.uuid4().hex})
            conninfo = (f"host=127.0.0.1 port={port} user={email} dbname={up['database']} "
                        "sslmode=disable password=")
            deadline = time.time() + 30
            while True:
                try:
                    psql(conninfo + hs, "SELECT 1")
                    psql(conninfo + rs, "SELECT 1")
                    break
                except RuntimeError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.5)
            print(f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at start), "
                  f"pgbench -n -C -S -M simple -c {args.clients} -j 2 -T {args.seconds}, "
                  f"{args.rounds} rounds, PGTENANT_LOG={args.log}", flush=True)
            results = {"HS256": [], "RS256 (JWKS)": []}
            tokens = {"HS256": hs, "RS256 (JWKS)": rs}
            for r in range(args.rounds):
                order = list(tokens) if r % 2 == 0 else list(reversed(tokens))
                for name in order:
                    res = pgbench(conninfo + tokens[name], args.clients, "simple", "select", args.seconds,
                                  connect=True)
                    results[name].append(res)
                    print(f"  round {r + 1} {name:<13} {res['tps']:>8.0f} logins/s  {res['latency_ms']:>6.2f} ms"
                          f"  {res['error']}", flush=True)
            ratios = [rs["tps"] / hs["tps"] for hs, rs in zip(results["HS256"], results["RS256 (JWKS)"])
                      if hs["tps"] > 0]
            print(f"RS256 (JWKS) / HS256 per round: {', '.join(f'{r:.2f}' for r in ratios)}"
                  f" (median {statistics.median(ratios):.2f})" if ratios else "no ratio: a run failed")
            print("medians:")
            for name, runs in results.items():
                print(f"  {name:<13} {statistics.median(x['tps'] for x in runs):>8.0f} logins/s "
                      f"{statistics.median(x['latency_ms'] for x in runs):>6.2f} ms")
        finally:
            proxy.terminate()
            try:
                proxy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proxy.kill()
            jwks_server.shutdown()


if __name__ == "__main__":
    main()
