"""Where each of a job's objects lives in the object store (docs/architecture.md, "Manifests").

One place for every key, so the code, the docs and `clean` agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobLayout:
    job_id: str

    @property
    def root(self) -> str:
        return f"jobs/{self.job_id}/"

    @property
    def definition(self) -> str:
        return self.root + "definition.json"

    @property
    def manifest(self) -> str:
        return self.root + "manifest.json"

    @property
    def quarantine(self) -> str:
        return self.root + "quarantine.jsonl"

    @property
    def history(self) -> str:
        return self.root + "history.jsonl"

    @property
    def final_manifest(self) -> str:
        return self.root + "final/manifest.json"

    def final_output(self, part: int = 0) -> str:
        return self.root + f"final/{self.job_id}-{part:05d}.parquet"

    @property
    def final_dataset(self) -> str:
        """The folder of an output of several files (partitioned or split by size): nothing
        else in it, so that it reads as one dataset (pyarrow, DuckDB, Spark)."""
        return self.root + "final/data/"

    def batch(self, batch_id: str) -> str:
        """One batch alone (jobs written before packing; `retry --tasks`' rewritten batch)."""
        return self.root + f"batches/{batch_id}.jsonl"

    def batch_pack(self, first: str, last: str) -> str:
        """Batches `first` to `last`, one after another in one object (backends/batches.py):
        `batches/batch-000000--batch-000015.jsonl`; `last` may carry a planning's token."""
        return self.root + f"batches/{first}--{last}.jsonl"

    @property
    def task_manifests_prefix(self) -> str:
        return self.root + "tasks/"

    def task_manifests(self, worker_id: str, part: str) -> str:
        """One object per worker per `MANIFEST_FLUSH_TASKS` tasks: a JSON line per task. (Jobs
        written before held one `tasks/<task_id>.json` per task; readers take both.)"""
        return self.root + f"tasks/{worker_id}-{part}.jsonl"

    def result(self, task_id: str, token: str) -> str:
        return self.root + f"results/{task_id}/{token}.parquet"

    def item_errors(self, task_id: str, token: str) -> str:
        return self.root + f"results/{task_id}/{token}.errors.jsonl"

    def checkpoint(self, task_id: str) -> str:
        return self.root + f"checkpoints/{task_id}.sqlite"

    def failures(self, phase: str, token: str | None = None) -> str:
        """The phase's failure manifest: one JSON record per line (a rewrite, by an operator's
        retry taking entries out, goes under a new key named by its summary)."""
        tail = f".{token}" if token else ""
        return self.root + f"failures/{phase}{tail}.jsonl"

    def failures_summary(self, phase: str) -> str:
        """Which failures file is the phase's, its sha256 and counts: written after it."""
        return self.root + f"failures/{phase}.summary.json"

    def legacy_failures(self, phase: str) -> str:
        """The old form: one JSON document `{"items": [...], "count": ...}` per phase."""
        return self.root + f"failures/{phase}.json"

    @property
    def intermediates_removed(self) -> str:
        """Written by `clean --intermediates` before it removes anything."""
        return self.root + "intermediates-removed.json"

    def intermediates(self) -> tuple[str, ...]:
        """The prefixes of what only a running job needs: `clean --intermediates` removes them."""
        return tuple(self.root + p for p in ("batches/", "results/", "aggregate/", "checkpoints/"))

    def aggregate_part(self, level: int, index: int) -> str:
        return self.root + f"aggregate/L{level}/part-{index:06d}.parquet"

    def logs(self, worker_id: str) -> str:
        return self.root + f"logs/{worker_id}.jsonl"
