"""Issue 16's DynamoDB layout and S3 lifecycle, on moto: task shards, the reconciler that reads
only expired leases, counter-only updates off the job record, the previous layout refused, and
the intermediates' lifecycle rule set by `slurmctl init`."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slurmctl.backends import Backend
from slurmctl.backends.aws.dynamo import expiry_text, task_key
from slurmctl.backends.reconcile import Turn, reconcile, reconcile_turn
from slurmctl.backends.statestore import JobRecord, TaskRecord
from slurmctl.states import JobStatus
from tests.aws.jobs import every_table_item, make_aws_job, new_place
from tests.contract.conftest import make_backend
from tests.helpers import cli, popen, wait_for
from tests.moto_server import moto_endpoint, moto_server, require_boto3
from tests.test_faults_local import SLOW_HANDLER, _calls

_ = (moto_server, moto_endpoint)  # session fixtures
require_boto3(module_level=True)


class Calls:
    """Between the AWS store and moto: every DynamoDB call it makes, with its arguments."""

    def __init__(self, backend: Backend) -> None:
        self.svc = backend.state.t.ddb  # type: ignore[attr-defined]
        self.real = self.svc.call
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.svc.call = self.call

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        self.seen.append((op, kwargs))
        out: dict[str, Any] = self.real(op, **kwargs)
        return out

    def keys_read(self) -> int:
        """Items read by key (GetItem, BatchGetItem)."""
        n = 0
        for op, kw in self.seen:
            if op == "get_item":
                n += 1
            elif op == "batch_get_item":
                n += sum(len(spec["Keys"]) for spec in kw["RequestItems"].values())
        return n


@pytest.fixture
def aws(tmp_path: Path, moto_endpoint: str) -> Iterator[Backend]:
    b = make_backend("aws", tmp_path, moto_endpoint)
    yield b
    b.close()


def _task(i: int) -> TaskRecord:
    return TaskRecord("j", f"task-{i:06d}", f"b{i}", "initial", "g", 1, f"k{i}", "s")


def test_reconciler_reads_only_the_expired_leases(aws: Backend) -> None:
    n, lapsed = 60, {7, 23, 41}
    state = aws.state
    assert state.create_job(JobRecord("j", JobStatus.RUNNING, task_count=n))
    assert state.put_tasks([_task(i) for i in range(n)]) == n
    assert state.update_job("j", {}, counter_deltas={"initial.tasks.PENDING": n})
    for i in range(n):
        at, lease = (800.0, 100.0) if i in lapsed else (1000.0, 3600.0)
        assert state.claim_task("j", f"task-{i:06d}", "w", f"t{i}", lease, at) is not None
    aws.queue.create_queue("j")
    calls = Calls(aws)
    got = reconcile(aws, "j", "initial", now=1000.0)
    assert (got.expired, got.pending, got.running) == (3, 0, n - 3)
    # the 3 expired records, never the 57 live ones (the 16 counter shards: one batch read; not
    # the metrics shards); per index shard one range of expired leases and one of the RUNNING
    # entries' keys (the RUNNING count: a claim moves no counter)
    assert calls.keys_read() == 3 + 16
    queries = [kw for op, kw in calls.seen if op == "query"]
    assert len(queries) == 2 * 16 and all(q["IndexName"] == "unfinished" for q in queries)
    hints = sorted(m.body for m in aws.queue.receive("j", max_messages=10, visibility_s=30))
    assert hints == [f"task-{i:06d}" for i in sorted(lapsed)]


def _index_sk(aws: Backend, task_id: str) -> str:
    store: Any = aws.state  # the DynamoDB store: its table
    key = task_key("j", task_id, store.task_shards("j"))
    got = store.t.ddb.call("get_item", TableName=store.t.name, Key=key, ConsistentRead=True)
    return str(got["Item"]["gsi_sk"]["S"])


def test_heartbeats_move_the_index_entry_once_per_half_lease(aws: Backend) -> None:
    """The index entry's expiry is the lease's rounded down to a multiple of lease_s / 2: a
    heartbeat within the step writes the task only (1 WCU), and the reconciler still finds the
    lease the moment it expires, never before."""
    state = aws.state
    assert state.create_job(JobRecord("j", JobStatus.RUNNING, task_count=1))
    state.put_tasks([_task(0)])
    tid = "task-000000"
    assert state.claim_task("j", tid, "w", "tok", 120.0, 1000.0) is not None  # lease to 1120
    assert _index_sk(aws, tid) == f"R#{expiry_text(1080.0)}#{tid}"
    calls = Calls(aws)
    steps = []
    for now in (1030.0, 1060.0, 1090.0, 1100.0, 1120.0):  # leases to 1150 ... 1240
        assert state.heartbeat("j", tid, "tok", 120.0, now)
        steps.append(_index_sk(aws, tid).split("#")[1])
    assert steps == [expiry_text(t) for t in (1140.0, 1140.0, 1200.0, 1200.0, 1200.0)]
    updates = [kw for op, kw in calls.seen if op == "update_item"]
    moved = ["gsi_sk" in kw["ExpressionAttributeNames"].values() for kw in updates]
    assert moved == [True, False, True, False, False]
    task = state.get_task("j", tid)
    assert task is not None and task.lease_expires == 1240.0
    assert list(state.expired_tasks("j", "initial", 1239.0)) == []  # the entry says 1200
    assert [t.task_id for t in state.live_tasks("j", 1239.0)] == [tid]
    assert [t.task_id for t in state.expired_tasks("j", "initial", 1241.0)] == [tid]
    assert not state.heartbeat("j", tid, "other", 120.0, 1130.0)  # fenced as ever


def test_idle_workers_take_turns_to_reconcile(aws: Backend) -> None:
    state = aws.state
    assert state.create_job(JobRecord("j", JobStatus.RUNNING, task_count=1))
    state.put_tasks([_task(0)])
    assert reconcile_turn(aws, "j", "initial", Turn("w1", 30.0), now=100.0) is not None
    assert reconcile_turn(aws, "j", "initial", Turn("w2", 30.0), now=110.0) is None
    assert reconcile_turn(aws, "j", "initial", Turn("w1", 30.0), now=120.0) is not None
    assert reconcile_turn(aws, "j", "initial", Turn("w2", 30.0), now=151.0) is not None
    assert reconcile_turn(aws, "j", "initial", Turn("w1", 30.0), now=160.0) is None


def test_counter_only_updates_write_one_metrics_shard_and_not_the_job(aws: Backend) -> None:
    state = aws.state
    assert state.create_job(JobRecord("j", JobStatus.RUNNING))
    assert state.get_task("j", "task-000000") is None  # the job's shard count, read once
    calls = Calls(aws)
    for _ in range(5):
        assert state.update_job("j", {}, counter_deltas={"obs.x": 2})
    assert [op for op, _ in calls.seen] == ["update_item"] * 5
    assert all(kw["Key"]["pk"]["S"].startswith("JOB#j#M#") for _, kw in calls.seen)
    assert all("ConditionExpression" not in kw for _, kw in calls.seen)
    assert state.counters("j")["obs.x"] == 10


def test_a_task_life_writes_nothing_on_the_job_key(aws: Backend) -> None:
    """Put, claim, heartbeat, commit and the per-task metrics update: every write lands on the
    task's shard, its index shard, a counter or a metrics shard, never on `JOB#<id>` (the job
    record)."""
    from tests.contract.test_statestore import _commit

    state = aws.state
    assert state.create_job(JobRecord("j", JobStatus.RUNNING))
    calls = Calls(aws)
    state.put_tasks([_task(i) for i in range(3)])
    for i in range(3):
        tid = f"task-{i:06d}"
        assert state.claim_task("j", tid, "w", f"t{i}", 60.0, 100.0) is not None
        assert state.heartbeat("j", tid, f"t{i}", 60.0, 130.0)
        assert state.commit_task("j", tid, f"t{i}", _commit())
        assert state.update_job("j", {}, counter_deltas={"obs.tasks": 1})
    written: set[str] = set()
    for op, kw in calls.seen:
        if op == "transact_write_items":
            for entry in kw["TransactItems"]:
                ((_, body),) = entry.items()
                written.add((body.get("Key") or body["Item"])["pk"]["S"])
        elif op in ("update_item", "put_item", "delete_item"):
            written.add((kw.get("Key") or kw["Item"])["pk"]["S"])
    assert written and "JOB#j" not in written
    assert all(pk.startswith(("JOB#j#T#", "JOB#j#C#", "JOB#j#M#")) for pk in written), written
    assert len({pk for pk in written if pk.startswith("JOB#j#T#")}) >= 2  # spread


def _to_previous_layout(place: Any, job_id: str) -> int:
    """Rewrite a job's items as the previous layout had them: every task under `JOB#<id>`
    (index `JOB#<id>` / `<phase>#<task>`), no shard count on the job record."""
    ddb = place.ddb
    moved = 0
    for page in ddb.get_paginator("scan").paginate(TableName=place.table):
        for item in page["Items"]:
            pk = item["pk"]["S"]
            if pk.startswith(f"JOB#{job_id}#T#"):
                old = dict(item)
                old["pk"] = {"S": f"JOB#{job_id}"}
                if "gsi_pk" in old:
                    task = item["sk"]["S"].removeprefix("TASK#")
                    old["gsi_pk"] = {"S": f"JOB#{job_id}"}
                    old["gsi_sk"] = {"S": f"{item['phase']['S']}#{task}"}
                ddb.put_item(TableName=place.table, Item=old)
                ddb.delete_item(TableName=place.table, Key={"pk": item["pk"], "sk": item["sk"]})
                moved += 1
    ddb.update_item(
        TableName=place.table,
        Key={"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}},
        UpdateExpression="REMOVE task_shards",
    )
    return moved


def test_a_job_of_the_previous_layout_is_refused_in_one_line(
    moto_endpoint: str, tmp_path: Path
) -> None:
    place = new_place(moto_endpoint)
    config = make_aws_job(place, tmp_path / "job", 20, batch_size=5, workers=1)
    done = cli(tmp_path, "submit", str(config), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert _to_previous_layout(place, "aws1") == 4
    refused = cli(tmp_path, "retry", "--job-id", "aws1", "--tasks", "task-000000")
    message = (
        "job aws1 was submitted by an earlier slurmctl (every task under one DynamoDB partition "
        "key); this version cannot run it: finish it with that version, or submit it again "
        "under a new job_id"
    )
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines()[-1].endswith(message)
    assert "Traceback" not in refused.stderr
    cleaned = cli(tmp_path, "clean", "aws1", "--everything", "--yes")
    assert cleaned.returncode == 2 and cleaned.stderr.strip().endswith(message), cleaned.stderr
    # what only reads the job record and its counters still works
    shown = cli(tmp_path, "status", "aws1")
    assert shown.returncode == 0 and "SUCCESS 4" in shown.stdout, shown.stderr


def test_a_stopped_job_of_the_previous_layout_is_refused_at_resume(
    moto_endpoint: str, tmp_path: Path
) -> None:
    """A job stopped (Ctrl-C) under the previous layout, resumed by this version: refused,
    exit 2, one line, nothing changed."""
    place = new_place(moto_endpoint)
    calls = tmp_path / "calls.txt"
    env = {"CALLS_FILE": str(calls)}
    config = make_aws_job(
        place, tmp_path / "job", 200, handler=SLOW_HANDLER, batch_size=10, workers=1
    )
    proc = popen(tmp_path, "submit", str(config), "--no-progress", env=env)
    wait_for(lambda: len(_calls(calls)) >= 20, what="progress")
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    assert _to_previous_layout(place, "aws1") == 20
    before = sorted(json.dumps(i, sort_keys=True) for i in every_table_item(place))
    refused = cli(tmp_path, "resume", "aws1", "--no-progress", env=env)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    [line] = refused.stderr.strip().splitlines()
    assert line.endswith(
        "this version cannot run it: finish it with that version, or submit it "
        "again under a new job_id"
    ), line
    after = sorted(json.dumps(i, sort_keys=True) for i in every_table_item(place))
    assert after == before


def test_init_sets_the_intermediates_lifecycle_rule(moto_endpoint: str, tmp_path: Path) -> None:
    place = new_place(moto_endpoint, create=False)
    config = make_aws_job(
        place,
        tmp_path / "job",
        1,
        extra="".join([]),  # the aws: section below replaces it
    )
    text = config.read_text().replace(
        "prefix: slurmctl/}", "prefix: slurmctl/, expire_intermediates_days: 14}"
    )
    config.write_text(text)
    made = cli(tmp_path, "init", str(config))
    assert made.returncode == 0, made.stderr
    assert (
        "intermediates (batches, per-task results, aggregation levels): expire 14 days after "
        "they are written" in made.stdout
    )
    rules = {
        r["ID"]: r
        for r in place.s3.get_bucket_lifecycle_configuration(Bucket=place.bucket)["Rules"]
    }
    assert set(rules) == {
        "slurmctl-expire-checkpoints",
        "slurmctl-abort-multipart",
        "slurmctl-expire-intermediates",
    }
    rule = rules["slurmctl-expire-intermediates"]
    assert rule["Expiration"] == {"Days": 14} and rule["Status"] == "Enabled"
    assert rule["Filter"] == {
        "And": {
            "Prefix": "slurmctl/jobs/",
            "Tags": [{"Key": "slurmctl-class", "Value": "intermediate"}],
        }
    }
    names = ["--bucket", place.bucket, "--table", place.table, "--endpoint-url", moto_endpoint]
    again = cli(tmp_path, "init", *names)
    assert "expire 14 days after they are written" in again.stdout  # unset: left as it is
    off = cli(tmp_path, "init", *names, "--expire-intermediates-days", "0")
    assert off.returncode == 0, off.stderr
    assert "intermediates (batches, per-task results, aggregation levels): kept" in off.stdout
    left = place.s3.get_bucket_lifecycle_configuration(Bucket=place.bucket)["Rules"]
    assert {r["ID"] for r in left} == {"slurmctl-expire-checkpoints", "slurmctl-abort-multipart"}


def test_intermediates_are_tagged_and_the_final_output_is_not(aws: Backend) -> None:
    s3 = aws.objects.s3.current  # type: ignore[attr-defined]
    bucket = aws.objects.bucket  # type: ignore[attr-defined]
    keys = {
        "jobs/j/batches/batch-000001.jsonl": "intermediate",
        "jobs/j/batches/batch-000001--batch-000002.jsonl": "intermediate",  # a pack
        "jobs/j/batches/r1-batch-000000--r1-batch-000015.ab12cd34.jsonl": "intermediate",
        "jobs/j/results/task-000001/ab.parquet": "intermediate",
        "jobs/j/aggregate/L1/part-000000.parquet": "intermediate",
        "jobs/j/final/j-00000.parquet": None,
        "jobs/j/manifest.json": None,
    }
    for key in keys:
        aws.objects.put_bytes(key, b"x")
    for key, want in keys.items():
        tags = s3.get_object_tagging(Bucket=bucket, Key=f"slurmctl/{key}")["TagSet"]
        assert tags == ([{"Key": "slurmctl-class", "Value": want}] if want else []), key


def test_expire_intermediates_days_is_checked_up_front(moto_endpoint: str, tmp_path: Path) -> None:
    place = new_place(moto_endpoint, create=False)
    config = make_aws_job(place, tmp_path / "job", 1)
    config.write_text(
        config.read_text().replace(
            "prefix: slurmctl/}", "prefix: slurmctl/, expire_intermediates_days: 0}"
        )
    )
    bad = cli(tmp_path, "init", str(config))
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "aws.expire_intermediates_days" in bad.stderr and "Traceback" not in bad.stderr


def test_a_job_submitted_again_with_more_workers_is_read_with_its_new_shards(
    aws: Backend, moto_endpoint: str
) -> None:
    """Another process deletes the job and creates it again with 1,000 workers (64 shards):
    this store's next read of the job record refreshes the shard count it had cached."""
    from slurmctl.backends.aws import open_aws

    name = aws.state.t.name  # type: ignore[attr-defined]
    other = open_aws(name, name, "us-east-1", moto_endpoint, queue_prefix=f"{name}-")
    state = aws.state
    assert state.create_job(JobRecord("j", JobStatus.RUNNING, workers=2))
    state.put_tasks([_task(0)])
    assert state.task_shards("j") == 16  # type: ignore[attr-defined]
    other.state.delete_job("j")
    assert other.state.create_job(JobRecord("j", JobStatus.RUNNING, workers=1000))
    assert other.state.put_tasks([_task(i) for i in range(40)]) == 40
    assert state.get_job("j") is not None
    assert state.task_shards("j") == 64  # type: ignore[attr-defined]
    assert [t.task_id for t in state.iter_tasks("j")] == [f"task-{i:06d}" for i in range(40)]
    other.close()


def test_a_claim_and_a_release_are_one_update_that_moves_no_counter(aws: Backend) -> None:
    """A phase's PENDING and RUNNING tasks are one stored count: a claim and a release are a
    single conditional UpdateItem of the task (no transaction, no counter shard), a commit
    moves PENDING -1 and SUCCESS +1, and `counters()` tells RUNNING apart from the index. A job
    whose earlier claims stored RUNNING (before this) is summed and split the same way."""
    from tests.contract.test_statestore import _commit

    state = aws.state
    p, r, s = "initial.tasks.PENDING", "initial.tasks.RUNNING", "initial.tasks.SUCCESS"
    assert state.create_job(JobRecord("j", JobStatus.RUNNING))
    state.put_tasks([_task(i) for i in range(3)])
    assert state.update_job("j", {}, counter_deltas={p: 3})
    calls = Calls(aws)
    assert state.claim_task("j", "task-000000", "w", "t0", 60.0, 100.0) is not None
    assert state.claim_task("j", "task-000001", "w", "t1", 60.0, 100.0) is not None
    assert state.release_task("j", "task-000001", "t1")
    assert [op for op, _ in calls.seen] == ["get_item", "update_item"] * 3
    assert all(kw["Key"]["pk"]["S"].startswith("JOB#j#T#") for _, kw in calls.seen[1::2])
    stored = state.counters("j", metrics=False, running=False)
    assert (stored.get(p), stored.get(r)) == (3, None)
    assert (state.counters("j")[p], state.counters("j")[r]) == (2, 1)
    calls.seen.clear()
    assert state.commit_task("j", "task-000000", "t0", _commit())
    assert [op for op, _ in calls.seen] == ["get_item", "transact_write_items"]
    stored = state.counters("j", running=False)
    assert (stored[p], stored.get(r), stored[s]) == (2, None, 1)
    # the earlier claims' way: PENDING -1, RUNNING +1 on a counter shard (written directly)
    assert state.claim_task("j", "task-000002", "w", "t2", 60.0, 100.0) is not None
    state.t.call(  # type: ignore[attr-defined]
        "update_item",
        TableName=state.t.name,  # type: ignore[attr-defined]
        Key={"pk": {"S": "JOB#j#C#5"}, "sk": {"S": "C"}},
        UpdateExpression="ADD #p :m, #r :one",
        ExpressionAttributeNames={"#p": p, "#r": r},
        ExpressionAttributeValues={":m": {"N": "-1"}, ":one": {"N": "1"}},
    )
    c = state.counters("j")
    assert (c[p], c[r], c[s]) == (1, 1, 1)
    assert state.commit_task("j", "task-000002", "t2", _commit())
    c = state.counters("j")
    assert (c[p], c[r], c[s]) == (1, 0, 2)  # stored PENDING 0, RUNNING 1: one unfinished
    # the last task done, then nothing is unfinished: the counters read no index range
    assert state.claim_task("j", "task-000001", "w", "t3", 60.0, 100.0) is not None
    assert state.commit_task("j", "task-000001", "t3", _commit())
    stored = state.counters("j", running=False)
    assert (stored[p], stored[r]) == (-1, 1)  # the earlier claim's RUNNING, this commit's -1
    calls.seen.clear()
    c = state.counters("j")
    assert (c[p], c[r], c[s]) == (0, 0, 3)
    assert [op for op, _ in calls.seen] == ["batch_get_item"]


def test_k_comes_from_the_expected_tasks_and_the_workers(aws: Backend) -> None:
    """K is the smaller of what the workers can write (16 up to 128 workers, doubling, 64 at
    most) and what the expected tasks need (one key per 250, a power of two, at least 1), so a
    job of 50 tasks has one key (and a reconciler pass one index range per kind); without an
    estimate, the workers' K."""
    from slurmctl.backends.aws.dynamo import task_shards_for
    from slurmctl.coordinator.submit import expected_tasks

    assert [task_shards_for(2, t) for t in (1, 50, 250, 251, 1000, 4000, 10**6)] == [
        1,
        1,
        1,
        2,
        4,
        16,
        16,
    ]
    assert [task_shards_for(w, 10**6) for w in (128, 129, 512, 513, 10**4)] == [16, 32, 64, 64, 64]
    assert (task_shards_for(1000, 50), task_shards_for(1000, None), task_shards_for(2)) == (
        1,
        64,
        16,
    )
    # submit's estimate from the input's bytes: at most one item per 32 bytes
    assert [expected_tasks(b, 100) for b in (0, 1, 3200, 3201, 32 * 10**8)] == [1, 1, 1, 2, 10**6]
    state = aws.state
    assert state.create_job(JobRecord("small", JobStatus.RUNNING, workers=8), expected_tasks=50)
    assert state.create_job(JobRecord("big", JobStatus.RUNNING, workers=1000), expected_tasks=10**6)
    assert not state.create_job(JobRecord("small", JobStatus.RUNNING), expected_tasks=10**6)
    assert state.task_shards("small") == 1  # type: ignore[attr-defined]
    assert state.task_shards("big") == 64  # type: ignore[attr-defined]
    state.put_tasks(
        [TaskRecord("small", f"task-{i:06d}", "b", "initial", "g", 1, "k", "s") for i in range(50)]
    )
    assert state.update_job("small", {}, counter_deltas={"initial.tasks.PENDING": 50})
    for i in range(0, 50, 7):
        assert state.claim_task("small", f"task-{i:06d}", "w", f"t{i}", 60.0, 100.0) is not None
    calls = Calls(aws)
    got = reconcile(aws, "small", "initial", now=1000.0)
    assert (got.expired, got.running) == (8, 0)
    assert len([kw for op, kw in calls.seen if op == "query"]) == 2  # one key: 2 index ranges
    c = state.counters("small")  # the 8 lapsed leases are requeued, still RUNNING till claimed
    assert (c["initial.tasks.PENDING"], c["initial.tasks.RUNNING"]) == (42, 8)
