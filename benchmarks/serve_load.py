"""Load benchmark for `embedtune serve`: requests/s and p50/p99 latency at 1, 8 and 32 concurrent clients,
with dynamic batching on and off (one request per model call).

    .venv/bin/python -m benchmarks.serve_load --quick            # ~2 minutes on a 2-core CPU
    .venv/bin/python -m benchmarks.serve_load --seconds 30 --json runs/serve_load.json

The server runs in its own process (this script started with --serve-only), so that the client threads do not
compete with it for the GIL; on a small machine they still share the CPU cores, which the table notes. Each
client keeps one HTTP/1.1 connection and sends requests back to back (closed loop); every request carries
`--texts` sentences of 8-30 words (STS-like lengths), drawn from a fixed seed.
"""
from __future__ import annotations

if not __package__:  # started as a file (python benchmarks/X.py): re-run as python -m benchmarks.X
    import _bootstrap  # noqa: F401

import argparse
import http.client
import json
import os
import platform
import random
import statistics
import subprocess
import threading
import time

from benchmarks import harness

WORDS = ("a man woman child dog cat is are was playing eating riding guitar piano food horse bike on in at the park "
         "street house quickly slowly big small old new red blue green people two three running sitting reading "
         "book table chair near under over beside with without while after before water sun rain city road car "
         "train music song dance kitchen garden tree flower bird fish boat river").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))).capitalize() + "." for _ in range(n)]


# ---- server process ----------------------------------------------------------------------------------------
def serve_only(args: argparse.Namespace) -> None:
    from embedtune.models.embedder import Embedder
    from embedtune.serve import ServeLimits, serve

    embedder = Embedder(args.model, adapter=args.adapter)
    limits = ServeLimits(max_batch_size=args.max_batch_size, dynamic_batching=args.batching,
                         batch_wait_ms=args.batch_wait_ms)
    serve(embedder, host="127.0.0.1", port=0, limits=limits)


def start_server(args: argparse.Namespace, batching: bool) -> tuple[subprocess.Popen, str, int]:
    command = harness.module_command(__name__, "--serve-only", "--model", args.model,
                                     "--max-batch-size", str(args.max_batch_size), "--batch-wait-ms",
                                     str(args.batch_wait_ms), "--batching" if batching else "--no-batching")
    if args.adapter:
        command += ["--adapter", args.adapter]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=harness.child_env())
    line = process.stdout.readline()
    if "http://" not in line:
        process.kill()
        raise SystemExit(f"server did not start: {line!r}")
    host, port = line.split("http://", 1)[1].split()[0].rsplit(":", 1)
    return process, host, int(port)


# ---- clients -----------------------------------------------------------------------------------------------
def health(host: str, port: int) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/health")
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body


def run_level(host: str, port: int, clients: int, seconds: float, texts_per_request: int, pool: list[str]) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(index: int) -> None:
        rng = random.Random(index)
        conn = http.client.HTTPConnection(host, port, timeout=120)
        mine = []
        start_gate.wait()
        while time.perf_counter() < stop_at[0]:
            body = json.dumps({"model": "bench", "input": rng.sample(pool, texts_per_request)})
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/embeddings", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=120)
            if ok:
                mine.append(time.perf_counter() - t0)
            else:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    calls_before = health(host, port)["model_calls"]
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    start_gate.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    calls = health(host, port)["model_calls"] - calls_before
    latencies.sort()
    n = len(latencies)
    return {
        "clients": clients, "requests": n, "errors": errors[0], "seconds": round(elapsed, 2),
        "req_per_s": round(n / elapsed, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if n else None,
        "p99_ms": round(1000 * latencies[min(n - 1, int(0.99 * n))], 1) if n else None,
        "requests_per_model_call": round(n / calls, 2) if calls else None,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=harness.DEFAULT_MODEL)
    parser.add_argument("--adapter")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated concurrency levels")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured time before the levels")
    parser.add_argument("--texts", type=int, default=1, help="sentences per request")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=0.0)
    parser.add_argument("--quick", action="store_true", help="6 s per level, 2 s warm-up")
    parser.add_argument("--only", choices=["on", "off"], help="run dynamic batching on or off only")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--serve-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.serve_only:
        return serve_only(args)
    if args.quick:
        args.seconds, args.warmup = 6.0, 2.0
    levels = [int(x) for x in args.clients.split(",")]
    pool = sentences(512)
    modes = {"on": True, "off": False}
    results = {}
    for name, batching in modes.items():
        if args.only and name != args.only:
            continue
        process, host, port = start_server(args, batching)
        try:
            run_level(host, port, max(levels), args.warmup, args.texts, pool)  # warm-up: allocator, caches
            results[name] = []
            for clients in levels:
                row = run_level(host, port, clients, args.seconds, args.texts, pool)
                results[name].append(row)
                print(f"batching {name:3s} clients {clients:3d}: {row['req_per_s']:7.2f} req/s  "
                      f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
                      f"({row['requests']} requests, {row['requests_per_model_call']} per model call, "
                      f"{row['errors']} errors)", flush=True)
        finally:
            process.terminate()
            process.wait(30)

    print()
    print(f"model {args.model}, {args.texts} sentence(s) of 8-30 words per request, {args.seconds:g} s per level, "
          f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), clients on the same machine")
    print()
    print("| clients | batching | req/s | p50 ms | p99 ms | requests per model call |")
    print("|---:|---|---:|---:|---:|---:|")
    for clients in levels:
        for name in results:
            row = next(r for r in results[name] if r["clients"] == clients)
            print(f"| {clients} | {name} | {row['req_per_s']:.1f} | {row['p50_ms']} | {row['p99_ms']} | "
                  f"{row['requests_per_model_call']} |")
    if "on" in results and "off" in results:
        print()
        for on, off in zip(results["on"], results["off"], strict=True):
            gain = on["req_per_s"] / off["req_per_s"] if off["req_per_s"] else float("nan")
            print(f"{on['clients']} clients: dynamic batching gives {gain:.2f}x the throughput of one request "
                  "at a time")
    if args.json:
        harness.write_json(args.json, {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
