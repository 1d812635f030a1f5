"""Small AWS pieces: the moto launcher's DynamoDB lock, the streamed S3 input, the parallel batch
uploads, throttling retried by botocore's adaptive mode."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from slurmctl.backends import protocol
from slurmctl.backends.aws.dynamo import Expr, condition
from slurmctl.backends.objectstore import lines_of
from slurmctl.coordinator.scan import InputScanner
from slurmctl.coordinator.submit import UPLOAD_WINDOW, _in_order
from slurmctl.errors import InputError
from tests.aws.conftest import Aws
from tests.moto_launch import SerialiseDynamoDB
from tests.moto_server import LAUNCHER, moto_command, require_boto3

require_boto3(module_level=True)


# --- the protocol's conditions as ConditionExpressions ----------------------------------------
def test_conditions_compile_to_condition_expressions() -> None:
    e = Expr()
    lease = protocol.acquire_job_lease("j", "me", 30.0, now=5.0)
    assert condition(e, lease.cond) == ("(attribute_not_exists(pk) OR #n0 = :v0 OR #n1 <= :v1)")
    assert e.names == {"#n0": "holder", "#n1": "expires"}
    assert e.values == {":v0": {"S": "me"}, ":v1": {"N": "5.0"}}
    e = Expr()
    # unset on an existing record: attribute_not_exists alone would hold on an absent item
    assert condition(e, protocol.all_of(protocol.PRESENT, protocol.eq("error", None))) == (
        "(attribute_exists(pk) AND (attribute_exists(pk) AND attribute_not_exists(#n0)))"
    )
    e = Expr()
    assert condition(e, protocol.lt("lease_expires", 7.25)) == "#n0 < :v0"
    assert e.values == {":v0": {"N": "7.25"}}


# --- the launcher ---------------------------------------------------------------------------
class _SlowApp:
    """A WSGI app that takes 20 ms a request and records how many ran at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
        start_response("200 OK", [])
        return [b"ok"]


def _most_at_once(target: str | None) -> int:
    app = _SlowApp()
    wrapped = SerialiseDynamoDB(app)
    environ = {"HTTP_X_AMZ_TARGET": target} if target else {}
    threads = [
        threading.Thread(target=wrapped, args=(dict(environ), lambda *a: None)) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return app.most


def test_launcher_serialises_dynamodb_requests_only() -> None:
    assert _most_at_once("DynamoDB_20120810.TransactWriteItems") == 1
    assert _most_at_once("AmazonSQS.ReceiveMessage") > 1  # long polls must not block the rest
    assert _most_at_once(None) > 1  # S3: no target header
    assert moto_command() == [moto_command()[0], str(LAUNCHER)]  # type: ignore[index]


# --- the S3 input ---------------------------------------------------------------------------
def test_lines_of_splits_chunks_as_a_file_does(tmp_path: Path) -> None:
    rng = random.Random(7)
    data = b"".join(
        rng.choice([b"a", b"bc", b"\n", b"\r\n", b'{"id": 1}', b"\n\n"]) for _ in range(3000)
    )
    path = tmp_path / "x"
    path.write_bytes(data)
    with open(path, "rb") as f:
        expected = list(f)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(0, 40)))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert list(lines_of(chunks)) == expected
    assert list(lines_of([b"no newline"])) == [b"no newline"]
    assert list(lines_of([])) == []


def _s3_input(aws: Aws, body: bytes, chunk_size: int) -> Any:
    from slurmctl.backends.aws.inputs import S3Input

    aws.s3.put_object(Bucket=aws.name, Key="in/data.jsonl", Body=body)
    return S3Input(aws.backend.objects.s3, f"s3://{aws.name}/in/data.jsonl", chunk_size=chunk_size)  # type: ignore[attr-defined]


def _break_first_stream(
    monkeypatch: pytest.MonkeyPatch, source: Any, after: int
) -> list[dict[str, Any]]:
    """The first GET's body fails (a read timeout) after `after` chunks; the calls are kept."""
    from botocore.exceptions import ReadTimeoutError

    service = source.s3
    real = service.call
    calls: list[dict[str, Any]] = []

    class Broken:
        def __init__(self, body: Any) -> None:
            self.body = body

        def iter_chunks(self, size: int) -> Iterator[bytes]:
            for n, chunk in enumerate(self.body.iter_chunks(size)):
                if n == after:
                    raise ReadTimeoutError(endpoint_url="http://moto")
                yield chunk

        def close(self) -> None:
            self.body.close()

    def call(op: str, **kwargs: Any) -> dict[str, Any]:
        out: dict[str, Any] = real(op, **kwargs)
        if op == "get_object":
            calls.append(kwargs)
            if len(calls) == 1:
                out = {**out, "Body": Broken(out["Body"])}
        return out

    monkeypatch.setattr(service, "call", call)
    return calls


def test_s3_input_carries_on_after_a_broken_stream(
    aws: Aws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    body = b"".join(b'{"id": %d}\n' % i for i in range(2000)) + b"{bad\n"
    source = _s3_input(aws, body, chunk_size=1000)
    calls = _break_first_stream(monkeypatch, source, after=3)
    assert source.size() == len(body)
    scanner = InputScanner(source, "id", tmp_path / "work", None)
    assert len(list(scanner.items())) == 2000 and scanner.stats.quarantined == 1
    assert len(calls) == 2
    assert "Range" not in calls[0] and calls[1]["Range"] == f"bytes=3000-{len(body) - 1}"
    assert calls[1]["IfMatch"] == calls[0]["IfMatch"]  # the same version of the object


def test_s3_input_replaced_while_read_is_refused(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _s3_input(aws, b'{"id": 1}\n' * 500, chunk_size=1000)
    _break_first_stream(monkeypatch, source, after=1)
    source.size()
    aws.s3.put_object(Bucket=aws.name, Key="in/data.jsonl", Body=b'{"id": 2}\n' * 500)
    with pytest.raises(InputError, match="replaced while it was being read"):
        list(source.lines())


# --- parallel uploads -----------------------------------------------------------------------
def test_uploads_run_in_parallel_keep_order_and_stay_bounded() -> None:
    lock = threading.Lock()
    state = {"running": 0, "most": 0, "cut": 0, "done": 0, "ahead": 0}

    def batches() -> Iterator[list[tuple[int, bytes]]]:
        for i in range(200):
            with lock:
                state["cut"] += 1
                state["ahead"] = max(state["ahead"], state["cut"] - state["done"])
            yield [(i, b"x" * 10)]

    def put(group: list[tuple[int, bytes]]) -> Any:
        [(index, _)] = group
        with lock:
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
        time.sleep(random.uniform(0, 0.004))
        with lock:
            state["running"] -= 1
            state["done"] += 1
        return index

    got: list[Any] = list(_in_order(put, batches(), 8))
    assert got == list(range(200))
    assert state["most"] > 1
    assert state["ahead"] <= UPLOAD_WINDOW + 1


def test_a_failed_upload_stops_the_submission() -> None:
    def put(group: list[tuple[int, bytes]]) -> Any:
        [(index, _)] = group
        if index == 5:
            raise InputError("batch 5 differs")
        return index

    with pytest.raises(InputError, match="batch 5"):
        list(_in_order(put, ([(i, b"x")] for i in range(100)), 4))


# --- throttling -----------------------------------------------------------------------------
class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def _throttle(client: Any, event: str, times: int, status: int, body: bytes) -> list[float]:
    from botocore.awsrequest import AWSResponse

    seen: list[float] = []

    def before_send(request: Any, **_: Any) -> Any:
        seen.append(time.monotonic())
        if len(seen) <= times:
            return AWSResponse(request.url, status, {}, _Raw(body))
        return None

    client.meta.events.register(event, before_send)
    return seen


def test_throttling_is_retried_with_backoff(aws: Aws) -> None:
    state, objects = aws.backend.state, aws.backend.objects
    state.get_job("warm-up")  # the first call goes through the probe client
    objects.head("warm-up")
    ddb = state.t.ddb.client  # type: ignore[attr-defined]
    sent = _throttle(
        ddb,
        "before-send.dynamodb.GetItem",
        1,
        400,
        b'{"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException", "message": "slow"}',
    )
    assert state.get_job("nope") is None
    assert len(sent) == 2  # a throttle (backed off with jitter), then the answer
    s3 = objects.s3.client  # type: ignore[attr-defined]
    slow = _throttle(
        s3,
        "before-send.s3.PutObject",
        1,
        503,
        b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>",
    )
    assert objects.put_bytes("jobs/x/y", b"data") is not None
    assert len(slow) == 2


# --- task retention -------------------------------------------------------------------------
def test_retention_stamps_finished_jobs_and_unstamps_resumed_ones(aws: Aws) -> None:
    from slurmctl.backends.aws.dynamo import TASK_SHARDS_MIN, task_key
    from slurmctl.backends.aws.resources import set_task_retention
    from slurmctl.backends.statestore import JobRecord, TaskRecord
    from slurmctl.errors import JobStateError
    from slurmctl.states import JobStatus

    state = aws.backend.state
    assert state.create_job(JobRecord(job_id="r", status=JobStatus.RUNNING))
    tasks = [
        TaskRecord("r", f"task-{i:06d}", f"batch-{i:06d}", "initial", "initial_batch", 1, "k", "s")
        for i in range(3)
    ]
    state.put_tasks(tasks)

    def stamps() -> list[str | None]:
        out = []
        for t in tasks:
            key = task_key("r", t.task_id, TASK_SHARDS_MIN)
            item = aws.ddb.get_item(TableName=aws.name, Key=key)["Item"]
            out.append(item.get("expires_at", {}).get("N"))
        return out

    state.update_job("r", {"status": JobStatus.COMPLETED})
    assert stamps() == [None, None, None]  # no retention set: nothing expires
    assert set_task_retention(aws.ddb, aws.name, 2)
    state.update_job("r", {"status": JobStatus.RUNNING})
    state.update_job("r", {"status": JobStatus.COMPLETED})
    [a, b, c] = stamps()
    assert a is not None and a == b == c and abs(int(a) - time.time() - 2 * 86400) < 60
    state.update_job("r", {"status": JobStatus.RUNNING})  # a retry: the stamps come off
    assert stamps() == [None, None, None]
    state.update_job("r", {"status": JobStatus.CANCELLED})
    past = {":e": {"N": str(time.time() - 1)}}
    aws.ddb.update_item(
        TableName=aws.name,
        Key={"pk": {"S": "JOB#r"}, "sk": {"S": "JOB"}},
        UpdateExpression="SET tasks_expire_at = :e",
        ExpressionAttributeValues=past,
    )
    with pytest.raises(JobStateError, match="task records expired"):
        state.update_job("r", {"status": JobStatus.RUNNING})
