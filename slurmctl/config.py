"""The job definition (the README's "The job definition"): pydantic models and a YAML loader.

Every mistake in a definition becomes one ConfigError line naming the file, the line when known,
the field, what was expected and what was found (invariant 7): a user fixes it without reading a
traceback or a pydantic URL.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from slurmctl.config_yaml import FieldProblem, format_validation_error, read_yaml_mapping
from slurmctl.errors import ConfigError, InputError, UserError
from slurmctl.ids import validate_job_id
from slurmctl.ratelimit.allocation import SIGNAL_EARLY_S, signal_lead_s, time_limit_s
from slurmctl.secrets import ParamsError, check_no_literal_secrets

ERROR_TYPES = (
    "network",
    "timeout",
    "throttled",
    "server",
    "preempted",
    "crash",
    "oom",
    "not_found",
    "client",
    "validation",
    "poison",
    "schema",
    "unknown",
)
TRANSIENT_TYPES = (
    "network",
    "timeout",
    "throttled",
    "server",
    "preempted",
    "crash",
    "oom",
    "unknown",
)
PERMANENT_TYPES = ("not_found", "client", "validation", "poison", "schema")
ErrorType = Literal[
    "network",
    "timeout",
    "throttled",
    "server",
    "preempted",
    "crash",
    "oom",
    "not_found",
    "client",
    "validation",
    "poison",
    "schema",
    "unknown",
]
assert set(get_args(ErrorType)) == set(ERROR_TYPES) == set(TRANSIENT_TYPES + PERMANENT_TYPES)

if TYPE_CHECKING:
    from slurmctl.output_schema import Pin

INPUT_COLUMN_TYPES = ("string", "int64", "float64", "bool", "timestamp", "json")
"""The types a CSV column may be declared with (`input_columns`): output.schema's scalar names."""

_IDENT_RE = re.compile(r"^[A-Za-z_]\w*$", re.ASCII)
_TIME_RE = re.compile(r"^(?:\d+-\d{1,2}|\d+)(?::\d{1,2}){0,2}$")


def _matching(regex: str, expected: str, flags: int = re.ASCII) -> AfterValidator:
    """A validator refusing strings that do not match regex, saying what was expected."""
    pattern = re.compile(regex, flags)

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(expected)
        return value

    return AfterValidator(check)


def _int_as_str(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_time(value: str) -> str:
    if value.upper() in ("UNLIMITED", "INFINITE"):
        return value
    days, _, clock = value.rpartition("-")
    fields = clock.split(":")
    limits = ([24] if days else [0]) + [60] * (len(fields) - 1)
    if not _TIME_RE.fullmatch(value) or any(
        lim and int(f) >= lim for f, lim in zip(fields, limits, strict=True)
    ):
        raise ValueError("expected a Slurm time: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    return value


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"expected a regular expression ({exc})") from None
    return value


# `time: 60` is 60 minutes and `mem: 8192` is 8192 MB, as sbatch reads them.
SlurmTime = Annotated[str, BeforeValidator(_int_as_str), AfterValidator(_check_time)]
SlurmMem = Annotated[
    str,
    BeforeValidator(_int_as_str),
    _matching(
        r"^\d+[KMGT]?$", "expected a memory size like 8G, 512M or a number of megabytes", re.I
    ),
]
JobType = Annotated[
    str,
    _matching(  # <= 40 characters so that the default job id fits in 64
        r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,39}$",
        "expected letters, digits, '.', '_' or '-' (1 to 40 characters, not starting with '.')",
    ),
]
Handler = Annotated[
    str,
    _matching(
        r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$",
        "expected module:function (like handler:process), both Python names",
    ),
]
InputRef = Annotated[
    str,
    _matching(
        r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+|(?!\s*$)(?!s3:)(?![A-Za-z][\w+.-]*://).+)$",
        "expected a path relative to the job definition, or s3://bucket/key",
    ),
]
ExceptionName = Annotated[
    str,
    _matching(
        r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$",
        "expected an exception class name like KeyError or mymod.MyError",
    ),
]
HttpUrl = Annotated[str, _matching(r"^https?://\S+$", "expected an http:// or https:// URL")]


DEFAULT_MAX_FAILURE_SHARE = 0.5
"""A job where more than half the items failed is broken, not noisy: it ends FAILED (exit 1)
rather than COMPLETED. Set `max_failure_share` to tighten it, or null to turn the share off (a
job whose every item failed is FAILED whatever this says)."""


MAX_CONCURRENCY = 1024
"""Items in flight per worker, at most: beyond it threads cost more than they wait."""


class _Section(BaseModel):
    """Strict: YAML already types values, so `workers: yes` or `batch_size: "10"` is a mistake."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _check_setup_line(value: str) -> str:
    if not value.strip():
        raise ValueError("expected a shell line")
    if "\n" in value or "\r" in value:
        raise ValueError("expected one shell line per entry (split it into several entries)")
    if value.rstrip().endswith("\\"):
        raise ValueError("expected a complete shell line, not one continued with '\\'")
    return value


SetupLine = Annotated[str, AfterValidator(_check_setup_line)]
Interpreter = Annotated[
    str,
    _matching(
        r"^(/[^\s$`'\"\\]*[^/\s$`'\"\\]|[A-Za-z0-9_][A-Za-z0-9_.+-]*)$",
        "expected an absolute path (like /shared/venv/bin/python) or a command on the nodes' "
        "PATH (like python3), without spaces, quotes or $",
    ),
]
ContainerImage = Annotated[
    str,
    _matching(
        r"^(/\S+|[a-z][a-z0-9+.-]*:\S+)$",
        "expected an absolute path to an image (like /shared/images/x.sif) or an image URI "
        "(like docker://python:3.11)",
    ),
]


class ContainerOptions(_Section):
    """`slurm.container`: the workers run as `<runtime> exec <args> <image> <python> -m slurmctl
    ...` (Apptainer/Singularity). Finalize stays on the host: it calls sbatch and squeue, which
    images rarely have."""

    runtime: Literal["apptainer", "singularity"] = "apptainer"
    image: ContainerImage
    args: list[Annotated[str, _matching(r"^[^\n\r]+$", "expected a non-empty argument")]] = Field(
        default_factory=list
    )
    """Passed to `<runtime> exec` before the image, each as one word (`--bind /data`, `--nv`)."""
    python: Interpreter = "python"
    """The interpreter inside the image, which must have slurmctl installed."""


class SlurmOptions(_Section):
    """sbatch options; unknown keys are refused so a typo never silently drops a limit."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: SlurmTime | None = None
    cpus_per_task: int | None = Field(default=None, ge=1)
    mem: SlurmMem | None = None
    gres: str | None = None
    array_parallelism: int | None = Field(default=None, ge=1)
    extra_args: list[str] = Field(default_factory=list)
    setup: list[SetupLine] = Field(default_factory=list)
    """Shell lines the batch scripts run before slurmctl starts (`module load python/3.11`,
    `source /shared/venv/bin/activate`); a failing line stops the script with its number."""
    python: Interpreter | None = None
    """The interpreter on the nodes, when it is not the submitter's (`sys.executable`)."""
    container: ContainerOptions | None = None
    exclude: list[
        Annotated[
            str,
            _matching(
                r"^[A-Za-z0-9][A-Za-z0-9_.\[\],-]*$",
                "expected a node name or hostlist like node[01-04]",
            ),
        ]
    ] = Field(default_factory=list)
    """Nodes the workers must avoid (`--exclude`), besides those slurmctl found bad."""
    min_remaining: float | None = Field(default=None, ge=0)
    """Seconds a task needs, instead of the worker's own estimate (worker/walltime.py): a worker
    claims a task only while at least this long remains before USR1 may come. 0: claim until
    USR1 comes."""

    @model_validator(mode="after")
    def _min_remaining_fits(self) -> SlurmOptions:
        limit = time_limit_s(self.time)
        if self.min_remaining and limit is not None:
            room = limit - signal_lead_s(self.time) - SIGNAL_EARLY_S
            if self.min_remaining > room:
                raise FieldProblem(
                    f"expected at most {room:g} s: time {self.time} leaves {room:g} s before USR1 "
                    f"may come (a {signal_lead_s(self.time)} s lead, and Slurm signals up to "
                    f"{SIGNAL_EARLY_S:g} s early), so no worker could claim a task",
                    ("min_remaining",),
                )
        return self


class AwsOptions(_Section):
    bucket: str | None = None
    table: str | None = None
    region: str | None = None
    endpoint_url: HttpUrl | None = None
    prefix: str = "slurmctl/"
    expire_intermediates_days: int | None = Field(default=None, ge=1, le=36500)
    """`slurmctl init` sets an S3 lifecycle rule deleting the intermediates (batches, per-task
    results, aggregation levels) this many days after each was written; unset: kept."""


class RateLimit(_Section):
    tokens_per_sec: float = Field(gt=0)
    burst: int = Field(default=3, ge=1)
    """3 by default: two spare tokens absorb the send jitter (docs/ratelimit.md); an API that
    allows no burst at all is `burst: 1`, sent at rate / 1.2."""


class RetryOptions(_Section):
    max_attempts: int = Field(default=3, ge=1)
    backoff_s: float = Field(default=30.0, ge=0)
    backoff_max_s: float = Field(default=900.0, ge=0)
    max_task_failures: int = Field(default=3, ge=1)
    mem_factor: float | None = Field(default=None, ge=1)
    """Slurm: retry phase n asks for `slurm.mem` times mem_factor**n (after an OOM kill, an
    item fails as `oom`, transient, and its retry gets more memory)."""


MAX_PARTITION_COLUMNS = 8


class OutputOptions(_Section):
    format: Literal["parquet"] = "parquet"
    fan_in: int = Field(default=10, ge=2, le=1000)
    schema_: dict[str, str] | None = Field(default=None, alias="schema")
    """Pinned column types (output_schema.py's names); the other columns are inferred."""
    partition_by: list[str] | None = None
    """Columns of a hive-style partitioned dataset (`final/<col>=<value>/...`)."""
    file_rows: int | None = Field(default=None, ge=1)
    """At most this many rows per output file (several files instead of one)."""
    file_mb: float | None = Field(default=None, gt=0)
    """Output files of about this many megabytes (a target: rows per file estimated)."""
    keep_intermediates: bool = True
    """False: at COMPLETED, remove what `clean --intermediates` removes."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _check_schema(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        from slurmctl.output_schema import parse_type  # pyarrow: not for `status`

        for name, text in (value or {}).items():
            if not name.strip():
                raise FieldProblem("expected a column name", (name,))
            try:
                parse_type(text)
            except ValueError as exc:
                raise FieldProblem(str(exc), (name,)) from None
        return value

    @field_validator("partition_by")
    @classmethod
    def _check_partition_by(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not 1 <= len(value) <= MAX_PARTITION_COLUMNS:
            raise FieldProblem(f"expected 1 to {MAX_PARTITION_COLUMNS} column names")
        seen: set[str] = set()
        for i, name in enumerate(value or []):
            if not name.strip() or "/" in name or "=" in name:
                raise FieldProblem("expected a column name (no '/' or '=')", (i,))
            if name in seen:
                raise FieldProblem("expected each column once", (i,))
            seen.add(name)
        return value

    @model_validator(mode="after")
    def _one_file_size(self) -> OutputOptions:
        if self.file_rows is not None and self.file_mb is not None:
            raise FieldProblem(
                "give output.file_rows or output.file_mb, not both", ("file_mb",), show_found=False
            )
        for i, name in enumerate(self.partition_by or []):
            pinned = (self.schema_ or {}).get(name, "").strip()
            if pinned and ("<" in pinned or "{" in pinned or pinned.startswith(("list", "struct"))):
                raise FieldProblem(
                    f"expected a column of a scalar type: output.schema pins {name} as {pinned}",
                    ("partition_by", i),
                    show_found=False,
                )
        return self

    @property
    def several_files(self) -> bool:
        """Whether the final output is a dataset of several files rather than one file."""
        return bool(self.partition_by) or self.file_rows is not None or self.file_mb is not None

    def pins(self) -> dict[str, Pin]:
        """The pinned columns, parsed."""
        from slurmctl.output_schema import Pin, parse_type

        return {n: Pin(*parse_type(t)) for n, t in (self.schema_ or {}).items()}


class BreakerOptions(_Section):
    """The circuit breaker (worker/breaker.py): pause the job when, of the last `window` items
    attempted job-wide, a `share` or more failed with one error type."""

    enabled: bool = True
    window: int = Field(default=200, ge=10, le=100_000)
    share: float = Field(default=0.9, gt=0, le=1)


class LeaseOptions(_Section):
    ttl_s: float = Field(default=120.0, ge=1)
    heartbeat_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _heartbeat_within_ttl(self) -> LeaseOptions:
        if self.heartbeat_s >= self.ttl_s:
            raise FieldProblem(f"expected less than lease.ttl_s ({self.ttl_s:g})", ("heartbeat_s",))
        return self


class ErrorRule(_Section):
    """Classifies a handler failure: all of exception, message and status that are given match."""

    type: ErrorType
    exception: ExceptionName | None = None
    message: Annotated[str, AfterValidator(_check_regex)] | None = None
    status: int | None = Field(default=None, ge=100, le=599)

    @model_validator(mode="after")
    def _needs_a_condition(self) -> ErrorRule:
        if self.exception is None and self.message is None and self.status is None:
            msg = "a rule needs at least one of exception, message or status"
            raise FieldProblem(msg, show_found=False)
        return self


class JobDefinition(_Section):
    """One job definition file. The loader binds it to its file (config_path, config_dir)."""

    job_id: str | None = None
    job_type: JobType
    handler: Handler
    input: InputRef
    input_format: Literal["jsonl", "csv", "parquet"] | None = None
    """None: from each file's extension (coordinator/inputs.py)."""
    input_columns: dict[str, str] | None = None
    """CSV only: the types of some columns (the others are strings)."""
    id_field: str = Field(min_length=1)
    batch_size: int = Field(default=100, ge=1, le=1_000_000)
    params: dict[str, Any] = Field(default_factory=dict)
    workers: int = Field(default=4, ge=1, le=10_000)
    concurrency: int = Field(default=1, ge=1, le=MAX_CONCURRENCY)
    """Items each worker keeps in flight: a pool of threads for a sync `process`, one event
    loop for an `async def process` (worker/inflight.py). 1: one item at a time."""
    expected_latency_s: float | None = Field(default=None, gt=0, le=3600)
    """A hint: how long the API takes per item. Only `submit --dry-run` reads it, to print the
    throughput the definition can reach (workers x concurrency / latency, vs the rate limit)."""
    executor: Literal["local", "slurm"] = "local"
    slurm: SlurmOptions = Field(default_factory=SlurmOptions)
    backend: Literal["local", "aws"] = "local"
    aws: AwsOptions = Field(default_factory=AwsOptions)
    scratch: str | None = None
    rate_limit: RateLimit | None = None
    rate_limits: dict[str, RateLimit] = Field(default_factory=dict)
    retry: RetryOptions = Field(default_factory=RetryOptions)
    output: OutputOptions = Field(default_factory=OutputOptions)
    max_quarantine_share: float = Field(default=0.01, ge=0, le=1)
    max_failure_share: float | None = Field(default=DEFAULT_MAX_FAILURE_SHARE, ge=0, le=1)
    breaker: BreakerOptions = Field(default_factory=BreakerOptions)
    lease: LeaseOptions = Field(default_factory=LeaseOptions)
    checkpoint_every: int = Field(default=100, ge=1)
    error_rules: list[ErrorRule] = Field(default_factory=list)

    _config_path: Path | None = PrivateAttr(default=None)
    _config_bytes: bytes | None = PrivateAttr(default=None)

    @field_validator("job_id")
    @classmethod
    def _check_job_id(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                validate_job_id(value)
            except UserError as exc:  # reuse ids.py's wording, minus its own "job_id:"/"found"
                raise ValueError(str(exc).split(": ", 1)[1].rsplit(", found ", 1)[0]) from None
        return value

    @field_validator("params")
    @classmethod
    def _check_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            check_no_literal_secrets(value)
        except ParamsError as exc:
            raise FieldProblem(exc.reason, exc.path, show_found=False) from None
        return value

    @field_validator("rate_limits")
    @classmethod
    def _check_bucket_names(cls, value: dict[str, RateLimit]) -> dict[str, RateLimit]:
        for name in value:
            if name == "default":
                raise FieldProblem(
                    "'default' is reserved: set the default bucket with rate_limit",
                    (name,),
                    show_found=False,
                )
            if not _IDENT_RE.fullmatch(name):
                raise FieldProblem(
                    "expected a bucket name of letters, digits and '_'", (name,), show_found=False
                )
        return value

    @field_validator("input_columns")
    @classmethod
    def _check_input_columns(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, text in (value or {}).items():
            if not name.strip():
                raise FieldProblem("expected a column name", (name,))
            if text.strip() not in INPUT_COLUMN_TYPES:
                expected = ", ".join(INPUT_COLUMN_TYPES)
                raise FieldProblem(f"expected one of {expected}", (name,))
        return value

    @model_validator(mode="after")
    def _id_input_column_is_text_or_int(self) -> JobDefinition:
        declared = (self.input_columns or {}).get(self.id_field)
        if declared is not None and declared.strip() not in ("string", "int64"):
            raise FieldProblem(
                "expected string or int64: the id column holds ids, which are text or integers",
                ("input_columns", self.id_field),
            )
        return self

    @model_validator(mode="after")
    def _not_partitioned_by_id(self) -> JobDefinition:
        for i, name in enumerate(self.output.partition_by or []):
            if name == self.id_field:
                raise FieldProblem(
                    f"expected a column other than the id field {self.id_field!r} "
                    "(one folder per item)",
                    ("output", "partition_by", i),
                )
        return self

    @model_validator(mode="after")
    def _id_column_is_text_or_int(self) -> JobDefinition:
        pinned = (self.output.schema_ or {}).get(self.id_field)
        if pinned is not None and pinned.strip() not in ("string", "int64"):
            raise FieldProblem(
                "expected string or int64: the id column holds ids, which are text or integers",
                ("output", "schema", self.id_field),
            )
        return self

    @model_validator(mode="after")
    def _mem_factor_needs_mem(self) -> JobDefinition:
        if self.retry.mem_factor is not None and self.slurm.mem is None:
            raise FieldProblem(
                "needs slurm.mem (the memory it multiplies for retry phases)",
                ("retry", "mem_factor"),
                show_found=False,
            )
        return self

    @model_validator(mode="after")
    def _aws_needs_bucket_and_table(self) -> JobDefinition:
        if self.backend == "aws":
            for name in ("bucket", "table"):
                if not getattr(self.aws, name):
                    raise FieldProblem(
                        "required when backend is aws",
                        ("aws", name),
                        show_found=False,
                        line_loc=("backend",),
                    )
        return self

    @property
    def config_path(self) -> Path:
        """The file this definition was loaded from (cwd/job.yaml when built in memory)."""
        return self._config_path or Path.cwd() / "job.yaml"

    @property
    def config_dir(self) -> Path:
        return self.config_path.parent

    def bind_source(self, path: Path, content: bytes) -> JobDefinition:
        """Remember the file and its bytes: relative inputs and the default job id use them."""
        self._config_path = Path(os.path.abspath(path))
        self._config_bytes = content
        return self

    def resolved_input(self) -> str:
        """The input as an absolute path, or the s3:// URL unchanged."""
        if self.input.startswith("s3://"):
            return self.input
        return os.path.abspath(self.config_dir / Path(self.input).expanduser())

    def effective_job_id(self, now: datetime | None = None) -> str:
        """job_id, else `<job_type>-<UTC YYYYMMDD>-<8 hex>`: the same config and input on the
        same day give the same id, so submitting again resumes instead of starting over."""
        if self.job_id:
            return self.job_id
        source = self._config_bytes
        if source is None:
            source = repr(sorted(self.to_stored_dict().items())).encode()
        digest = hashlib.sha256(source)
        resolved = self.resolved_input()
        digest.update(b"\0" + resolved.encode())
        if not resolved.startswith("s3://"):
            try:
                st = os.stat(resolved)
            except OSError as exc:
                raise InputError(f"{resolved}: cannot read input: {exc.strerror}") from None
            digest.update(f"\0{st.st_size}\0{st.st_mtime_ns}".encode())
        day = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d")
        return f"{self.job_type}-{day}-{digest.hexdigest()[:8]}"

    def to_stored_dict(self) -> dict[str, Any]:
        """Every field with its effective value, JSON-ready; references stay `${NAME}`."""
        return self.model_dump(mode="json", by_alias=True)


def load_job_definition(path: Path) -> JobDefinition:
    """Read and validate a job definition file; any mistake raises a one-line ConfigError."""
    try:
        content = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read job definition: {exc.strerror or exc}") from None
    return parse_job_definition(content, path)


def parse_job_definition(content: bytes, path: Path) -> JobDefinition:
    """Validate the bytes of a job definition; `path` names it in errors and anchors `input`."""
    data, root = read_yaml_mapping(content, str(path))
    try:
        job = JobDefinition.model_validate(data)
    except ValidationError as exc:
        message = format_validation_error(exc, JobDefinition, str(path), root, data)
        raise ConfigError(message) from None
    return job.bind_source(Path(path), content)
