"""Request accounting on the AWS backend (moto): requests, DynamoDB units by key, caps and cost.

A job through the real CLI (`slurmctl init`, `slurmctl submit`, 2 local workers, no-op handler)
against a moto server whose WSGI stack adds one accounting layer *inside* the tests' DynamoDB
lock (tests/moto_launch.py): every request is counted by service and operation, and every
DynamoDB request is costed as AWS bills it, from the items moto holds just before and just after
it (so the sizes are the real stored sizes, not guesses):

- writes: 1 WCU per 1 KB (rounded up, at least 1) of the larger of the item before and after,
  x2 inside TransactWriteItems (ConditionCheck included); a failed condition still pays;
- the KEYS_ONLY GSI: 1 WCU per index entry added or removed, on the index's partition key
  (an update that leaves the index keys alone costs the index nothing);
- reads: 1 RCU per 4 KB (rounded up, at least 1) strongly consistent, half that eventually
  consistent (a GSI query always is); a Query is billed on the summed size of what it read.

Each unit is charged to the partition key it lands on (`JOB#<job>`, `JOB#<job>#C#3`,
`gsi:unfinished:JOB#<job>`, ...; the job's id is shown as `<job>`). AWS's per-partition limits
(1,000 WCU/s, 3,000 RCU/s; a single item can never exceed them) then give the job's cap:
tasks/s <= min(1000 / hottest key's WCU per task, 3000 / hottest key's RCU per task).
Some reads are made per second, not per task (each worker's poll of the job record, `submit`'s
status checks): on moto's few tasks a second they weigh on the per-task RCU of a short run
(2,000 items: the cap comes out by RCU), so the figures of record are at 10,000 items and more.

    .venv/bin/python bench/request_costs.py --items 10000      # 100 tasks at batch 100 (~1 min)
    .venv/bin/python bench/request_costs.py --items 100000     # 1,000 tasks (several minutes)
    .venv/bin/python bench/request_costs.py --reconcile   # one reconciler pass, 1,000 unfinished
    .venv/bin/python bench/request_costs.py --heartbeats  # 200 running tasks, 8 heartbeats each
    .venv/bin/python bench/request_costs.py --long-job         # a task's writes after 10 hours

`--long-job` measures a task's claim, commit and metrics update once the time series has grown
to 10 hours' worth. `--heartbeats` measures what a running task's heartbeats cost (a task of 4
minutes at the default lease: 8 of them). `--reconcile` measures one pass of
`slurmctl.backends.reconcile.reconcile` (what an idle worker and finalize run) on a job of
1,000 RUNNING tasks of which 10 have an expired lease.

Results: bench/out/requests-<N>.json (and a dated copy).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import capacity  # the accounting layer of the moto server (bench/capacity.py)
import common  # bench/common.py: the script's folder is on sys.path
import scale_aws  # the worker watch, the job's AWS section

# This script's name shadows the `requests` package (which moto imports): its folder leaves
# sys.path once the two bench modules above are in.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

JOB_ID = "bench-requests"
PARTITION_WCU_S = 1000.0
PARTITION_RCU_S = 3000.0
PRICES_DATE = "2024-11-01"
PRICES = {
    "dynamodb_wru": 0.625 / 1e6,  # on-demand write request unit (after the 50% cut of Nov 2024)
    "dynamodb_rru": 0.125 / 1e6,  # on-demand read request unit (ditto)
    "s3_put": 0.005 / 1e3,  # PUT, COPY, POST, LIST (S3 Standard)
    "s3_get": 0.0004 / 1e3,  # GET, HEAD and the others (DELETE is free)
    "sqs": 0.40 / 1e6,  # standard queue, per request of up to 64 KB (a batch of 10 is one)
}
"""us-east-1 list prices in force since PRICES_DATE: DynamoDB on-demand was cut by 50% from
2024-11-01 (announced 2024-11-14: $1.25 -> $0.625 per million WRU, $0.25 -> $0.125 per million
RRU); the S3 Standard and SQS request prices did not change then (aws.amazon.com/dynamodb/
pricing/on-demand, /s3/pricing, /sqs/pricing). Not re-checked from this machine (no internet).
Free tiers ignored (SQS's first million requests a month, DynamoDB's and S3's)."""


def prices_line() -> str:
    """The prices as the report prints them (from PRICES, so the two cannot disagree)."""
    p = PRICES
    return (
        f"us-east-1 list prices in force since {PRICES_DATE}: DynamoDB on-demand "
        f"${p['dynamodb_wru'] * 1e6:g}/M WRU, ${p['dynamodb_rru'] * 1e6:g}/M RRU; S3 Standard "
        f"${p['s3_put'] * 1e3:g}/1k PUT/COPY/POST/LIST, ${p['s3_get'] * 1e3:g}/1k GET/HEAD; "
        f"SQS ${p['sqs'] * 1e6:.2f}/M requests; free tiers ignored"
    )


class Server(scale_aws.Server):
    """scale_aws's server process, started as this script (its accounting stack)."""

    script = __file__

    def probe(self) -> None:
        self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + capacity.COUNTS_PATH, timeout=30) as resp:
            return dict(json.loads(resp.read()))


# --- the report -------------------------------------------------------------------------------
def _diff(after: list[list[Any]], before: list[list[Any]]) -> list[list[Any]]:
    seen = {tuple(r[:-1]): r[-1] for r in before}
    out = []
    for r in after:
        n = r[-1] - seen.get(tuple(r[:-1]), 0)
        if n:
            out.append([*r[:-1], n])
    return out


def _norm(key: str) -> str:
    return key.replace(JOB_ID, "<job>")


def _s3_kind(path: str) -> str:
    """An S3 object key as a kind: the bucket and the job id dropped, every run of digits (task
    ids, tokens, batch ids, levels, times) and every long hex string as `N`."""
    key = path.lstrip("/").split("/", 1)[-1].replace(JOB_ID, "<job>")
    key = re.sub(r"[0-9a-f]{16,}", "N", key)
    return re.sub(r"\d+", "N", key)


def _s3_puts(rows: list[list[Any]], tasks: int) -> dict[str, float]:
    """PUT-class object requests per task by kind of key, most first."""
    by: Counter[str] = Counter()
    for _s, op, path, n in rows:
        if _s3_put_class(f"s3 {op}"):
            by[_s3_kind(str(path))] += n
    return {k: round(n / tasks, 4) for k, n in by.most_common()}


def _step(second: int, marks: dict[str, float | None]) -> str:
    submitted = marks.get("submitted") or 0.0
    gone = marks.get("workers_gone") or float("inf")
    if second < int(submitted):
        return "submit"
    return "workers" if second < gone // 1 else "finalize"


def _cost(by_op: Counter[str], wcu: float, rcu: float) -> dict[str, float]:
    s3_put = sum(n for k, n in by_op.items() if k.startswith("s3 ") and _s3_put_class(k))
    s3_get = sum(
        n
        for k, n in by_op.items()
        if k.startswith("s3 ") and not _s3_put_class(k) and " DELETE" not in k
    )
    sqs = sum(n for k, n in by_op.items() if k.startswith("sqs "))
    return {
        "dynamodb": wcu * PRICES["dynamodb_wru"] + rcu * PRICES["dynamodb_rru"],
        "s3": s3_put * PRICES["s3_put"] + s3_get * PRICES["s3_get"],
        "sqs": sqs * PRICES["sqs"],
    }


def _s3_put_class(op: str) -> bool:
    return any(w in op for w in (" PUT", " POST", "list-type")) or op.endswith("GET bucket")


def report(
    snap0: dict[str, Any],
    snap1: dict[str, Any],
    marks: dict[str, float | None],
    tasks: int,
    items: int,
) -> dict[str, Any]:
    reqs = _diff(snap1["requests"], snap0["requests"])
    unit_rows = _diff(snap1["units"], snap0["units"])
    item_rows = _diff(snap1["items"], snap0["items"])
    key_rows = _diff(snap1.get("s3_keys", []), snap0.get("s3_keys", []))
    by_op: Counter[str] = Counter()
    by_service: Counter[str] = Counter()
    by_step: dict[str, Counter[str]] = defaultdict(Counter)
    for s, svc, op, n in reqs:
        by_op[f"{svc} {op}"] += n
        by_service[svc] += n
        by_step[_step(s, marks)][svc] += n
    per_key: dict[str, Counter[str]] = defaultdict(Counter)
    per_key_step: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for s, key, kind, n in unit_rows:
        per_key[kind][_norm(key)] += n
        per_key_step[_step(s, marks)][kind][_norm(key)] += n
    wcu_total = sum(per_key["wcu"].values())
    rcu_total = sum(per_key["rcu"].values())
    hot_w = per_key["wcu"].most_common(1)[0] if per_key["wcu"] else ("-", 0)
    hot_r = per_key["rcu"].most_common(1)[0] if per_key["rcu"] else ("-", 0)
    hot_item: list[Any] = max(item_rows, key=lambda r: r[-1]) if item_rows else ["-", "wcu", 0]
    w_task, r_task = hot_w[1] / tasks, hot_r[1] / tasks
    cap_w = PARTITION_WCU_S / w_task if w_task else math.inf
    cap_r = PARTITION_RCU_S / r_task if r_task else math.inf
    cost = _cost(by_op, wcu_total, rcu_total)
    per_m = {k: round(v / items * 1e6, 4) for k, v in cost.items()}
    k16 = _k16(per_key["wcu"], tasks)
    return {
        "tasks": tasks,
        "items": items,
        "requests_per_task": {k: round(n / tasks, 3) for k, n in sorted(by_service.items())},
        "requests_per_task_by_step": {
            st: {k: round(n / tasks, 3) for k, n in sorted(c.items())} for st, c in by_step.items()
        },
        "requests_per_task_by_operation": {k: round(n / tasks, 3) for k, n in by_op.most_common()},
        "s3_puts_per_task_by_key": _s3_puts(key_rows, tasks),
        "wcu_per_task": round(wcu_total / tasks, 3),
        "rcu_per_task": round(rcu_total / tasks, 3),
        "wcu_per_task_by_key": {k: round(n / tasks, 3) for k, n in per_key["wcu"].most_common()},
        "rcu_per_task_by_key": {k: round(n / tasks, 3) for k, n in per_key["rcu"].most_common()},
        "wcu_per_task_by_key_by_step": {
            st: {k: round(n / tasks, 3) for k, n in d["wcu"].most_common(8)}
            for st, d in per_key_step.items()
        },
        "partition_keys_written": len(per_key["wcu"]),
        "hottest_wcu_key": [hot_w[0], round(w_task, 3)],
        "hottest_rcu_key": [hot_r[0], round(r_task, 3)],
        "hottest_item": [_norm(str(hot_item[0])), round(hot_item[-1] / tasks, 3)],
        "cap_tasks_per_s": round(min(cap_w, cap_r), 1),
        "cap_by": "wcu" if cap_w <= cap_r else "rcu",
        "task_keys": len([k for k in per_key["wcu"] if "#T#" in k]),
        "cap_tasks_per_s_at_k16_by_wcu": k16,
        "usd_per_million_items": per_m,
        "usd_per_million_items_total": round(sum(per_m.values()), 4),
        "prices": {"in_force_since": PRICES_DATE, "region": "us-east-1", **PRICES},
    }


def _k16(wcu: Counter[str], tasks: int) -> float:
    """The WCU cap of a job whose K is 16 (a large job's, since K comes from the job's size:
    a small job's few task keys hold its few tasks, which cannot throttle them): the task and
    index keys' WCU per task spread over 16 keys, every other key as measured."""
    spread = {"task": 0.0, "index": 0.0}
    hottest = 0.0
    for key, n in wcu.items():
        if "#T#" in key:
            spread["task"] += n / tasks
        elif "#U#" in key:
            spread["index"] += n / tasks
        else:
            hottest = max(hottest, n / tasks)
    worst = max(spread["task"] / 16, spread["index"] / 16, hottest)
    return round(PARTITION_WCU_S / worst, 1) if worst else math.inf


def print_report(r: dict[str, Any], title: str) -> None:
    print(f"   {title}")
    print(
        "   requests per task: " + ", ".join(f"{k} {v}" for k, v in r["requests_per_task"].items())
    )
    for step, c in r["requests_per_task_by_step"].items():
        print(f"     {step:8}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    ops = list(r["requests_per_task_by_operation"].items())[:14]
    print("   by operation: " + ", ".join(f"{k} {v}" for k, v in ops))
    puts = list(r["s3_puts_per_task_by_key"].items())
    print("   S3 PUTs per task by key: " + ", ".join(f"{k} {v}" for k, v in puts[:12]))
    print(f"   DynamoDB per task: {r['wcu_per_task']} WCU, {r['rcu_per_task']} RCU")
    for kind in ("wcu", "rcu"):
        keys = list(r[f"{kind}_per_task_by_key"].items())[:10]
        print(f"   {kind.upper()} per task by key: " + ", ".join(f"{k} {v}" for k, v in keys))
    print(
        f"   partition keys written: {r['partition_keys_written']}; hottest key "
        f"{r['hottest_wcu_key'][0]} {r['hottest_wcu_key'][1]} WCU/task, "
        f"{r['hottest_rcu_key'][0]} {r['hottest_rcu_key'][1]} RCU/task; hottest item "
        f"{r['hottest_item'][0]} {r['hottest_item'][1]} WCU/task"
    )
    print(
        f"   cap: {r['cap_tasks_per_s']:,} tasks/s per job (by {r['cap_by']}; 1,000 WCU/s and "
        f"3,000 RCU/s per partition) at its {r['task_keys']} task keys; at K = 16: "
        f"{r['cap_tasks_per_s_at_k16_by_wcu']:,} tasks/s by WCU"
    )
    cost = ", ".join(f"{k} ${v}" for k, v in r["usd_per_million_items"].items())
    print(f"   $ per million items: {cost}, total ${r['usd_per_million_items_total']}")
    print(f"   ({prices_line()})")


# --- the job run -------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = {**os.environ, **scale_aws.FAKE_ENV, "PYTHONUNBUFFERED": "1"}
    for name in list(env):
        if name == "AWS_PROFILE" or name.startswith("AWS_ENDPOINT_URL"):
            del env[name]
    os.environ.update(scale_aws.FAKE_ENV)
    return env


def _init(root: Path, config: Path, env: dict[str, str]) -> None:
    init = subprocess.run(
        [*common.slurmctl_cmd(), "--root", str(root), "init", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if init.returncode != 0:
        raise SystemExit(f"slurmctl init failed:\n{init.stderr[-2000:]}")


def _config(folder: Path, url: str, args: argparse.Namespace) -> Path:
    config = common.write_job(
        folder, job_id=JOB_ID, batch_size=args.batch_size, workers=args.workers
    )
    name = f"bench-req-{os.getpid()}"
    config.write_text(
        config.read_text()
        + "backend: aws\n"
        + f"aws: {{bucket: {name}, table: {name}, region: us-east-1, endpoint_url: '{url}', "
        + "prefix: slurmctl/}\n"
    )
    return config


def run_job(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    env = _env()
    server = Server(work / "moto.log")
    try:
        folder = work / "job"
        common.write_items(folder / "input.jsonl", args.items)
        config = _config(folder, server.url, args)
        root = work / "root"
        _init(root, config, env)
        snap0 = server.snapshot()
        cmd = [*common.slurmctl_cmd(), "--root", str(root), "submit", str(config), "--no-progress"]
        t0 = time.perf_counter()
        marks: dict[str, float | None] = {"submitted": None, "workers_gone": None}
        with open(work / "submit.stderr", "wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
            watch = scale_aws.WorkerWatch(proc.pid, lambda: 0.0)
            assert proc.stdout is not None
            for raw in proc.stdout:
                if raw.decode(errors="replace").rstrip().endswith(" submitted"):
                    marks["submitted"] = time.time()
            code = proc.wait()
        marks["workers_gone"] = watch.close()
        wall = time.perf_counter() - t0
        if code != 0:
            err_text = (work / "submit.stderr").read_text()[-3000:]
            raise SystemExit(f"submit failed ({code}):\n{err_text}")
        status = common.cli_json(root, "status", JOB_ID, env=env)
        snap1 = server.snapshot()
    finally:
        server.stop()
    tasks = -(-args.items // args.batch_size)
    r = report(snap0, snap1, marks, tasks, args.items)
    r |= {"wall_s": round(wall, 1), "status": status["status"], "rows": status.get("rows")}
    return r


def run_reconcile(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One reconciler pass over 1,000 RUNNING tasks of which 10 hold an expired lease."""
    env = _env()
    server = Server(work / "moto.log")
    try:
        folder = work / "job"
        common.write_items(folder / "input.jsonl", 10)
        config = _config(folder, server.url, args)
        _init(work / "root", config, env)
        sys.path.insert(0, str(common.REPO))
        from slurmctl.backends.aws import open_aws
        from slurmctl.backends.reconcile import reconcile
        from slurmctl.backends.statestore import JobRecord, TaskRecord
        from slurmctl.states import JobStatus

        name = f"bench-req-{os.getpid()}"
        backend = open_aws(name, name, "us-east-1", server.url)
        state = backend.state
        n, expired = args.unfinished, args.expired
        job = JobRecord(JOB_ID, JobStatus.RUNNING, task_count=n, backend="aws", workers=2)
        state.create_job(job, expected_tasks=n)  # K from the job's size: what submit does
        tasks = [
            TaskRecord(JOB_ID, f"task-{i:06d}", f"b{i}", "initial", "g", 100, f"k{i}", "s")
            for i in range(n)
        ]
        state.put_tasks(tasks)
        now = time.time()
        every = max(1, n // max(1, expired))
        for i, t in enumerate(tasks):
            lapsed = i % every == 0 and i // every < expired  # claimed 200 s ago, 100 s lease
            at, lease_s = (now - 200, 100.0) if lapsed else (now, 3600.0)
            state.claim_task(JOB_ID, t.task_id, "w", f"tok{i}", lease_s, at)
        state.update_job(JOB_ID, {}, counter_deltas={"initial.tasks.PENDING": n})  # counted
        backend.queue.create_queue(JOB_ID)
        snap0 = server.snapshot()
        got = reconcile(backend, JOB_ID, "initial", now=now)
        snap1 = server.snapshot()
        turns = _turns(backend, server, now)
        shards = state.task_shards(JOB_ID)  # type: ignore[attr-defined]
        backend.close()
    finally:
        server.stop()
    r = report(snap0, snap1, {"submitted": None, "workers_gone": None}, 1, 1)
    return {
        "turns": turns,
        "task_shards": shards,
        "unfinished": n,
        "expired": expired,
        "requeued": got.requeued,
        "requests": r["requests_per_task_by_operation"],
        "wcu": r["wcu_per_task"],
        "rcu": r["rcu_per_task"],
        "rcu_by_key": r["rcu_per_task_by_key"],
        "wcu_by_key": r["wcu_per_task_by_key"],
    }


def run_heartbeats(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """--heartbeats: the DynamoDB units of a running task's heartbeats, N tasks claimed under a
    lease of lease_s, each heartbeating every heartbeat_s (the defaults: 120 s, 30 s) for
    --rounds rounds; the clock is the one given to the store, so no waiting."""
    env = _env()
    server = Server(work / "moto.log")
    try:
        folder = work / "job"
        common.write_items(folder / "input.jsonl", 10)
        config = _config(folder, server.url, args)
        _init(work / "root", config, env)
        sys.path.insert(0, str(common.REPO))
        from slurmctl.backends.aws import open_aws
        from slurmctl.backends.statestore import JobRecord, TaskRecord
        from slurmctl.states import JobStatus

        name = f"bench-req-{os.getpid()}"
        backend = open_aws(name, name, "us-east-1", server.url)
        state = backend.state
        n, lease_s, every = args.unfinished, 120.0, 30.0
        state.create_job(JobRecord(JOB_ID, JobStatus.RUNNING, task_count=n, backend="aws"))
        tasks = [
            TaskRecord(JOB_ID, f"task-{i:06d}", f"b{i}", "initial", "g", 100, f"k{i}", "s")
            for i in range(n)
        ]
        state.put_tasks(tasks)
        now = time.time()
        for i, t in enumerate(tasks):  # claimed over one heartbeat period, as workers do
            state.claim_task(JOB_ID, t.task_id, "w", f"tok{i}", lease_s, now + i * every / n)
        snap0 = server.snapshot()
        for beat in range(1, args.rounds + 1):
            for i, t in enumerate(tasks):
                at = now + i * every / n + beat * every
                assert state.heartbeat(JOB_ID, t.task_id, f"tok{i}", lease_s, at)
        snap1 = server.snapshot()
        backend.close()
    finally:
        server.stop()
    beats = n * args.rounds
    r = report(snap0, snap1, {"submitted": None, "workers_gone": None}, beats, beats)
    groups: Counter[str] = Counter()
    for k, v in r["wcu_per_task_by_key"].items():
        groups["index" if k.startswith("gsi:") else "task"] += v
    return {
        "tasks": n,
        "rounds": args.rounds,
        "lease_s": lease_s,
        "heartbeat_s": every,
        "wcu_per_heartbeat": r["wcu_per_task"],
        "wcu_per_heartbeat_by_kind": {k: round(v, 3) for k, v in groups.items()},
        "requests_per_heartbeat": r["requests_per_task_by_operation"],
    }


def run_long_job(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """--long-job: a task's claim, commit and metrics update on a job whose counter-only
    updates have spread a 10-hour time series (224 points of `obs.ts.items.*`, ~4 KB) over
    every shard they land on: what the per-task figures become late in a long job."""
    env = _env()
    server = Server(work / "moto.log")
    try:
        folder = work / "job"
        common.write_items(folder / "input.jsonl", 10)
        config = _config(folder, server.url, args)
        _init(work / "root", config, env)
        sys.path.insert(0, str(common.REPO))
        from slurmctl.backends.aws import open_aws
        from slurmctl.backends.statestore import JobRecord, TaskCommit, TaskRecord
        from slurmctl.states import JobStatus

        name = f"bench-req-{os.getpid()}"
        backend = open_aws(name, name, "us-east-1", server.url)
        state = backend.state
        n = min(args.unfinished, 200)
        state.create_job(JobRecord(JOB_ID, JobStatus.RUNNING, task_count=n, backend="aws"))
        tasks = [
            TaskRecord(JOB_ID, f"task-{i:06d}", f"b{i}", "initial", "g", 100, f"k{i}", "s")
            for i in range(n)
        ]
        state.put_tasks(tasks)
        series = [f"obs.ts.items.{i // 32}.{i}" for i in range(224)]
        for _ in range(48):  # every random shard ends up with the whole series
            for start in range(0, len(series), 16):
                chunk = series[start : start + 16]
                state.update_job(JOB_ID, {}, counter_deltas=dict.fromkeys(chunk, 1000))
        now = time.time()
        snap0 = server.snapshot()
        commit = TaskCommit("out", "s" * 64, 100, "err", "e" * 64, 100, 0, 0, now)
        for i, t in enumerate(tasks):
            state.claim_task(JOB_ID, t.task_id, "w", f"tok{i}", 120.0, now)
            state.commit_task(JOB_ID, t.task_id, f"tok{i}", commit)
            deltas = {"obs.tasks": 1, "obs.wall_ms": 1200, series[-1]: 100}
            state.update_job(JOB_ID, {}, counter_deltas=deltas)
        snap1 = server.snapshot()
        backend.close()
    finally:
        server.stop()
    r = report(snap0, snap1, {"submitted": None, "workers_gone": None}, n, n)
    groups: Counter[str] = Counter()
    for k, v in r["wcu_per_task_by_key"].items():
        groups[re.sub(r"#\d+$", "#<k>", k)] += v
    return {
        "tasks": n,
        "wcu_per_task": r["wcu_per_task"],
        "wcu_per_task_by_key_kind": {k: round(v, 3) for k, v in groups.most_common()},
        "hottest_item": r["hottest_item"],
    }


def _turns(backend: Any, server: Server, now: float) -> dict[str, Any]:
    """What an idle worker's offer to reconcile costs beyond the pass: the turn taken, and the
    turn refused (another worker holds it): units and requests, when the code has turns."""
    try:
        from slurmctl.backends.reconcile import Turn, take_turn
    except ImportError:  # the layout before issue 16: every idle worker reconciled
        return {}
    out: dict[str, Any] = {}
    for name, holder in (("taken", "w1"), ("refused", "w2")):
        a = server.snapshot()
        take_turn(backend.state, JOB_ID, Turn(holder, 30.0), now)
        r = report(a, server.snapshot(), {"submitted": None, "workers_gone": None}, 1, 1)
        out[name] = {"wcu": r["wcu_per_task"], "rcu": r["rcu_per_task"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reconcile", action="store_true", help="measure one reconciler pass")
    ap.add_argument("--heartbeats", action="store_true", help="measure running tasks' heartbeats")
    ap.add_argument("--long-job", action="store_true", help="a task's writes late in a long job")
    ap.add_argument("--rounds", type=int, default=8, help="--heartbeats: heartbeats per task")
    ap.add_argument("--unfinished", type=int, default=1000)
    ap.add_argument("--expired", type=int, default=10)
    ap.add_argument("--tmp", help="folder for the inputs and outputs (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: the moto server
    args = ap.parse_args()
    if args.serve:
        capacity.serve(args.serve)
        return
    info = common.machine()
    work = common.work_dir(args.tmp, "requests")
    result: dict[str, Any] = {"args": vars(args), "machine": info}
    try:
        if args.long_job:
            common.header(
                "a task's claim, commit and metrics late in a 10-hour job on AWS (moto): a "
                "224-point time series in the shards",
                info,
            )
            result["long_job"] = r = run_long_job(args, work)
            print(
                f"   WCU per task: {r['wcu_per_task']} ({r['wcu_per_task_by_key_kind']}); "
                f"hottest item {r['hottest_item']}"
            )
            name = "requests-long-job"
        elif args.heartbeats:
            n = min(args.unfinished, 200)
            args.unfinished = n
            common.header(
                f"heartbeats on AWS (moto): {n} running tasks, {args.rounds} heartbeats each "
                "(lease 120 s, heartbeat every 30 s)",
                info,
            )
            result["heartbeats"] = r = run_heartbeats(args, work)
            print(
                f"   WCU per heartbeat: {r['wcu_per_heartbeat']} "
                f"({r['wcu_per_heartbeat_by_kind']}); requests {r['requests_per_heartbeat']}"
            )
            name = "requests-heartbeats"
        elif args.reconcile:
            common.header(
                f"reconciler pass on AWS (moto): {args.unfinished} unfinished tasks, "
                f"{args.expired} expired",
                info,
            )
            result["reconcile"] = r = run_reconcile(args, work)
            print(f"   K = {r['task_shards']}; requeued {r['requeued']}; requests: {r['requests']}")
            print(f"   WCU {r['wcu']}, RCU {r['rcu']} per pass; RCU by key {r['rcu_by_key']}")
            if r["turns"]:
                print(f"   an idle worker's turn, beyond the pass: {r['turns']}")
            name = "requests-reconcile"
        else:
            tasks = -(-args.items // args.batch_size)
            common.header(
                f"request accounting on AWS (moto): {args.items:,} items, batch_size "
                f"{args.batch_size} ({tasks:,} tasks), {args.workers} workers, no-op handler",
                info,
            )
            with common.Monitor() as mon:
                result["slurmctl"] = r = run_job(args, work)
            r["machine_load"] = mon.summary
            print(f"   {r['status']} in {r['wall_s']} s (moto: not a figure), rows {r['rows']}")
            print_report(r, f"per task ({tasks:,} tasks):")
            name = f"requests-{args.items}"
    finally:
        if args.keep:
            print(f"   kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"   results: {common.save(name, result)}")


if __name__ == "__main__":
    main()
