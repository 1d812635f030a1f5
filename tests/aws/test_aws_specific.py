"""What only the AWS backend has: counter shards, the sparse GSI, S3 metadata and conditional PUTs,
SQS names, timeouts against a frozen endpoint, an unreachable endpoint, resource creation."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from slurmctl.backends import Backend
from slurmctl.backends.aws.dynamo import (
    SHARDS,
    TASK_SHARDS_MIN,
    index_pk,
    metrics_key,
    shard_key,
    shard_of,
    task_pk,
    task_shard,
)
from slurmctl.backends.aws.queue import queue_name
from slurmctl.backends.aws.session import AwsTimeout
from slurmctl.backends.statestore import (
    ITEMS_PENDING,
    ITEMS_SUCCEEDED,
    OUTPUT_ROWS,
    WORKERS_LOST,
    Bucket,
    JobRecord,
    TaskCommit,
    TaskRecord,
    task_counter,
)
from slurmctl.errors import BackendUnavailable, IntegrityError, UserError
from slurmctl.states import JobStatus, TaskStatus
from tests.aws.conftest import Aws, make_aws
from tests.moto_server import MotoServer, free_port, require_boto3, running_moto

require_boto3(module_level=True)
from botocore.exceptions import ClientError  # noqa: E402


def _task(i: int, phase: str = "initial") -> TaskRecord:
    return TaskRecord(
        job_id="j",
        task_id=f"task-{i:06d}",
        batch_id=f"batch-{i:06d}",
        phase=phase,
        group="initial_batch",
        items=10,
        batch_key=f"jobs/j/batches/batch-{i:06d}.jsonl",
        batch_sha256="ab" * 32,
    )


def _commit(rows: int = 10, output_key: str = "out") -> TaskCommit:
    return TaskCommit(output_key, "s" * 64, rows, "err", "e" * 64, rows, 0, 0, 2.0)


def _setup(env: Aws, n: int) -> None:
    state = env.backend.state
    assert state.create_job(JobRecord(job_id="j", status=JobStatus.PENDING))
    assert state.put_tasks([_task(i) for i in range(n)]) == n
    assert state.update_job(
        "j",
        {"status": JobStatus.RUNNING, "submitted": True},
        expect={"submitted": False},
        counter_deltas={task_counter("initial", "PENDING"): n, ITEMS_PENDING: 10 * n},
    )


def _shards(env: Aws) -> dict[int, dict[str, Any]]:
    out = {}
    for k in range(SHARDS):
        got = env.ddb.get_item(TableName=env.name, Key=shard_key("j", k), ConsistentRead=True)
        if "Item" in got:
            out[k] = got["Item"]
    return out


def test_counters_are_sharded_and_summed(aws: Aws) -> None:
    n = 24
    _setup(aws, n)
    for i in range(n):
        tid = f"task-{i:06d}"
        assert aws.backend.state.claim_task("j", tid, "w", f"t{i}", 60, now=1.0) is not None
        assert aws.backend.state.commit_task("j", tid, f"t{i}", _commit(rows=i))
    shards = _shards(aws)
    expected = {shard_of(f"task-{i:06d}") for i in range(n)} | {0}
    assert set(shards) == expected and len(shards) > 1
    total: dict[str, int] = {}
    for item in shards.values():
        for name, value in item.items():
            if name not in ("pk", "sk"):
                total[name] = total.get(name, 0) + int(value["N"])
    assert aws.backend.state.counters("j", running=False) == total  # the shards as stored
    c = aws.backend.state.counters("j")  # RUNNING told apart from the index: none runs
    assert c == {**total, task_counter("initial", "RUNNING"): 0}
    assert c[task_counter("initial", "SUCCESS")] == n
    assert c[task_counter("initial", "PENDING")] == 0
    assert c[task_counter("initial", "RUNNING")] == 0
    assert c[ITEMS_SUCCEEDED] == c[OUTPUT_ROWS] == sum(range(n))
    assert c[ITEMS_PENDING] == 10 * n - sum(range(n))


def test_counter_only_updates_leave_the_counter_shards_small(aws: Aws) -> None:
    """Metrics (counter-only updates) land on the metrics shards; the counter shards that
    commits move in their transactions hold only the protocol's few counters, so a long time
    series never makes a commit cost more than 2 WCU per item."""
    _setup(aws, 4)
    state = aws.backend.state
    for point in range(40):  # a long job's time series: ~40 points in every metrics shard
        for _ in range(5):
            assert state.update_job("j", {}, counter_deltas={f"obs.ts.items.0.{point}": 1})
    for i in range(4):
        tid = f"task-{i:06d}"
        assert state.claim_task("j", tid, "w", f"t{i}", 60, now=1.0) is not None
        assert state.commit_task("j", tid, f"t{i}", _commit(rows=i))
    names = {n for item in _shards(aws).values() for n in item if n not in ("pk", "sk")}
    assert not any(n.startswith("obs.") for n in names), names
    metrics = [
        aws.ddb.get_item(TableName=aws.name, Key=metrics_key("j", k), ConsistentRead=True)
        for k in range(SHARDS)
    ]
    held = [m["Item"] for m in metrics if "Item" in m]
    assert held and all(n.startswith("obs.ts.") for m in held for n in m if n not in ("pk", "sk"))
    c = state.counters("j")
    assert [c[f"obs.ts.items.0.{p}"] for p in range(40)] == [5] * 40
    assert c[task_counter("initial", "SUCCESS")] == 4 and c[OUTPUT_ROWS] == 6
    # a counter-only update that moves a protocol counter stays on a counter shard, so the
    # read without the metrics shards (an idle worker's, the reconciler's) still sees it
    assert state.update_job("j", {}, counter_deltas={WORKERS_LOST: 2, "obs.x": 1})
    lean = state.counters("j", metrics=False)
    assert {n for n in lean if n.startswith("obs.")} == {"obs.x"}  # with WORKERS_LOST
    full = state.counters("j")
    assert {k: v for k, v in full.items() if not k.startswith("obs.ts.")} == lean
    assert lean[WORKERS_LOST] == 2 and lean[task_counter("initial", "SUCCESS")] == 4
    state.delete_job("j")
    assert state.counters("j") == {}


def _gsi_entries(env: Aws, gsi_pk: str) -> list[tuple[str, str, str]]:
    got = env.ddb.query(
        TableName=env.name,
        IndexName="unfinished",
        KeyConditionExpression="gsi_pk = :p",
        ExpressionAttributeValues={":p": {"S": gsi_pk}},
    )
    return [(i["pk"]["S"], i["sk"]["S"], i["gsi_sk"]["S"]) for i in got["Items"]]


def _gsi_keys(env: Aws, gsi_pk: str) -> list[str]:
    return [sk for _, sk, _ in _gsi_entries(env, gsi_pk)]


def test_gsi_holds_exactly_the_unfinished_tasks(aws: Aws) -> None:
    _setup(aws, 6)
    state = aws.backend.state
    state.put_tasks([_task(100, phase="retry_1")])
    state.claim_task("j", "task-000000", "w", "a", 60, now=1.0)
    state.commit_task("j", "task-000000", "a", _commit())
    state.claim_task("j", "task-000001", "w", "b", 60, now=1.0)
    state.fail_task("j", "task-000001", "b", "corrupt", now=2.0)
    state.claim_task("j", "task-000002", "w", "c", 60, now=1.0)  # RUNNING: still unfinished
    state.claim_task("j", "task-000003", "w", "d", 60, now=1.0)
    state.release_task("j", "task-000003", "d")  # PENDING again
    unfinished = ["task-000002", "task-000003", "task-000004", "task-000005", "task-000100"]
    shards = state.task_shards("j")  # type: ignore[attr-defined]
    assert shards == TASK_SHARDS_MIN
    entries = sorted(
        (e for k in range(shards) for e in _gsi_entries(aws, index_pk("j", k))), key=lambda e: e[1]
    )
    assert [sk for _, sk, _ in entries] == [f"TASK#{t}" for t in unfinished]
    # each entry in its task's own shard; a RUNNING one sorted by its lease expiry (1 + 60 s)
    # rounded down to a multiple of half the 60 s lease
    assert {pk for pk, _, _ in entries} == {task_pk("j", task_shard(t, shards)) for t in unfinished}
    assert [g for _, _, g in entries] == [
        "R#00000000060.000000#task-000002",
        "P#task-000003",
        "P#task-000004",
        "P#task-000005",
        "P#task-000100",
    ]
    assert _gsi_keys(aws, "JOB#j") == []  # nothing under the job's own key any more
    assert [t.task_id for t in state.unfinished_tasks("j")] == unfinished
    assert [t.task_id for t in state.unfinished_tasks("j", phase="retry_1")] == ["task-000100"]
    assert _gsi_keys(aws, "JOBS") == ["JOB"]  # the job records' entries (list_jobs)


def _other(env: Aws) -> Backend:
    """A second process's view of the same table."""
    from slurmctl.backends.aws import open_aws

    return open_aws(env.name, env.name, region="us-east-1", endpoint_url=env.endpoint)


# Races are interleaved deterministically: moto does not make a conditional write atomic
# against concurrent requests (it checks, then writes, without a lock), real DynamoDB does.


def test_claim_race_has_one_winner(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    _setup(aws, 2)
    a, b = aws.backend.state, _other(aws).state
    real_get = a.t.get  # type: ignore[attr-defined]
    raced: list[str] = []

    def read_then_lose(k: Any) -> Any:
        item = real_get(k)  # A has read the task; B claims it before A writes
        if not raced:
            tid = k["sk"]["S"].removeprefix("TASK#")
            raced.append(tid)
            assert b.claim_task("j", tid, "wb", "tb", 60, now=raced_now[0]) is not None
        return item

    monkeypatch.setattr(a.t, "get", read_then_lose)  # type: ignore[attr-defined]
    raced_now = [1.0]
    assert a.claim_task("j", "task-000000", "wa", "ta", 60, now=1.0) is None
    t = a.get_task("j", "task-000000")
    assert t is not None and t.lease_token == "tb" and t.attempts == 1
    c = a.counters("j")
    assert c[task_counter("initial", "RUNNING")] == 1
    assert c[task_counter("initial", "PENDING")] == 1
    # a takeover race: the lease of task-000001 expired; A and B both see it, B wins
    raced.clear()
    monkeypatch.setattr(a.t, "get", real_get)  # type: ignore[attr-defined]
    assert a.claim_task("j", "task-000001", "wx", "tx", 10, now=1.0) is not None
    monkeypatch.setattr(a.t, "get", read_then_lose)  # type: ignore[attr-defined]
    raced_now[0] = 100.0
    assert a.claim_task("j", "task-000001", "wa", "ta", 60, now=100.0) is None
    t = a.get_task("j", "task-000001")
    assert t is not None and t.lease_token == "tb" and t.worker_losses == 1 and t.attempts == 2
    c = a.counters("j")
    assert c[task_counter("initial", "RUNNING")] == 2
    assert c[task_counter("initial", "PENDING")] == 0


def test_rate_bucket_race_retries_from_the_new_state(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = aws.backend.state, _other(aws).state
    # burst 3 keeps its spare tokens: no pacing slack, the slots are exactly 1/rate apart
    a.put_bucket(Bucket("j", "default", rate=100.0, burst=3))
    real_call = a.t.call  # type: ignore[attr-defined]
    raced: list[bool] = []

    def write_after_other(op: str, **kwargs: Any) -> Any:
        if op == "update_item" and not raced:  # B reserves between A's read and A's write
            raced.append(True)
            assert b.reserve_slots("j", "default", 2, now=1000.0).times == (1000.0, 1000.01)
        return real_call(op, **kwargs)

    monkeypatch.setattr(a.t, "call", write_after_other)  # type: ignore[attr-defined]
    g = a.reserve_slots("j", "default", 1, now=1000.0)
    assert [round(t, 6) for t in g.times] == [1000.02] and round(g.tat, 6) == 1000.03
    assert not a.release_slots("j", "default", 1000.01, 0.0)  # stale TAT: refused
    assert a.release_slots("j", "default", g.tat, g.tat - 0.01)
    bucket = a.get_bucket("j", "default")
    assert bucket is not None and bucket.tat == g.tat - 0.01


def test_ambiguous_commit_is_recognised(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    _setup(aws, 2)
    svc = aws.backend.state.t.ddb  # type: ignore[attr-defined]
    real = svc.call
    mode: dict[str, bool] = {}

    def flaky(op: str, **kwargs: Any) -> dict[str, Any]:
        if op == "transact_write_items" and mode.pop("applied", None) is not None:
            real(op, **kwargs)  # applied, but the answer is lost
            raise AwsTimeout("dynamodb TransactWriteItems: read timeout")
        if op == "transact_write_items" and mode.pop("lost", None) is not None:
            raise AwsTimeout("dynamodb TransactWriteItems: read timeout")  # never sent
        out: dict[str, Any] = real(op, **kwargs)
        return out

    monkeypatch.setattr(svc, "call", flaky)
    state = aws.backend.state
    state.claim_task("j", "task-000000", "w", "a", 60, now=1.0)
    state.claim_task("j", "task-000001", "w", "b", 60, now=1.0)
    mode["applied"] = True
    assert state.commit_task("j", "task-000000", "a", _commit(rows=3))
    mode["lost"] = True
    assert state.commit_task("j", "task-000001", "b", _commit(rows=4))
    c = state.counters("j")
    assert c[task_counter("initial", "SUCCESS")] == 2 and c[OUTPUT_ROWS] == 7


def test_put_if_absent_sends_if_none_match(aws: Aws) -> None:
    sent: list[str | None] = []
    s3 = aws.backend.objects.s3  # type: ignore[attr-defined]
    for client in (s3.client, s3.current):  # the first call goes through the probe client
        client.meta.events.register(
            "before-send.s3.PutObject",
            lambda request, **_: sent.append(request.headers.get("If-None-Match")),
        )
    objects = aws.backend.objects
    assert objects.put_bytes("k/a", b"one", if_absent=True) is not None
    assert objects.put_bytes("k/a", b"two", if_absent=True) is None
    assert objects.get_bytes("k/a") == b"one"
    assert [h.decode() if isinstance(h, bytes) else h for h in sent] == ["*", "*"]
    # the server itself refuses (412), not a client-side check
    with pytest.raises(ClientError, match="PreconditionFailed"):
        aws.s3.put_object(Bucket=aws.name, Key="slurmctl/k/a", Body=b"x", IfNoneMatch="*")


def test_sha256_metadata_and_tampering(aws: Aws, tmp_path: Path) -> None:
    objects = aws.backend.objects
    info = objects.put_bytes("jobs/j/results/t/1.parquet", b"payload")
    assert info is not None
    head = aws.s3.head_object(Bucket=aws.name, Key="slurmctl/jobs/j/results/t/1.parquet")
    assert head["Metadata"]["sha256"] == hashlib.sha256(b"payload").hexdigest()
    assert objects.url("jobs/j/results/t/1.parquet") == (
        f"s3://{aws.name}/slurmctl/jobs/j/results/t/1.parquet"
    )
    # overwritten behind our back, the old metadata kept
    aws.s3.put_object(
        Bucket=aws.name,
        Key="slurmctl/jobs/j/results/t/1.parquet",
        Body=b"tampered",
        Metadata={"sha256": info.sha256},
    )
    with pytest.raises(IntegrityError, match="does not match"):
        objects.get_bytes("jobs/j/results/t/1.parquet")
    dest = tmp_path / "copy"
    with pytest.raises(IntegrityError):
        objects.get_file("jobs/j/results/t/1.parquet", dest)
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    # without any metadata: the committed sha256 still catches it
    aws.s3.put_object(Bucket=aws.name, Key="slurmctl/jobs/j/x", Body=b"foreign")
    with pytest.raises(IntegrityError):
        objects.get_bytes("jobs/j/x", sha256=info.sha256)
    assert objects.head("jobs/j/x").sha256 == hashlib.sha256(b"foreign").hexdigest()  # type: ignore[union-attr]


def test_checkpoints_are_tagged_for_the_lifecycle_rule(aws: Aws) -> None:
    aws.backend.objects.put_bytes("jobs/j/checkpoints/task-000001.sqlite", b"ck")
    aws.backend.objects.put_bytes("jobs/j/final/j-00000.parquet", b"r")
    tags = aws.s3.get_object_tagging(
        Bucket=aws.name, Key="slurmctl/jobs/j/checkpoints/task-000001.sqlite"
    )["TagSet"]
    assert tags == [{"Key": "slurmctl-class", "Value": "checkpoint"}]
    rules = aws.s3.get_bucket_lifecycle_configuration(Bucket=aws.name)["Rules"]
    ck = next(r for r in rules if r["ID"] == "slurmctl-expire-checkpoints")
    assert ck["Expiration"]["Days"] == 7
    assert ck["Filter"]["And"]["Prefix"] == "slurmctl/jobs/"
    other = aws.s3.get_object_tagging(Bucket=aws.name, Key="slurmctl/jobs/j/final/j-00000.parquet")[
        "TagSet"
    ]
    assert other == []


def test_resources_are_idempotent_and_configured(aws: Aws) -> None:
    from slurmctl.backends.aws.resources import ensure_bucket, ensure_table

    assert not ensure_table(aws.ddb, aws.name)
    assert not ensure_bucket(aws.s3, aws.name, "us-east-1")
    enc = aws.s3.get_bucket_encryption(Bucket=aws.name)["ServerSideEncryptionConfiguration"]
    assert enc["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    pab = aws.s3.get_public_access_block(Bucket=aws.name)["PublicAccessBlockConfiguration"]
    assert all(pab.values())
    gsi = aws.ddb.describe_table(TableName=aws.name)["Table"]["GlobalSecondaryIndexes"][0]
    assert gsi["IndexName"] == "unfinished" and gsi["Projection"]["ProjectionType"] == "KEYS_ONLY"
    # The TLS-only policy, forced on a plain-HTTP endpoint, locks HTTP out (moto enforces it).
    tls = aws.name + "-tls"
    assert ensure_bucket(aws.s3, tls, "us-east-1", deny_insecure_transport=True)
    policy = json.loads(aws.s3.get_bucket_policy(Bucket=tls)["Policy"])
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    with pytest.raises(ClientError, match=r"Forbidden|AccessDenied"):
        aws.s3.put_object(Bucket=tls, Key="x", Body=b"x")


def test_queue_names() -> None:
    name = queue_name("backfill.2025.04.12")
    digest = hashlib.sha256(b"backfill.2025.04.12").hexdigest()[:8]
    assert name == f"slurmctl-backfill-2025-04-12-{digest}"
    assert queue_name("backfill-2025-04-12") != name  # same after replacing dots: the hash differs
    long = "x." * 32
    assert len(queue_name(long)) == 80 and queue_name(long).endswith(
        hashlib.sha256(long.encode()).hexdigest()[:8]
    )


def test_queue_for_dotted_job_id(aws: Aws) -> None:
    job = "backfill.2025.04.12"
    aws.backend.queue.create_queue(job)
    urls = aws.sqs.list_queues(QueueNamePrefix=f"{aws.name}-")["QueueUrls"]
    assert [u.rsplit("/", 1)[1] for u in urls] == [queue_name(job, f"{aws.name}-")]
    attrs = aws.sqs.get_queue_attributes(
        QueueUrl=urls[0], AttributeNames=["MessageRetentionPeriod"]
    )
    assert attrs["Attributes"]["MessageRetentionPeriod"] == str(14 * 24 * 3600)
    aws.backend.queue.send(job, [f"task-{i:06d}" for i in range(23)])
    assert aws.backend.queue.approximate_count(job) == 23
    aws.backend.queue.delete_queue(job)
    aws.backend.queue.delete_queue(job)  # idempotent
    assert aws.backend.queue.approximate_count(job) == 0


def test_frozen_endpoint_times_out_then_recovers(moto_server: MotoServer, tmp_path: Path) -> None:
    # A server of its own: freezing the shared one would stall other tests' connections.
    with running_moto(tmp_path) as frozen:
        env = make_aws(frozen.url, connect_timeout=1.0, read_timeout=1.0, max_attempts=2)
        try:
            state = env.backend.state
            assert state.create_job(JobRecord(job_id="j", status=JobStatus.PENDING))
            frozen.freeze()
            t0 = time.monotonic()
            with pytest.raises(AwsTimeout) as err:
                state.get_job("j")
            assert time.monotonic() - t0 < 15
            assert isinstance(err.value, TimeoutError)
            assert frozen.url in str(err.value)
            frozen.unfreeze()
            job = state.get_job("j")
            assert job is not None and job.status == JobStatus.PENDING
        finally:
            if frozen.frozen:
                frozen.unfreeze()
            env.backend.close()


def test_unreachable_endpoint_is_backend_unavailable(moto_server: MotoServer) -> None:
    from slurmctl.backends.aws import open_aws

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    backend = open_aws("b-unreachable", "t", region="us-east-1", endpoint_url=endpoint)
    t0 = time.monotonic()
    for call, service in (
        (lambda: backend.state.get_job("j"), "dynamodb"),
        (lambda: backend.objects.get_bytes("k"), "s3"),
        (lambda: backend.queue.send("j", ["x"]), "sqs"),
    ):
        with pytest.raises(BackendUnavailable) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and endpoint in msg and msg.startswith(f"cannot reach {service} at")
    assert time.monotonic() - t0 < 20
    backend.close()


def test_endpoint_from_environment(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from slurmctl.backends.aws import open_aws

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    backend = open_aws("bucket-env", "table-env", region="us-east-1")
    assert backend.state.t.ddb.endpoint == moto_endpoint  # type: ignore[attr-defined]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # per service wins
    backend2 = open_aws("bucket-env", "table-env", region="us-east-1")
    assert backend2.objects.s3.endpoint == "http://127.0.0.1:9"  # type: ignore[attr-defined]
    with pytest.raises(UserError, match="table-env"):  # answered: the table is missing
        backend.state.get_job("j")


def test_missing_boto3_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from slurmctl.backends.aws import open_aws

    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(UserError, match=r"pip install 'slurmctl\[aws\]'"):
        open_aws("b", "t", region="us-east-1")


def test_task_fields_round_trip(aws: Aws) -> None:
    _setup(aws, 1)
    got = aws.backend.state.claim_task("j", "task-000000", "w", "tok", 12.5, now=1e9 + 0.1)
    assert got is not None
    again = aws.backend.state.get_task("j", "task-000000")
    assert again == got and again.lease_expires == 1e9 + 0.1 + 12.5
    assert again.status == TaskStatus.RUNNING and again.checkpoint_key is None
