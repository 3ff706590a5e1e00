#!/usr/bin/env python3
"""Warm read with a verified token against the same read without authorization, measured in the same run.

Two bridges serve the embedded default (pydicom's samples) with every default but authorization: one with
``BRIDGE_AUTH=none``, one with ``BRIDGE_AUTH=smart`` verifying an RS256 JWT (a patient token for the study's
own patient, ``patient/ImagingStudy.rs``) against a JWKS this script serves. Both warm the study, then are
driven by wrk (``-H "Authorization: Bearer …"`` for the second) from the other core, alone in turns that rotate
per cycle, as ``bench_warm_read.py`` drives its servers. The figure is the median per-cycle ratio of the smart
bridge's rate to the open one's (goal: at most 10 % dearer, a ratio ≥ 0.90x), and the same for CPU per request.
A third bridge, open, is sent the same header (which it ignores), to tell what the token's bytes cost from what
verifying it costs.

    .venv/bin/python scripts/bench_auth_read.py [--cycles 30] [--window 2]

Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from bench_warm_read import measure, server
from benchkit import free_port, wait_for
from cryptography.hazmat.primitives.asymmetric import rsa

STUDY = "1.2.826.0.1.3680043.8.498.64108189007039777171766333999874882472"  # the samples' largest study
AUDIENCE = "http://127.0.0.1/fhir"


def jwks_server(jwks: bytes) -> str:
    """Serve ``jwks`` at /jwks on a free loopback port, in a thread; its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(jwks)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}/jwks"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--window", type=int, default=2, help="seconds each bridge is driven alone per cycle")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks_url = jwks_server(json.dumps({"keys": [{**public, "kid": "bench", "alg": "RS256", "use": "sig"}]}).encode())

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    ports = {"open": free_port(), "open+header": free_port(), "smart": free_port()}
    path = f"/fhir/ImagingStudy/{STUDY}"

    def bridge(name: str) -> list[str]:
        return [sys.executable, "-m", "bridge", "serve", "--port", str(ports[name])]

    smart_env = {**base_env, "BRIDGE_AUTH": "smart", "BRIDGE_AUTH_JWKS_URL": jwks_url, "BRIDGE_AUTH_AUDIENCE": AUDIENCE}
    with ExitStack() as stack:
        pids = {
            "open": stack.enter_context(server(bridge("open"), base_env)),
            "open+header": stack.enter_context(server(bridge("open+header"), base_env)),
            "smart": stack.enter_context(server(bridge("smart"), smart_env)),
        }
        body = json.loads(wait_for(f"http://127.0.0.1:{ports['open']}{path}"))
        patient = body["subject"]["identifier"]["value"]
        now = int(time.time())
        claims = {"iss": "bench", "aud": AUDIENCE, "sub": "bench-user", "client_id": "bench", "iat": now,
                  "exp": now + 3600, "scope": "launch/patient patient/ImagingStudy.rs", "patient": patient}  # fmt: skip
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})
        wait_for(f"http://127.0.0.1:{ports['smart']}{path}", headers={"Authorization": f"Bearer {token}"})
        urls = {name: f"http://127.0.0.1:{port}{path}" for name, port in ports.items()}
        # "open+header" gets the same header, which it ignores: what the token's bytes alone cost (receiving and
        # parsing 650 bytes more per request), apart from what verifying it costs.
        header = ["-H", f"Authorization: Bearer {token}"]
        headers = {"smart": header, "open+header": header}
        names = list(urls)
        cycles = [[[names[(i + k) % len(names)]] for k in range(len(names))] for i in range(args.cycles)]
        rates, costs = measure(urls, pids, cycles, args.window, args.connections, headers)
    print(f"token of {len(token)} bytes; {args.cycles} cycles, each bridge driven alone for {args.window} s")
    for name in names:
        print(f"  {name:12s} {statistics.median(rates[name]):>7,.0f} req/s   "
              f"{statistics.median(costs[name]):6.1f} µs CPU/request")  # fmt: skip
    summary = {}
    for baseline in ("open", "open+header"):
        rate_ratio = statistics.median(s / o for s, o in zip(rates["smart"], rates[baseline], strict=True))
        cost_ratio = statistics.median(s / o for s, o in zip(costs["smart"], costs[baseline], strict=True))
        print(f"  smart / {baseline:12s} rate ratio {rate_ratio:.2f}x (goal ≥ 0.90x), CPU per request "
              f"{cost_ratio:.2f}x (goal ≤ 1.10x)")  # fmt: skip
        summary[baseline] = {"rate_ratio": round(rate_ratio, 3), "cpu_ratio": round(cost_ratio, 3)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
