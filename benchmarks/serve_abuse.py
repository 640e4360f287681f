"""Abuse load for `embedtune serve`: concurrent clients sending a mix of valid and hostile requests.

    .venv/bin/python -m benchmarks.serve_abuse --quick                 # 10 s after a 5 s warm-up, default model
    .venv/bin/python -m benchmarks.serve_abuse --model PATH --seconds 60 --json runs/serve_abuse.json

The server runs in its own process (this script started with --serve-only) set up as the `embedtune` command
sets itself up (mimalloc, bounded kernel caches), with an API key (passed in $EMBEDTUNE_API_KEY), the library's
default limits except --max-request-bytes and --body-timeout, and bound to 127.0.0.1. Each of --clients
threads draws request kinds at random (fixed seed per client) until the time is up: valid requests (1-4
sentences, float or base64, on a kept-alive connection) and bad JSON, wrong types, oversize bodies (twice the
cap; Content-Length, Connection: close or chunked), too many items, too many tokens, slow bodies (a byte every
0.1 s), clients that leave mid-body or while queued, wrong or missing API keys, unknown routes and wrong
methods. Printed: per kind the requests sent and the statuses received (client-side failures as
reset/timeout/closed), 5xx responses (goal: none), whether the server survived (its process, /health, error
lines in its log), p50/p99 latency of the valid requests in the measured time (and, first, with the same
clients sending valid requests only: --baseline), and the server's RSS after the warm-up and at the end (goal:
no growth beyond 10%, at the end or at the peak sampled each second; the warm-up covers the server's own
start-up growth, its threadpool filling up).
"""
from __future__ import annotations

if not __package__:  # started as a file (python benchmarks/X.py): re-run as python -m benchmarks.X
    import _bootstrap  # noqa: F401

import argparse
import collections
import http.client
import json
import os
import platform
import random
import secrets
import socket
import subprocess
import tempfile
import threading
import time

from benchmarks import harness
from benchmarks.serve_load import sentences

# kind -> (weight, expected status; None: the client leaves, no answer to expect)
KINDS = {
    "valid": (40, 200),
    "bad_json": (6, 400),
    "wrong_type": (6, 400),
    "oversize_body": (4, 413),
    "too_many_items": (5, 413),
    "too_many_tokens": (4, 413),
    "slow_body": (1, 408),
    "disconnect": (5, None),
    "wrong_api_key": (6, 401),
    "unknown_route": (3, 404),
    "wrong_method": (3, 405),
}
BAD_JSON = (b'{"input": ["a dog"', b"\xff\xfe not json", b"[]", b"", b'{"input": "a"}}')
WRONG_TYPES = (b'{"input": 5}', b'{"input": [1, 2, -3]}', b'{"input": ["ok", null]}', b'{"input": {"text": "a"}}',
               b'{"input": "a", "encoding_format": "int8"}', b'{"input": "a", "model": 7}', b'{"input": []}')
TIMEOUT = 120.0  # client socket timeout, seconds


# ---- server process ----------------------------------------------------------------------------------------
def serve_only(args: argparse.Namespace) -> None:
    from embedtune.models.embedder import Embedder
    from embedtune.serve import API_KEY_ENV, ServeLimits, serve

    embedder = Embedder(args.model, adapter=args.adapter)
    limits = ServeLimits(max_request_bytes=args.max_request_bytes, body_timeout_s=args.body_timeout)
    serve(embedder, host="127.0.0.1", port=0, limits=limits, api_key=os.environ[API_KEY_ENV])


def start_server(args: argparse.Namespace, key: str, log_file) -> tuple[subprocess.Popen, str, int]:
    command = harness.module_command(__name__, "--serve-only", "--model", args.model, "--max-request-bytes",
                                     str(args.max_request_bytes), "--body-timeout", str(args.body_timeout))
    if args.adapter:
        command += ["--adapter", args.adapter]
    # The process set-up of the `embedtune serve` command (mimalloc unless --allocator system; bounded caches).
    env = harness.child_env(harness.embedtune_runtime({**os.environ, "EMBEDTUNE_API_KEY": key}, args.allocator))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, text=True, env=env)
    line = process.stdout.readline()
    if "http://" not in line:
        process.kill()
        raise SystemExit(f"server did not start: {line!r}")
    host, port = line.split("http://", 1)[1].split()[0].rsplit(":", 1)
    return process, host, int(port)


def server_rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2 ** 20


def health(host: str, port: int) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


# ---- clients -----------------------------------------------------------------------------------------------
class Client:
    """One client thread's requests; `run_kind` returns the status received, or what went wrong instead."""

    def __init__(self, index: int, host: str, port: int, key: str, info: dict, pool: list[str], cap: int):
        self.rng = random.Random(index)
        self.host, self.port, self.pool, self.cap = host, port, pool, cap
        self.auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.conn: http.client.HTTPConnection | None = None  # kept alive for valid requests
        self.codes: collections.Counter = collections.Counter()  # (kind, error code) of the JSON errors received
        limits = info["limits"]
        self.oversize = b'{"input": "' + b"a" * (2 * cap) + b'"}'
        self.too_many_items = json.dumps({"input": ["a"] * (limits["max_items"] + 1)}).encode()
        # Each text at least max_length tokens (one a word, or more; the shortest words, to stay far below the
        # body cap), and enough of them to pass max_tokens.
        short = sorted({w.strip(".").lower() for text in pool for w in text.split()}, key=lambda w: (len(w), w))[:8]
        long_text = " ".join(short[i % len(short)] for i in range(info["max_length"] + 8))
        self.too_many_tokens = json.dumps({"input": [long_text] * (limits["max_tokens"] // info["max_length"] + 2)
                                           }).encode()
        self.turn = 0

    def request(self, kind: str, method: str, path: str, body=None, headers: dict | None = None,
                keep: bool = False, **kwargs) -> int | str:
        conn = self.conn if keep and self.conn else http.client.HTTPConnection(self.host, self.port,
                                                                                 timeout=TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=self.auth | (headers or {}), **kwargs)
            response = conn.getresponse()
            raw = response.read()
            status = response.status
            closing = response.will_close
            if status >= 400:
                try:
                    self.codes[kind, json.loads(raw)["error"]["code"]] += 1
                except (ValueError, KeyError, TypeError):
                    self.codes[kind, "not an OpenAI-style JSON error"] += 1
        except (ConnectionResetError, BrokenPipeError):
            status, closing = "reset", True
        except TimeoutError:
            status, closing = "timeout", True
        except (OSError, http.client.HTTPException):
            status, closing = "closed", True
        if keep and not closing:
            self.conn = conn
        else:
            conn.close()
            if keep:
                self.conn = None
        return status

    def raw(self, data: bytes, then_close: bool = True) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=TIMEOUT)
        sock.sendall(data)
        if then_close:
            sock.close()
        return sock

    def run_kind(self, kind: str) -> int | str | None:
        rng = self.rng
        self.turn += 1
        post = ("POST", "/v1/embeddings")
        if kind == "valid":
            body = {"model": "m", "input": rng.sample(self.pool, rng.randint(1, 4)),
                    "encoding_format": rng.choice(("float", "base64"))}
            return self.request(kind, *post, json.dumps(body).encode(), keep=True)
        if kind == "bad_json":
            return self.request(kind, *post, BAD_JSON[self.turn % len(BAD_JSON)])
        if kind == "wrong_type":
            return self.request(kind, *post, WRONG_TYPES[self.turn % len(WRONG_TYPES)])
        if kind == "oversize_body":
            framing = self.turn % 3
            if framing == 2:  # chunked, no length declared: refused once the cap is passed
                step = 65536
                chunks = (self.oversize[i:i + step] for i in range(0, len(self.oversize), step))
                return self.request(kind, *post, chunks, encode_chunked=True)
            return self.request(kind, *post, self.oversize, {"Connection": "close"} if framing else None)
        if kind == "too_many_items":
            return self.request(kind, *post, self.too_many_items)
        if kind == "too_many_tokens":
            return self.request(kind, *post, self.too_many_tokens)
        if kind == "slow_body":
            return self.slow_body()
        if kind == "disconnect":
            body = json.dumps({"input": rng.sample(self.pool, 2)}).encode()
            headers = "".join(f"{k}: {v}\r\n" for k, v in self.auth.items())
            top = f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
            # Half the time gone mid-body, half the time gone once the request is in (queued or running).
            self.raw(top.encode() + (body[:len(body) // 2] if self.turn % 2 else body))
            return None
        if kind == "wrong_api_key":
            choice = self.turn % 3
            headers = ({"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}, {"Authorization": ""})[choice]
            return self.request(kind, *post, b'{"input": "a dog"}', headers)
        if kind == "unknown_route":
            return self.request(kind, "POST", rng.choice(("/v1/nope", "/v2/embeddings", "/")), b"{}")
        if kind == "wrong_method":
            return self.request(kind, rng.choice(("GET", "PUT", "DELETE")), "/v1/embeddings")
        raise ValueError(kind)

    def slow_body(self) -> int | str:
        headers = "".join(f"{k}: {v}\r\n" for k, v in self.auth.items())
        top = f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {self.cap}\r\n\r\n".encode()
        sock = self.raw(top, then_close=False)
        try:
            sock.settimeout(0.1)
            deadline = time.monotonic() + TIMEOUT
            data = b""
            while time.monotonic() < deadline:
                try:
                    data = sock.recv(4096)
                    break
                except TimeoutError:
                    sock.send(b"a")
            return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else "closed"
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except OSError:
            return "closed"
        finally:
            sock.close()


def run(args: argparse.Namespace) -> dict:
    key = "sk-" + secrets.token_hex(16)
    pool = sentences(512)
    with tempfile.TemporaryFile("w+") as log_file:
        process, host, port = start_server(args, key, log_file)
        try:
            info = health(host, port)
            baseline = None
            if args.baseline > 0:  # the same clients, valid requests only: what latency is without abuse
                baseline = run_clients(args, process, host, port, key, info, pool, {"valid": 1}, args.baseline, 1.0)
            mix = {kind: weight for kind, (weight, _) in KINDS.items()}
            result = run_clients(args, process, host, port, key, info, pool, mix, args.seconds, args.warmup)
            result["baseline"] = baseline and {"valid_latency_ms": baseline["valid_latency_ms"],
                                               "unexpected": baseline["unexpected"]}
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        log_file.seek(0)
        log = log_file.read()
    result["server_log_errors"] = sum(1 for line in log.splitlines()
                                      if "Traceback" in line or line.startswith(("ERROR", "Exception")))
    result["server_log_tail"] = log[-2000:]
    result["goals_met"] = (result["server_errors_5xx"] == 0 and not result["crashed"]
                           and not (result["baseline"] and result["baseline"]["unexpected"])
                           and result["server_log_errors"] == 0 and result["health_after"] == "ok"
                           and result["unexpected"] == 0 and result["clients_stuck"] == 0
                           and result["server_rss_mib"]["growth"] <= 0.10
                           and result["server_rss_mib"]["peak_growth"] <= 0.10)
    return result


def run_clients(args, process, host: str, port: int, key: str, info: dict, pool: list[str], mix: dict[str, int],
                seconds: float, warmup: float) -> dict:
    """`args.clients` clients drawing request kinds with the weights in `mix` for `warmup` + `seconds`."""
    names, weights = list(mix), list(mix.values())
    statuses = {kind: collections.Counter() for kind in mix}
    codes: collections.Counter = collections.Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(args.clients + 1)
    times = {"measure_from": 0.0, "stop_at": 0.0}

    def client(index: int) -> None:
        me = Client(index, host, port, key, info, pool, args.max_request_bytes)
        mine = {kind: collections.Counter() for kind in mix}
        my_latencies = []
        start_gate.wait()
        while (t0 := time.perf_counter()) < times["stop_at"]:
            kind = me.rng.choices(names, weights)[0]
            status = me.run_kind(kind)
            mine[kind]["gone" if status is None else str(status)] += 1
            if kind == "valid" and status == 200 and t0 >= times["measure_from"]:
                my_latencies.append(time.perf_counter() - t0)
        if me.conn:
            me.conn.close()
        with lock:
            for kind in mix:
                statuses[kind].update(mine[kind])
            codes.update(me.codes)
            latencies.extend(my_latencies)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    t0 = time.perf_counter()
    times["measure_from"] = t0 + warmup
    times["stop_at"] = t0 + warmup + seconds
    start_gate.wait()
    time.sleep(warmup)
    rss_start = server_rss_mib(process.pid)
    samples = [rss_start]
    while time.perf_counter() < times["stop_at"] and process.poll() is None:
        time.sleep(min(1.0, max(0.0, times["stop_at"] - time.perf_counter())))
        if process.poll() is None:
            samples.append(server_rss_mib(process.pid))
    for thread in threads:
        thread.join(TIMEOUT)
    crashed = process.poll() is not None
    try:
        after = health(host, port)["status"]
    except (OSError, http.client.HTTPException, ValueError):
        after = "unreachable"
    rss_end = server_rss_mib(process.pid) if not crashed else 0.0
    latencies.sort()
    n = len(latencies)
    kinds = {kind: {"sent": sum(statuses[kind].values()), "expected": expected,
                    "statuses": dict(sorted(statuses[kind].items())),
                    "error_codes": dict(sorted((code, n) for (k, code), n in codes.items() if k == kind))}
             for kind, (_, expected) in KINDS.items() if kind in mix}
    unexpected = sum(count for kind in kinds.values() if kind["expected"] is not None
                     for status, count in kind["statuses"].items() if status != str(kind["expected"]))
    return {
        "args": vars(args), "kinds": kinds, "unexpected": unexpected,
        "server_errors_5xx": sum(count for kind in kinds.values() for status, count in kind["statuses"].items()
                                 if status.isdigit() and int(status) >= 500),
        "crashed": crashed, "health_after": after, "clients_stuck": sum(t.is_alive() for t in threads),
        "valid_latency_ms": {"requests": n, "p50": round(1000 * latencies[n // 2], 1) if n else None,
                             "p99": round(1000 * latencies[min(n - 1, int(0.99 * n))], 1) if n else None},
        "server_rss_mib": {"start": round(rss_start, 1), "end": round(rss_end, 1), "peak": round(max(samples), 1),
                           "samples": [round(x, 1) for x in samples],
                           "growth": round((rss_end - rss_start) / rss_start, 4) if rss_end else float("inf"),
                           "peak_growth": round((max(samples) - rss_start) / rss_start, 4)},
        "model_calls": info.get("model_calls"),
    }


def print_report(args: argparse.Namespace, result: dict) -> None:
    print(f"model {args.model}, {args.clients} clients for {args.seconds:g} s after a {args.warmup:g} s warm-up "
          f"(counts cover both), body cap {args.max_request_bytes} bytes, body timeout {args.body_timeout:g} s, "
          f"server allocator {args.allocator}, "
          f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), clients on the same machine")
    print()
    print("| kind | sent | expected | statuses received | error codes |")
    print("|---|---:|---|---|---|")
    for name, kind in result["kinds"].items():
        got = ", ".join(f"{status}: {count}" for status, count in kind["statuses"].items())
        codes = ", ".join(f"{code}: {count}" for code, count in kind["error_codes"].items())
        expected = kind["expected"] if kind["expected"] is not None else "(client leaves)"
        print(f"| {name} | {kind['sent']} | {expected} | {got} | {codes} |")
    latency, rss = result["valid_latency_ms"], result["server_rss_mib"]
    print()
    print(f"5xx responses: {result['server_errors_5xx']}; unexpected statuses: {result['unexpected']}")
    print(f"server: {'CRASHED' if result['crashed'] else 'alive'}, /health after: {result['health_after']}, "
          f"error lines in its log: {result['server_log_errors']}")
    print(f"valid requests in the measured {args.seconds:g} s: {latency['requests']}, p50 {latency['p50']} ms, "
          f"p99 {latency['p99']} ms")
    if result["baseline"]:
        base = result["baseline"]["valid_latency_ms"]
        print(f"baseline, {args.clients} clients sending valid requests only for {args.baseline:g} s: "
              f"{base['requests']} requests, p50 {base['p50']} ms, p99 {base['p99']} ms, "
              f"{result['baseline']['unexpected']} not 200")
    print(f"server RSS: {rss['start']} MiB after warm-up, {rss['end']} MiB at the end ({100 * rss['growth']:+.1f}%), "
          f"peak sampled {rss['peak']} MiB ({100 * rss['peak_growth']:+.1f}%)")
    print(f"goals: {'met' if result['goals_met'] else 'NOT met'} (no 5xx, no crash, every kind its expected status, "
          "RSS at the end and at its sampled peak at most 10% above the value after warm-up)")
    if result["server_log_errors"]:
        print("server log (end):\n" + result["server_log_tail"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=harness.DEFAULT_MODEL)
    parser.add_argument("--adapter")
    parser.add_argument("--clients", type=int, default=64, help="concurrent client threads")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured time")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="abuse before the measured time (the RSS baseline is taken after it)")
    parser.add_argument("--baseline", type=float, default=10.0,
                        help="seconds of valid requests only first, for the latency without abuse (0: none)")
    parser.add_argument("--max-request-bytes", type=int, default=4 * 1024 * 1024,
                        help="the server's body cap (oversize bodies are twice this)")
    parser.add_argument("--body-timeout", type=float, default=2.0, help="the server's body timeout, seconds")
    parser.add_argument("--allocator", choices=["mimalloc", "system"], default="mimalloc",
                        help="the server's malloc: mimalloc as the embedtune command preloads it, or glibc's")
    parser.add_argument("--quick", action="store_true", help="10 s after a 5 s warm-up, 5 s baseline")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--serve-only", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.serve_only:
        return serve_only(args)
    if args.quick:
        args.seconds, args.warmup, args.baseline = 10.0, 5.0, 5.0
    result = run(args)
    print_report(args, result)
    if args.json:
        harness.write_json(args.json, result)


if __name__ == "__main__":
    main()
