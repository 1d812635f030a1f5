"""Concurrency inside a worker (issue 14): one worker keeps a slow, rate-limited API busy.

A loopback API answers every request after `--latency-ms` (100), and 429 above a strict token
bucket of `--rate` (100/s) and burst 10, checked as each request arrives. Three runs in the same
invocation, each of `--items` (2,000) items, one request per item:

- slurmctl, 1 worker x `concurrency: 16`, a plain `def process` on threads (urllib);
- slurmctl, 1 worker x `concurrency: 16`, an `async def process` on the event loop;
- the baseline: a hand-written asyncio program, a semaphore of 16 and a token bucket (the best a
  user writes by hand), the same raw HTTP client as the async handler.

- with `--workers16`, slurmctl with 16 workers x `concurrency: 1` (the same sync handler, in
  batches of at most items / 80, so that every worker has 5 tasks): what the same throughput
  costs without concurrency inside a worker.

An item the API answers 429 fails as `throttled` and is retried in a retry phase after
`retry.backoff_s: 1` (the default 30 s would make one stray 429 the wall time's largest part).
Reported per run: requests accepted and 429s at the API, the share of the rate used over the
API's busy window (first to last request; goal >= 0.95), the API's items/s over that window,
the end-to-end wall time (slurmctl: `submit` to COMPLETED, batching and the final merge
included) and its ratio to the baseline's, and the peak RSS (the sum over the worker processes
at each 0.1 s sample, psutil) and CPU seconds (user + system, summed) of the worker(s); for the
baseline, of its one process; "lead" is the time from the start to the first request, "tail"
from the last request to the end (slurmctl: the batching, the worker's start, the merge).

    .venv/bin/python bench/concurrency.py --workers16     # 2,000 items, ~20 s per run
    .venv/bin/python bench/concurrency.py --items 500     # quick
    .venv/bin/python bench/concurrency.py --latency-ms 500 --concurrency 64 [--batch-size 1000]
    .venv/bin/python bench/concurrency.py --no-rate-limit --latency-ms 1000 --concurrency 256 \
        --only async --items 5000                         # goal: >= 200 items/s from one worker
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
import threading
import time
from pathlib import Path
from typing import Any

import common  # bench/common.py: the script's folder is on sys.path

JOB_ID = "bench-concurrency"
NO_LIMIT = 1e9
"""The API's bucket with `--no-rate-limit`: nothing is ever refused."""
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
            "share": round((self.accepted - self.burst) / (busy * self.rate), 4)
            if busy and self.rate < NO_LIMIT
            else None,
            "items_per_s": round((self.accepted - 1) / busy, 1) if busy else 0,
            "first_at": self.first,
            "last_at": self.last,
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
        if rate <= 0:
            return
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


class Footprint:
    """Peak RSS (summed over the watched processes at each sample) and CPU seconds (summed,
    each process's last reading) of a process tree's workers, sampled every 0.1 s."""

    def __init__(self, root_pid: int, worker_only: bool) -> None:
        import psutil

        self.psutil, self.root = psutil, psutil.Process(root_pid)
        self.worker_only = worker_only
        self.peak_rss = 0
        self.cpu: dict[int, float] = {}

    def _watched(self) -> list[Any]:
        if not self.worker_only:
            return [self.root]
        try:
            kids = self.root.children(recursive=True)
        except self.psutil.Error:
            return []
        out = []
        for p in kids:
            try:
                if "worker" in p.cmdline():
                    out.append(p)
            except self.psutil.Error:
                continue
        return out

    def sample(self) -> None:
        rss = 0
        for p in self._watched():
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
            except self.psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)

    def figures(self) -> dict[str, Any]:
        return {
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
            "cpu_s": round(sum(self.cpu.values()), 2),
            "processes": len(self.cpu),
        }


def _watched_run(
    cmd: list[str], worker_only: bool
) -> tuple[subprocess.CompletedProcess[str], float, dict[str, Any]]:
    """The command run to its end, sampled; (its result, wall seconds, footprint and the
    monotonic start and end, for the time before the first request and after the last)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fp = Footprint(proc.pid, worker_only)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.communicate()), daemon=True)
    reader.start()
    while proc.poll() is None:
        fp.sample()
        time.sleep(0.1)
    reader.join()
    end = time.monotonic()
    done = subprocess.CompletedProcess(cmd, proc.returncode, out[0], out[1])
    return done, end - t0, {**fp.figures(), "started_at": t0, "ended_at": end}


def _slurmctl_run(
    work: Path,
    name: str,
    handler: str,
    port: int,
    args: argparse.Namespace,
    workers: int = 1,
    concurrency: int | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    folder = work / name
    folder.mkdir(parents=True)
    common.write_items(folder / "input.jsonl", args.items)
    (folder / "bench_handler.py").write_text(textwrap.dedent(handler))
    config = folder / "job.yaml"
    config.write_text(
        f"job_id: {JOB_ID}-{name}\njob_type: bench\nhandler: bench_handler:process\n"
        f"input: input.jsonl\nid_field: id\nbatch_size: {batch_size or args.batch_size}\n"
        f"workers: {workers}\n"
        f"concurrency: {args.concurrency if concurrency is None else concurrency}\n"
        f'params: {{url: "http://127.0.0.1:{port}", port: {port}}}\n'
        + (
            ""
            if args.no_rate_limit
            else f"rate_limit: {{tokens_per_sec: {args.rate}, burst: {args.burst}}}\n"
        )
        # a stray 429 (arrival jitter on a loaded machine) is retried after 1 s, not 30
        + "retry: {backoff_s: 1}\n"
        + f"scratch: {folder / 'scratch'}\n"
    )
    _get(port, "/reset")
    cmd = [
        *common.slurmctl_cmd(),
        "--root",
        str(folder / "root"),
        "submit",
        str(config),
        "--no-progress",
    ]
    run, wall, footprint = _watched_run(cmd, worker_only=True)
    if run.returncode != 0:
        raise SystemExit(f"{name}: submit exited {run.returncode}: {run.stderr[-2000:]}")
    return {"wall_s": round(wall, 3), **_get(port, "/stats"), **footprint}


def _baseline_run(work: Path, port: int, args: argparse.Namespace) -> dict[str, Any]:
    script = work / "baseline.py"
    script.write_text(BASELINE)
    _get(port, "/reset")
    rate = 0 if args.no_rate_limit else args.rate
    cmd = [
        sys.executable,
        str(script),
        *map(str, (port, args.items, rate, args.burst, args.concurrency)),
    ]
    run, wall, footprint = _watched_run(cmd, worker_only=False)
    if run.returncode != 0:
        raise SystemExit(f"baseline exited {run.returncode}: {run.stderr[-2000:]}")
    return {"wall_s": round(wall, 3), **json.loads(run.stdout), **_get(port, "/stats"), **footprint}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--no-rate-limit", action="store_true", help="no bucket, anywhere")
    parser.add_argument("--workers16", action="store_true", help="also 16 workers x 1")
    parser.add_argument(
        "--only", choices=["threads", "async"], default=None, help="baseline and this one"
    )
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
            str(NO_LIMIT if args.no_rate_limit else args.rate),
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
        limit = (
            "no rate limit" if args.no_rate_limit else f"rate {args.rate:g}/s burst {args.burst}"
        )
        print(
            f"{args.items} items, API latency {args.latency_ms:g} ms, {limit}, concurrency "
            f"{args.concurrency}, 1 worker, batch {args.batch_size}"
        )
        results = {"baseline (asyncio, semaphore + token bucket)": _baseline_run(work, port, args)}
        if args.only in (None, "threads"):
            results["slurmctl threads"] = _slurmctl_run(
                work, "threads", THREADS_HANDLER, port, args
            )
        if args.only in (None, "async"):
            results["slurmctl async"] = _slurmctl_run(work, "async", ASYNC_HANDLER, port, args)
        if args.workers16:
            results["slurmctl 16 workers x 1"] = _slurmctl_run(
                work,
                "workers16",
                THREADS_HANDLER,
                port,
                args,
                workers=16,
                concurrency=1,
                # at least 5 tasks per worker, so that all 16 stay busy to the end
                batch_size=max(1, min(args.batch_size, args.items // 80)),
            )
    finally:
        api.terminate()
        api.wait()
    for r in results.values():  # CLOCK_MONOTONIC is the machine's: the API's stamps compare
        r["before_first_s"] = round(r.pop("first_at") - r.pop("started_at"), 3)
        r["after_last_s"] = round(r.pop("ended_at") - r.pop("last_at"), 3)
    base_wall = results["baseline (asyncio, semaphore + token bucket)"]["wall_s"]
    print(
        f"{'run':46} {'ok':>6} {'429':>5} {'share':>6} {'items/s':>8} {'wall s':>7} "
        f"{'base/this':>9} {'RSS MB':>7} {'CPU s':>6} {'lead s':>6} {'tail s':>6}"
    )
    for name, r in results.items():
        r["ratio_to_baseline"] = round(base_wall / r["wall_s"], 3)
        share = "-" if r["share"] is None else f"{r['share']:.3f}"
        print(
            f"{name:46} {r['accepted']:6d} {r['throttled']:5d} {share:>6} "
            f"{r['items_per_s']:8.1f} {r['wall_s']:7.2f} {r['ratio_to_baseline']:9.3f} "
            f"{r['peak_rss_mb']:7.1f} {r['cpu_s']:6.2f} {r['before_first_s']:6.2f} "
            f"{r['after_last_s']:6.2f}"
        )
    print(f"goals: share >= {GOAL_SHARE}, 429s 0, wall ratio (baseline / slurmctl) >= {GOAL_RATIO}")
    path = common.save("concurrency", {"args": vars(args), "machine": info, "results": results})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
