"""Concurrency inside a worker (issue 14): one worker keeps a slow, rate-limited API busy.

A loopback API answers every request after `--latency-ms` (100), and 429 above a strict token
bucket of `--rate` (100/s) and burst 10, checked as each request arrives. Three runs in the same
invocation, each of `--items` (2,000) items, one request per item:

- slurmctl, 1 worker x `concurrency: 16`, a plain `def process` on threads (urllib);
- slurmctl, 1 worker x `concurrency: 16`, an `async def process` on the event loop;
- the baseline: a hand-written asyncio program, a semaphore of 16 and a token bucket (the best a
  user writes by hand), the same raw HTTP client as the async handler.

Reported per run: requests accepted and 429s at the API, the share of the rate used over the
API's busy window (first to last request; goal >= 0.95), the end-to-end wall time (slurmctl:
`submit` to COMPLETED, batching and the final merge included) and its ratio to the baseline's.

    .venv/bin/python bench/concurrency.py                 # 2,000 items, ~20 s per run
    .venv/bin/python bench/concurrency.py --items 500     # quick
    .venv/bin/python bench/concurrency.py --latency-ms 500 --concurrency 64 [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path

JOB_ID = "bench-concurrency"
GOAL_SHARE = 0.95
GOAL_RATIO = 0.9

# --- the API, in a process of its own --------------------------------------------------------


class Api:
    """A strict token bucket at arrival, then the latency, then 200 or 429."""

    def __init__(self, rate: float, burst: int, latency_s: float) -> None:
        self.rate, self.burst, self.latency_s = rate, burst, latency_s
        self.tokens, self.at = float(burst), time.monotonic()
        self.accepted = self.throttled = 0
        self.first = self.last = 0.0

    def admit(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.accepted += 1
            self.first = self.first or now
            self.last = now
            return True
        self.throttled += 1
        return False

    def stats(self) -> dict[str, Any]:
        busy = self.last - self.first
        return {
            "accepted": self.accepted,
            "throttled": self.throttled,
            "busy_s": round(busy, 3),
            # n requests at the rate span (n - burst) / rate seconds once the burst is spent
            "share": round((self.accepted - self.burst) / (busy * self.rate), 4) if busy else 0,
        }

    def reset(self) -> None:
        self.__init__(self.rate, self.burst, self.latency_s)  # type: ignore[misc]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        path = request.split(b" ", 2)[1].decode()
        if path == "/stats":
            code, body = 200, json.dumps(self.stats()).encode()
        elif path == "/reset":
            self.reset()
            code, body = 200, b"{}"
        else:
            ok = self.admit()
            await asyncio.sleep(self.latency_s)
            code, body = (200, b'{"v": 1}') if ok else (429, b"{}")
        head = f"HTTP/1.1 {code} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        try:
            await writer.drain()
        finally:
            writer.close()


async def _serve(port_file: Path, rate: float, burst: int, latency_s: float) -> None:
    api = Api(rate, burst, latency_s)
    server = await asyncio.start_server(api.serve, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    port_file.write_text(str(port))
    async with server:
        await server.serve_forever()


# --- the client every async side uses: one GET, the status --------------------------------

CLIENT = """
import asyncio

async def get(port, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\\r\\nHost: api\\r\\n\\r\\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\\r\\n\\r\\n")
    writer.close()
    return int(head.split(b" ", 2)[1])
"""

THREADS_HANDLER = """
import urllib.error, urllib.request

def process(item, ctx):
    ctx.acquire()
    try:
        with urllib.request.urlopen(ctx.params["url"] + "/item/" + item["id"]) as r:
            r.read()
    except urllib.error.HTTPError as e:
        e.close()
        raise
    return {"id": item["id"]}
"""

ASYNC_HANDLER = (
    CLIENT
    + """
class Throttled(Exception):
    status = 429

async def process(item, ctx):
    await ctx.acquire_async()
    status = await get(ctx.params["port"], "/item/" + item["id"])
    if status != 200:
        raise Throttled(status)
    return {"id": item["id"]}
"""
)

BASELINE = (
    CLIENT
    + """
import json, sys, time

async def main(port, ids, rate, burst, width):
    gate = asyncio.Semaphore(width)
    lock = asyncio.Lock()
    state = {"tokens": float(burst), "at": time.monotonic()}

    async def token():  # a token bucket, as a user writes it
        async with lock:
            while True:
                now = time.monotonic()
                state["tokens"] = min(burst, state["tokens"] + (now - state["at"]) * rate)
                state["at"] = now
                if state["tokens"] >= 1:
                    state["tokens"] -= 1
                    return
                await asyncio.sleep((1 - state["tokens"]) / rate)

    async def one(i):
        async with gate:
            await token()
            return await get(port, "/item/%d" % i)

    statuses = await asyncio.gather(*(one(i) for i in ids))
    print(json.dumps({"ok": statuses.count(200), "failed": len(statuses) - statuses.count(200)}))

port, items, rate, burst, width = map(float, sys.argv[1:])
asyncio.run(main(int(port), range(int(items)), rate, int(burst), int(width)))
"""
)


def _get(port: int, path: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


def _slurmctl_run(
    work: Path, name: str, handler: str, port: int, args: argparse.Namespace
) -> dict[str, Any]:
    folder = work / name
    folder.mkdir(parents=True)
    common.write_items(folder / "input.jsonl", args.items)
    (folder / "bench_handler.py").write_text(textwrap.dedent(handler))
    config = folder / "job.yaml"
    config.write_text(
        f"job_id: {JOB_ID}-{name}\njob_type: bench\nhandler: bench_handler:process\n"
        f"input: input.jsonl\nid_field: id\nbatch_size: {args.batch_size}\nworkers: 1\n"
        f"concurrency: {args.concurrency}\n"
        f'params: {{url: "http://127.0.0.1:{port}", port: {port}}}\n'
        f"rate_limit: {{tokens_per_sec: {args.rate}, burst: {args.burst}}}\n"
        f"scratch: {folder / 'scratch'}\n"
    )
    _get(port, "/reset")
    t0 = time.monotonic()
    run = subprocess.run(
        [
            *common.slurmctl_cmd(),
            "--root",
            str(folder / "root"),
            "submit",
            str(config),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - t0
    if run.returncode != 0:
        raise SystemExit(f"{name}: submit exited {run.returncode}: {run.stderr[-2000:]}")
    return {"wall_s": round(wall, 3), **_get(port, "/stats")}


def _baseline_run(work: Path, port: int, args: argparse.Namespace) -> dict[str, Any]:
    script = work / "baseline.py"
    script.write_text(BASELINE)
    _get(port, "/reset")
    t0 = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            str(port),
            str(args.items),
            str(args.rate),
            str(args.burst),
            str(args.concurrency),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.monotonic() - t0
    return {"wall_s": round(wall, 3), **json.loads(run.stdout), **_get(port, "/stats")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--work", default=None)
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(Path(args.serve), args.rate, args.burst, args.latency_ms / 1000))
        return
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-concurrency-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port_file = work / "port"
    api = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(port_file),
            "--rate",
            str(args.rate),
            "--burst",
            str(args.burst),
            "--latency-ms",
            str(args.latency_ms),
        ],
    )
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline:
                raise SystemExit("the API did not start")
            time.sleep(0.05)
        port = int(port_file.read_text())
        info = common.machine()
        common.header("concurrency inside a worker", info)
        print(
            f"{args.items} items, API latency {args.latency_ms:g} ms, rate {args.rate:g}/s burst "
            f"{args.burst}, concurrency {args.concurrency}, 1 worker, batch {args.batch_size}"
        )
        results = {
            "baseline (asyncio, semaphore + token bucket)": _baseline_run(work, port, args),
            "slurmctl threads": _slurmctl_run(work, "threads", THREADS_HANDLER, port, args),
            "slurmctl async": _slurmctl_run(work, "async", ASYNC_HANDLER, port, args),
        }
    finally:
        api.terminate()
        api.wait()
    base_wall = results["baseline (asyncio, semaphore + token bucket)"]["wall_s"]
    print(f"{'run':46} {'ok':>6} {'429':>5} {'share':>6} {'wall s':>7} {'base/this':>9}")
    for name, r in results.items():
        r["ratio_to_baseline"] = round(base_wall / r["wall_s"], 3)
        print(
            f"{name:46} {r['accepted']:6d} {r['throttled']:5d} {r['share']:6.3f} "
            f"{r['wall_s']:7.2f} {r['ratio_to_baseline']:9.3f}"
        )
    print(f"goals: share >= {GOAL_SHARE}, 429s 0, wall ratio (baseline / slurmctl) >= {GOAL_RATIO}")
    path = common.save("concurrency", {"args": vars(args), "machine": info, "results": results})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
