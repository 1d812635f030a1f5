"""Scale on the AWS backend, against a moto server: requests per item and per task.

moto is far slower than AWS (one Python process, DynamoDB requests serialised by the test
launcher's lock), so absolute times say little; what carries over to AWS is how many requests of
each kind a job makes, per item and per task, split by step (submit, workers, finalize). The
server here is tests/moto_launch.py's (moto's WSGI app, DynamoDB requests under one lock) wrapped
in a middleware that counts every request by service and operation, per second; the benchmark
reads the counts back over HTTP (`GET /__bench__/counts`, not counted).

    .venv/bin/python bench/scale_aws.py                  # 500,000 items, batch_size 100
    .venv/bin/python bench/scale_aws.py --items 20000    # a quick look

Results: bench/out/scale_aws-<N>.json (and a dated copy).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import common  # bench/common.py: the script's folder is on sys.path

JOB_ID = "bench-scale-aws"
FAKE_ENV = {  # as tests/moto_server.py: fake credentials through boto3's default chain
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
COUNTS_PATH = "/__bench__/counts"


# --- the server: moto under the tests' launcher, with a counting middleware ------------------


def _operation(environ: dict[str, Any]) -> tuple[str, str]:
    """(service, operation) of one request, from the SigV4 credential scope and the request."""
    auth = str(environ.get("HTTP_AUTHORIZATION", ""))
    service = "?"
    if "Credential=" in auth:
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        if len(scope) >= 4:
            service = scope[3]
    target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
    if target:  # DynamoDB_20120810.GetItem, AmazonSQS.ReceiveMessage (JSON protocols)
        return service, target.rsplit(".", 1)[-1]
    method = str(environ.get("REQUEST_METHOD", "?"))
    query = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
    if service == "s3":
        path = str(environ.get("PATH_INFO", "/")).lstrip("/")
        has_key = "/" in path and not path.endswith("/")
        what = "object" if has_key else "bucket"
        extra = sorted(k for k in query if k in ("uploads", "uploadId", "tagging", "list-type"))
        return service, " ".join([method, what, *extra])
    if "Action" in query:  # query protocol (SQS in older botocore)
        return service, query["Action"][0]
    if method == "POST":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(size) if size else b""
        environ["wsgi.input"] = io.BytesIO(body)
        action = parse_qs(body.decode(errors="replace")).get("Action")
        if action:
            return service, action[0]
    return service, method


class CountRequests:
    """WSGI middleware: counts (second, service, operation); serves the counts as JSON."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.counts: Counter[tuple[int, str, str]] = Counter()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == COUNTS_PATH:
            with self.lock:
                rows = [[s, svc, op, n] for (s, svc, op), n in self.counts.items()]
            body = json.dumps(rows).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        service, op = _operation(environ)
        with self.lock:
            self.counts[(int(time.time()), service, op)] += 1
        return self.app(environ, start_response)


def serve(port: int) -> None:
    sys.path.insert(0, str(common.REPO))
    os.environ.setdefault("MOTO_PORT", str(port))
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import run_simple

    # The tests' app: moto patched (per-item transaction rollback, Items not kept by moto's
    # instance tracker), DynamoDB requests under one lock.
    from tests.moto_launch import make_app

    def stop(signum: int, frame: Any) -> None:
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    app = CountRequests(make_app())
    run_simple("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)


class Server:
    """The moto server as a process of `script` (`--serve PORT`), answering once `probe` does."""

    script = __file__

    def __init__(self, log: Path) -> None:
        sys.path.insert(0, str(common.REPO))
        from tests.moto_server import free_port  # the tests' helper

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, self.script, "--serve", str(self.port)],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **FAKE_ENV},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.probe()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"moto did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        raise SystemExit("moto did not answer within 60 s")

    def probe(self) -> None:
        self.counts()

    def counts(self) -> list[tuple[int, str, str, int]]:
        with urllib.request.urlopen(self.url + COUNTS_PATH, timeout=30) as resp:
            return [(int(s), str(v), str(o), int(n)) for s, v, o, n in json.loads(resp.read())]

    def rss_mb(self) -> float:
        import psutil

        try:
            return float(psutil.Process(self.proc.pid).memory_info().rss) / (1 << 20)
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


# --- the job ----------------------------------------------------------------------------------


def write_job(folder: Path, url: str, args: argparse.Namespace) -> Path:
    config = common.write_job(
        folder, job_id=JOB_ID, batch_size=args.batch_size, workers=args.workers
    )
    name = f"bench-scale-{os.getpid()}"
    config.write_text(
        config.read_text()
        + "backend: aws\n"
        + f"aws: {{bucket: {name}, table: {name}, region: us-east-1, endpoint_url: '{url}', "
        + "prefix: slurmctl/}\n"
    )
    return config


def split(
    counts: list[tuple[int, str, str, int]], marks: dict[str, float | None]
) -> dict[str, Counter[str]]:
    """Requests by step: epoch-second marks (submitted, workers gone) cut the per-second counts.
    A second that straddles a mark goes to the later step."""
    submitted = marks.get("submitted") or 0.0
    gone = marks.get("workers_gone") or float("inf")
    steps: dict[str, Counter[str]] = {
        "submit": Counter(),
        "workers": Counter(),
        "finalize": Counter(),
    }
    for second, service, op, n in counts:
        step = (
            "submit" if second < int(submitted) else "workers" if second < int(gone) else "finalize"
        )
        steps[step][f"{service} {op}"] += n
    return steps


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    env = {**os.environ, **FAKE_ENV, "PYTHONUNBUFFERED": "1"}
    for name in list(env):
        if name == "AWS_PROFILE" or name.startswith("AWS_ENDPOINT_URL"):
            del env[name]
    os.environ.update(FAKE_ENV)
    server = Server(work / "moto.log")
    try:
        folder = work / "job"
        common.write_items(folder / "input.jsonl", args.items)
        config = write_job(folder, server.url, args)
        root = work / "root"
        init = subprocess.run(
            [*common.slurmctl_cmd(), "--root", str(root), "init", str(config)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if init.returncode != 0:
            raise SystemExit(f"slurmctl init failed:\n{init.stderr[-2000:]}")
        before = server.counts()
        cmd = [*common.slurmctl_cmd(), "--root", str(root), "submit", str(config), "--no-progress"]
        t0 = time.perf_counter()
        epoch0 = time.time()
        marks: dict[str, float | None] = {"start": epoch0, "submitted": None, "workers_gone": None}
        with open(work / "submit.stderr", "wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
            watch = WorkerWatch(proc.pid, server.rss_mb)
            assert proc.stdout is not None
            lines = []
            for raw in proc.stdout:
                text = raw.decode(errors="replace").rstrip()
                lines.append(text)
                if text.endswith(" submitted"):
                    marks["submitted"] = time.time()
                    print(f"   submitted after {time.perf_counter() - t0:.1f} s", flush=True)
            code = proc.wait()
        wall = time.perf_counter() - t0
        marks["workers_gone"] = watch.close()
        end_moto = server.rss_mb()
        peak_moto = max(watch.peak_rss_mb, end_moto)
        if code != 0:
            raise SystemExit(
                f"submit failed ({code}):\n{(work / 'submit.stderr').read_text()[-3000:]}"
            )
        status = common.cli_json(root, "status", JOB_ID, env=env)
        after = server.counts()
    finally:
        server.stop()
    seen = Counter({(s, svc, op): n for s, svc, op, n in before})
    delta = [
        (s, svc, op, n - seen.get((s, svc, op), 0))
        for s, svc, op, n in after
        if n - seen.get((s, svc, op), 0) > 0
    ]
    steps = split(delta, marks)
    tasks = -(-args.items // args.batch_size)
    total: Counter[str] = Counter()
    for c in steps.values():
        total.update(c)
    by_service: Counter[str] = Counter()
    for k, n in total.items():
        by_service[k.split(" ", 1)[0]] += n
    return {
        "wall_s": wall,
        "status": status["status"],
        "rows": status.get("rows"),
        "items": status["items"],
        "tasks": tasks,
        "marks": {
            k: (round(v - epoch0, 2) if v else None) for k, v in marks.items() if k != "start"
        },
        "moto_rss_mb": round(peak_moto, 1),
        "moto_rss_end_mb": round(end_moto, 1),
        "requests": {k: dict(v.most_common()) for k, v in steps.items()},
        "requests_total": sum(total.values()),
        "by_service": dict(by_service),
        "per_item": {k: round(n / args.items, 4) for k, n in by_service.items()},
        "per_task": {k: round(n / tasks, 2) for k, n in by_service.items()},
        "per_task_by_operation": {k: round(n / tasks, 3) for k, n in total.most_common()},
        "per_item_by_operation": {k: round(n / args.items, 5) for k, n in total.most_common()},
        "per_task_by_step": {
            step: {k: round(n / tasks, 2) for k, n in c.most_common()} for step, c in steps.items()
        },
        "stdout": lines,
    }


class WorkerWatch:
    """When the last worker subprocess of the submit process exited (epoch seconds); meanwhile
    the moto server's peak RSS (sampled every second) and a progress line every few minutes."""

    PROGRESS_S = 300.0

    def __init__(self, pid: int, rss_mb: Callable[[], float]) -> None:
        import psutil

        self.top = psutil.Process(pid)
        self.rss_mb = rss_mb
        self.peak_rss_mb = 0.0
        self.seen = False
        self.gone: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psutil

        t0 = last = time.monotonic()
        tick = 0
        while not self.stop.wait(0.2):
            tick += 1
            if tick % 5 == 0:
                rss = self.rss_mb()
                self.peak_rss_mb = max(self.peak_rss_mb, rss)
                if time.monotonic() - last >= self.PROGRESS_S:
                    last = time.monotonic()
                    print(f"   {last - t0:.0f} s: moto RSS {rss:.0f} MB", flush=True)
            try:
                kids = self.top.children(recursive=True)
                workers = [p for p in kids if "worker" in p.cmdline()]
            except psutil.Error:
                continue
            if workers:
                self.seen = True
            elif self.seen and self.gone is None:
                self.gone = time.time()

    def close(self) -> float | None:
        self.stop.set()
        self.thread.join()
        return self.gone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=500_000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tmp", help="folder for the inputs and outputs (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: the moto server
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    info = common.machine()
    tasks = -(-args.items // args.batch_size)
    common.header(
        f"scale on AWS (moto): {args.items:,} items, batch_size {args.batch_size} "
        f"({tasks:,} tasks), {args.workers} workers, no-op handler",
        info,
    )
    work = common.work_dir(args.tmp, "scale-aws")
    result: dict[str, Any] = {"args": vars(args), "machine": info}
    try:
        with common.Monitor() as mon:
            result["slurmctl"] = r = run(args, work)
        r["machine_load"] = mon.summary
    finally:
        if args.keep:
            print(f"   kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"   {r['status']} in {r['wall_s']:.1f} s (moto: not a figure), rows {r['rows']}, "
        f"{r['requests_total']:,} requests"
    )
    print(f"     meanwhile: {common.Monitor.describe(r['machine_load'])}")
    print(
        f"   moto RSS: peak {r['moto_rss_mb']:,.0f} MB, at the end {r['moto_rss_end_mb']:,.0f} MB"
    )
    for svc in sorted(r["by_service"]):
        print(
            f"   {svc:9} {r['by_service'][svc]:>9,} requests, {r['per_item'][svc]:.4f} per item, "
            f"{r['per_task'][svc]:.2f} per task"
        )
    for step, ops in r["per_task_by_step"].items():
        shown = ", ".join(f"{k} {v}" for k, v in list(ops.items())[:12])
        print(f"   per task, {step}: {shown}")
    print(f"   results: {common.save(f'scale_aws-{args.items}', result)}")


if __name__ == "__main__":
    main()
