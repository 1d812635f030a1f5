"""The job definition: defaults, exact one-line messages, and the default job id."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from slurmctl.config import (
    ERROR_TYPES,
    PERMANENT_TYPES,
    TRANSIENT_TYPES,
    JobDefinition,
    load_job_definition,
)
from slurmctl.errors import ConfigError, InputError, UserError

BASE = "job_type: backfill\nhandler: handler:process\ninput: users.jsonl\nid_field: user_id\n"


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    if not (tmp_path / "users.jsonl").exists():
        (tmp_path / "users.jsonl").write_text('{"user_id": 1}\n')
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_job_definition(path)
    message = str(info.value)
    assert "\n" not in message
    assert "pydantic" not in message and "http" not in message.replace("http://", "")
    return message.removeprefix(str(path))


def test_defaults(tmp_path: Path) -> None:
    job = load_job_definition(write(tmp_path, BASE))
    assert (job.batch_size, job.workers, job.executor, job.backend) == (100, 4, "local", "local")
    assert job.concurrency == 1
    assert job.params == {} and job.rate_limit is None and job.rate_limits == {}
    assert job.retry.model_dump() == {
        "max_attempts": 3,
        "backoff_s": 30.0,
        "backoff_max_s": 900.0,
        "max_task_failures": 3,
        "mem_factor": None,
    }
    assert (job.output.format, job.output.fan_in) == ("parquet", 10)
    assert (job.lease.ttl_s, job.lease.heartbeat_s, job.checkpoint_every) == (120.0, 30.0, 100)
    assert job.max_quarantine_share == 0.01 and job.max_failure_share == 0.5
    assert (job.breaker.enabled, job.breaker.window, job.breaker.share) == (True, 200, 0.9)
    assert job.aws.prefix == "slurmctl/" and job.slurm.extra_args == []
    assert job.config_path == tmp_path / "job.yaml" and job.config_dir == tmp_path
    assert job.resolved_input() == str(tmp_path / "users.jsonl")


def test_full_example_from_design(tmp_path: Path) -> None:
    text = BASE + (
        "job_id: backfill-2025-04-12\nbatch_size: 50\n"
        'params: {base_url: "http://127.0.0.1:8080", api_token: "${API_TOKEN}"}\n'
        "workers: 8\nexecutor: slurm\n"
        'slurm: {partition: debug, time: "01:00:00", cpus_per_task: 2, mem: 8G,'
        " array_parallelism: 100, extra_args: [--constraint=x]}\n"
        "backend: aws\naws: {bucket: my-bucket, table: slurmctl, region: us-east-1}\n"
        "rate_limit: {tokens_per_sec: 50, burst: 5}\n"
        "rate_limits: {search: {tokens_per_sec: 2.5}}\n"
        "retry: {max_attempts: 5, backoff_s: 1, backoff_max_s: 10, max_task_failures: 2}\n"
        "output: {format: parquet, fan_in: 4}\nmax_failure_share: 0.5\n"
        "error_rules:\n  - {type: throttled, status: 429}\n"
        "  - {type: validation, exception: mymod.BadItem, message: '^bad .*'}\n"
    )
    job = load_job_definition(write(tmp_path, text))
    assert job.effective_job_id() == "backfill-2025-04-12"
    assert job.slurm.time == "01:00:00" and job.slurm.mem == "8G"
    assert job.rate_limits["search"].burst == 3  # the default: two spare tokens absorb send jitter
    assert job.error_rules[1].exception == "mymod.BadItem"
    stored = job.to_stored_dict()
    assert stored["params"]["api_token"] == "${API_TOKEN}"
    assert json.loads(json.dumps(stored)) == stored


def test_unquoted_times_and_numbers_are_read_as_written(tmp_path: Path) -> None:
    text = BASE + "slurm:\n  time: 01:00:00\n  mem: 8192\nrate_limit: {tokens_per_sec: 1e3}\n"
    job = load_job_definition(write(tmp_path, text))
    assert job.slurm.time == "01:00:00"  # not YAML 1.1's base-60 integer 3600
    assert job.slurm.mem == "8192" and job.rate_limit and job.rate_limit.tokens_per_sec == 1000.0
    job = load_job_definition(write(tmp_path, BASE + "slurm: {time: 90}\n"))
    assert job.slurm.time == "90"


def test_error_type_constants() -> None:
    assert set(TRANSIENT_TYPES) | set(PERMANENT_TYPES) == set(ERROR_TYPES)
    assert not set(TRANSIENT_TYPES) & set(PERMANENT_TYPES)
    assert "unknown" in TRANSIENT_TYPES and "poison" in PERMANENT_TYPES


VALID_TOP = (
    "job_id, job_type, handler, input, input_format, input_columns, id_field, batch_size, params, "
    "workers, concurrency, expected_latency_s, "
    "executor, slurm, backend, aws, scratch, rate_limit, rate_limits, retry, output, "
    "max_quarantine_share, max_failure_share, breaker, lease, checkpoint_every, error_rules"
)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "wokers: 3\n",
            f":5: unknown key 'wokers' at top level (did you mean 'workers'?); "
            f"valid keys: {VALID_TOP}",
        ),
        (
            "slurm:\n  partition: debug\n  walltime: 5\n",
            ":7: unknown key 'walltime' in slurm (did you mean 'time'?); valid keys: partition, "
            "account, qos, time, cpus_per_task, mem, gres, array_parallelism, extra_args, setup, "
            "python, container, exclude, min_remaining",
        ),
        (
            "retry: {backof_s: 5}\n",
            ":5: unknown key 'backof_s' in retry (did you mean "
            "'backoff_s'?); valid keys: max_attempts, backoff_s, backoff_max_s, max_task_failures, "
            "mem_factor",
        ),
        (
            "rate_limits:\n  api: {tokens_per_sec: 1, bust: 2}\n",
            ":6: unknown key 'bust' in "
            "rate_limits.api (did you mean 'burst'?); valid keys: tokens_per_sec, burst",
        ),
        ("batch_size: ten\n", ":5: batch_size: expected an integer, found 'ten'"),
        ('batch_size: "10"\n', ":5: batch_size: expected an integer, found '10'"),
        ("workers: 0\n", ":5: workers: expected an integer from 1 to 10000, found 0"),
        ("workers: yes\n", ":5: workers: expected an integer, found true"),
        ("workers:\n", ":5: workers: expected an integer, found nothing"),
        ("concurrency: 0\n", ":5: concurrency: expected an integer from 1 to 1024, found 0"),
        ("concurrency: 1025\n", ":5: concurrency: expected an integer from 1 to 1024, found 1025"),
        ("concurrency: many\n", ":5: concurrency: expected an integer, found 'many'"),
        ("checkpoint_every: 0\n", ":5: checkpoint_every: expected an integer >= 1, found 0"),
        (
            "rate_limit: {tokens_per_sec: 0}\n",
            ":5: rate_limit.tokens_per_sec: expected a number > 0, found 0",
        ),
        ("rate_limit: {burst: 2}\n", ":5: rate_limit.tokens_per_sec: required field missing"),
        (
            "max_quarantine_share: 1.5\n",
            ":5: max_quarantine_share: expected a number from 0 to 1, found 1.5",
        ),
        ("executor: kubernetes\n", ":5: executor: expected 'local' or 'slurm', found 'kubernetes'"),
        ("output: {format: csv}\n", ":5: output.format: expected 'parquet', found 'csv'"),
        ("retry: 5\n", ":5: retry: expected a mapping (key: value), found 5"),
        ("slurm: {extra_args: --x}\n", ":5: slurm.extra_args: expected a list, found '--x'"),
        (
            "slurm: {time: '1:75:00'}\n",
            ":5: slurm.time: expected a Slurm time: MM, MM:SS, "
            "HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, found '1:75:00'",
        ),
        (
            "slurm: {time: '00:05:00', min_remaining: 200}\n",
            ":5: slurm.min_remaining: expected at most 150 s: time 00:05:00 leaves 150 s before "
            "USR1 may come (a 120 s lead, and Slurm signals up to 30 s early), so no worker could "
            "claim a task, found 200",
        ),
        (
            "retry: {mem_factor: 1.5}\n",
            ":5: retry.mem_factor: needs slurm.mem (the memory it multiplies for retry phases)",
        ),
        (
            "slurm: {exclude: ['node 1']}\n",
            ":5: slurm.exclude[0]: expected a node name or hostlist like node[01-04], "
            "found 'node 1'",
        ),
        (
            "slurm: {mem: 8GB}\n",
            ":5: slurm.mem: expected a memory size like 8G, 512M or a number "
            "of megabytes, found '8GB'",
        ),
        (
            "slurm:\n  setup: ['module load x', '']\n",
            ":6: slurm.setup[1]: expected a shell line, found ''",
        ),
        (
            "slurm:\n  setup: 'module load x'\n",
            ":6: slurm.setup: expected a list, found 'module load x'",
        ),
        (
            'slurm:\n  setup: ["module load x\\nmodule load y"]\n',
            ":6: slurm.setup[0]: expected one shell line per entry (split it into several "
            "entries), found 'module load x\\nmodule load y'",
        ),
        (
            "slurm: {python: ~/venv/bin/python}\n",
            ":5: slurm.python: expected an absolute path (like /shared/venv/bin/python) or a "
            "command on the nodes' PATH (like python3), without spaces, quotes or $, "
            "found '~/venv/bin/python'",
        ),
        (
            "slurm: {python: venv/bin/python}\n",
            ":5: slurm.python: expected an absolute path (like /shared/venv/bin/python) or a "
            "command on the nodes' PATH (like python3), without spaces, quotes or $, "
            "found 'venv/bin/python'",
        ),
        (
            "slurm:\n  container: {image: images/x.sif}\n",
            ":6: slurm.container.image: expected an absolute path to an image (like "
            "/shared/images/x.sif) or an image URI (like docker://python:3.11), "
            "found 'images/x.sif'",
        ),
        (
            "slurm:\n  container: {runtime: docker, image: /x.sif}\n",
            ":6: slurm.container.runtime: expected 'apptainer' or 'singularity', found 'docker'",
        ),
        (
            "slurm:\n  container: {args: [--nv]}\n",
            ":6: slurm.container.image: required field missing",
        ),
        (
            "slurm:\n  container: {image: /x.sif, bind: /data}\n",
            ":6: unknown key 'bind' in slurm.container; valid keys: runtime, image, args, python",
        ),
        ("backend: aws\n", ":5: aws.bucket: required when backend is aws"),
        ("backend: aws\naws:\n  bucket: b\n", ":6: aws.table: required when backend is aws"),
        (
            "lease: {ttl_s: 10, heartbeat_s: 10}\n",
            ":5: lease.heartbeat_s: expected less than lease.ttl_s (10), found 10",
        ),
        (
            "rate_limits:\n  default: {tokens_per_sec: 1}\n",
            ":6: rate_limits.default: 'default' is reserved: "
            "set the default bucket with rate_limit",
        ),
        (
            "rate_limits:\n  my-api: {tokens_per_sec: 1}\n",
            ":6: rate_limits.my-api: expected a bucket name of letters, digits and '_'",
        ),
        (
            "error_rules:\n  - type: network\n",
            ":6: error_rules[0]: a rule needs at least one of exception, message or status",
        ),
        (
            "error_rules:\n  - {type: network, status: 503}\n  - {type: flaky, status: 500}\n",
            ":7: error_rules[1].type: expected 'network', 'timeout', 'throttled', 'server', "
            "'preempted', 'crash', 'oom', 'not_found', 'client', 'validation', 'poison', 'schema' "
            "or "
            "'unknown', found 'flaky'",
        ),
        (
            "error_rules:\n  - {type: client, message: '('}\n",
            ":6: error_rules[0].message: "
            "expected a regular expression (missing ), unterminated subpattern at position 0), "
            "found '('",
        ),
        (
            "error_rules:\n  - {type: client, exception: 'not a class'}\n",
            ":6: error_rules[0].exception: expected an exception class name like KeyError or "
            "mymod.MyError, found 'not a class'",
        ),
        ("workers: 3\nworkers: 4\n", ":6: duplicate key 'workers' at top level"),
        ("output: {file_rows: 0}\n", ":5: output.file_rows: expected an integer >= 1, found 0"),
        ("output: {file_mb: -1}\n", ":5: output.file_mb: expected a number > 0, found -1"),
        (
            "output: {file_rows: 10, file_mb: 5}\n",
            ":5: output.file_mb: give output.file_rows or output.file_mb, not both",
        ),
        (
            "output: {partition_by: []}\n",
            ":5: output.partition_by: expected 1 to 8 column names, found []",
        ),
        (
            "output: {partition_by: country}\n",
            ":5: output.partition_by: expected a list, found 'country'",
        ),
        (
            "output:\n  partition_by: [country, 'a/b']\n",
            ":6: output.partition_by[1]: expected a column name (no '/' or '='), found 'a/b'",
        ),
        (
            "output: {partition_by: [day, day]}\n",
            ":5: output.partition_by[1]: expected each column once, found 'day'",
        ),
        (
            "output: {partition_by: [user_id]}\n",
            ":5: output.partition_by[0]: expected a column other than the id field 'user_id' "
            "(one folder per item), found 'user_id'",
        ),
        (
            "output: {partition_by: [tags], schema: {tags: 'list<string>'}}\n",
            ":5: output.partition_by[0]: expected a column of a scalar type: output.schema pins "
            "tags as list<string>",
        ),
        (
            "output: {keep_intermediates: 0}\n",
            ":5: output.keep_intermediates: expected true or false, found 0",
        ),
        (
            "slurm: [a\n",
            ":6: invalid YAML: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence at line 5)",
        ),
    ],
)
def test_one_line_messages(tmp_path: Path, extra: str, expected: str) -> None:
    assert error_of(tmp_path, BASE + extra) == expected


def test_missing_required_field_has_no_line(tmp_path: Path) -> None:
    text = BASE.replace("handler: handler:process\n", "")
    assert error_of(tmp_path, text) == ": handler: required field missing"


def test_first_error_by_line_and_count(tmp_path: Path) -> None:
    text = "job_type: 'a b'\nhandler: x\ninput: in\nid_field: ''\n"
    message = error_of(tmp_path, text)
    assert message.startswith(":1: job_type: expected letters, digits, '.', '_' or '-' (1 to 40 ")
    assert message.endswith(", found 'a b' (and 2 more)")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "job_id: ../etc",
            ":1: job_id: expected letters, digits, '.', '_' or '-' (1 to 64 "
            "characters, not starting with '.'), found '../etc'",
        ),
        (
            "job_id: " + "a" * 70,
            ":1: job_id: expected letters, digits, '.', '_' or '-' (1 to 64 "
            "characters, not starting with '.'), found '" + "a" * 56 + "...",
        ),
        ("job_id: 12", ":1: job_id: expected a string, found 12"),
    ],
)
def test_job_id(tmp_path: Path, line: str, expected: str) -> None:
    assert error_of(tmp_path, line + "\n" + BASE) == expected


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (
            "handler",
            "handler.process",
            "expected module:function (like handler:process), both "
            "Python names, found 'handler.process'",
        ),
        ("handler", "my-mod:process", "expected module:function"),
        (
            "input",
            "http://example.com/x",
            "expected a path relative to the job definition, or "
            "s3://bucket/key, found 'http://example.com/x'",
        ),
        (
            "input",
            "s3://bucket",
            "expected a path relative to the job definition, or s3://bucket/key",
        ),
        ("id_field", "''", "id_field: expected a non-empty string, found ''"),
        ("job_type", "x" * 41, "job_type: expected letters, digits"),
    ],
)
def test_required_field_formats(tmp_path: Path, field: str, value: str, expected: str) -> None:
    text = "\n".join(
        f"{field}: {value}" if line.startswith(field + ":") else line for line in BASE.splitlines()
    )
    assert expected in error_of(tmp_path, text + "\n")


def test_accepted_formats(tmp_path: Path) -> None:
    for time in ("5", "05:30", "01:00:00", "2-12", "2-12:30", "2-12:30:15", "UNLIMITED"):
        job = load_job_definition(write(tmp_path, BASE + f"slurm: {{time: '{time}'}}\n"))
        assert job.slurm.time == time
    text = BASE.replace("users.jsonl", "s3://my-bucket/in/users.jsonl") + "handler: a.b_c:run\n"
    job = load_job_definition(write(tmp_path, text.replace("handler: handler:process\n", "")))
    assert job.resolved_input() == "s3://my-bucket/in/users.jsonl" and job.handler == "a.b_c:run"


def test_file_problems(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read job definition: No such file"):
        load_job_definition(missing)
    assert error_of(tmp_path, "- a\n- b\n") == (
        ":1: expected a mapping at the top level (job_type: ..., handler: ...), found a list"
    )
    assert error_of(tmp_path, "# nothing\n") == (
        ": the job definition is empty; expected a mapping with job_type, handler, input and "
        "id_field"
    )
    assert error_of(tmp_path, BASE + "  bad: indent\n").startswith(":5: invalid YAML: ")


def test_literal_secret_refused_without_leaking(tmp_path: Path) -> None:
    text = BASE + "params:\n  base_url: http://x\n  auth:\n    api_token: sk-live-0123456789\n"
    message = error_of(tmp_path, text)
    assert message == (
        ':8: params.auth.api_token: looks like a secret written literally; write "${API_TOKEN}" '
        'and export API_TOKEN in the workers\' environment (or "${file:/path}")'
    )
    assert "sk-live" not in message
    message = error_of(tmp_path, BASE + "params: sk-live-0123456789\n")
    assert message == ":5: params: expected a mapping (key: value), found a string"


def test_secret_references_accepted(tmp_path: Path) -> None:
    text = BASE + (
        "params:\n  api_token: ${API_TOKEN}\n  webhook_url: ${file:~/hook}\n"
        "  auth_header: Bearer ${TOKEN}\n  max_tokens: 100\n  password: ''\n"
    )
    job = load_job_definition(write(tmp_path, text))
    assert job.params["api_token"] == "${API_TOKEN}"


def test_malformed_reference(tmp_path: Path) -> None:
    message = error_of(tmp_path, BASE + "params:\n  url: http://x/${bad name}\n")
    assert message.startswith(":6: params.url: malformed reference")


def _job(tmp_path: Path, text: str = BASE) -> JobDefinition:
    return load_job_definition(write(tmp_path, text))


def test_effective_job_id_is_deterministic(tmp_path: Path) -> None:
    day = datetime(2025, 4, 12, 23, 30, tzinfo=UTC)
    first = _job(tmp_path).effective_job_id(day)
    assert first.startswith("backfill-20250412-") and len(first.split("-")[-1]) == 8
    assert _job(tmp_path).effective_job_id(day) == first  # same bytes, same input
    assert _job(tmp_path).effective_job_id(datetime(2025, 4, 13, tzinfo=UTC)) != first
    assert _job(tmp_path, BASE + "workers: 5\n").effective_job_id(day) != first
    job = _job(tmp_path)
    os.utime(tmp_path / "users.jsonl", ns=(1, 1))
    assert job.effective_job_id(day) != first  # the input changed
    (tmp_path / "users.jsonl").unlink()
    with pytest.raises(InputError, match="cannot read input"):
        job.effective_job_id(day)


def test_effective_job_id_for_s3_input(tmp_path: Path) -> None:
    text = BASE.replace("users.jsonl", "s3://bucket/users.jsonl")
    day = datetime(2025, 1, 2, tzinfo=UTC)
    assert _job(tmp_path, text).effective_job_id(day) == _job(tmp_path, text).effective_job_id(day)


def test_in_memory_definition() -> None:
    job = JobDefinition.model_validate(
        {"job_type": "t", "handler": "h:f", "input": "s3://bk1/k", "id_field": "id"}
    )
    assert job.config_dir == Path.cwd()
    assert job.effective_job_id().startswith("t-")
    with pytest.raises(UserError):  # ConfigError is a UserError: the CLI prints it, exit 2
        raise ConfigError("x")
