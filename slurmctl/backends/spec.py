"""Where a job's state lives, as one URL a worker can be handed on its command line.

`local:///abs/state/root` for the embedded backend; `aws://<bucket>/<prefix>?table=T&region=R
&endpoint_url=E` for AWS. The state root keeps a registry of the AWS jobs submitted from it, so
`slurmctl status JOB` finds a job wherever its state lives.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from slurmctl.backends import Backend, open_local
from slurmctl.config import JobDefinition
from slurmctl.errors import UserError


@dataclass(frozen=True)
class BackendSpec:
    kind: str
    root: Path | None = None
    bucket: str = ""
    prefix: str = ""
    table: str = ""
    region: str | None = None
    endpoint_url: str | None = None

    def url(self) -> str:
        if self.kind == "local":
            return f"local://{quote(str(self.root))}"
        query = {"table": self.table}
        if self.region:
            query["region"] = self.region
        if self.endpoint_url:
            query["endpoint_url"] = self.endpoint_url
        return f"aws://{self.bucket}/{quote(self.prefix)}?{urlencode(query)}"

    @classmethod
    def parse(cls, url: str) -> BackendSpec:
        parts = urlsplit(url)
        if parts.scheme == "local" and parts.path:
            return cls("local", root=Path(parts.path))
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.scheme == "aws" and parts.netloc and query.get("table"):
            return cls(
                "aws",
                bucket=parts.netloc,
                prefix=parts.path.lstrip("/"),
                table=query["table"],
                region=query.get("region"),
                endpoint_url=query.get("endpoint_url"),
            )
        raise UserError(
            f"--backend: expected local:///path or aws://BUCKET/PREFIX?table=TABLE, found {url!r}"
        )

    def open(self) -> Backend:
        if self.kind == "local":
            assert self.root is not None
            backend = open_local(self.root)
        else:
            from slurmctl.backends.aws import open_aws

            backend = open_aws(self.bucket, self.table, self.region, self.endpoint_url, self.prefix)
        backend.url = self.url()
        return backend

    @classmethod
    def for_definition(cls, definition: JobDefinition, root: Path) -> BackendSpec:
        if definition.backend == "local":
            return cls("local", root=root)
        aws = definition.aws
        assert aws.bucket and aws.table  # the definition's validator requires both
        return cls(
            "aws",
            bucket=aws.bucket,
            prefix=aws.prefix,
            table=aws.table,
            region=aws.region,
            endpoint_url=aws.endpoint_url,
        )


class Registry:
    """job_id -> backend URL, for the jobs whose state is not in this state root."""

    def __init__(self, root: Path) -> None:
        self.path = root / "registry.sqlite"

    def _conn(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=60)
        conn.execute("CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, url TEXT)")
        return conn

    def add(self, job_id: str, spec: BackendSpec) -> None:
        with self._conn() as conn:
            conn.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?)", (job_id, spec.url()))

    def remove(self, job_id: str) -> None:
        if self.path.exists():
            with self._conn() as conn:
                conn.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    def get(self, job_id: str) -> BackendSpec | None:
        if not self.path.exists():
            return None
        with self._conn() as conn:
            row = conn.execute("SELECT url FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return BackendSpec.parse(row[0]) if row else None

    def entries(self) -> list[tuple[str, BackendSpec]]:
        if not self.path.exists():
            return []
        with self._conn() as conn:
            rows = conn.execute("SELECT job_id, url FROM jobs ORDER BY job_id").fetchall()
        return [(job_id, BackendSpec.parse(url)) for job_id, url in rows]

    def specs(self) -> list[BackendSpec]:
        if not self.path.exists():
            return []
        with self._conn() as conn:
            urls = sorted({r[0] for r in conn.execute("SELECT url FROM jobs")})
        return [BackendSpec.parse(u) for u in urls]
