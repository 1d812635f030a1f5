"""Every bad definition in tests/corpus/ whose `layer` is `config` is refused by the loader with
one line containing its expected.txt; `submit` cases must load, so that the later layer is tested.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from slurmctl.config import load_job_definition
from slurmctl.errors import ConfigError

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(p for p in CORPUS.iterdir() if (p / "layer").is_file())


def _layer(case: Path) -> str:
    return (case / "layer").read_text().strip()


def test_corpus_is_complete() -> None:
    assert len(CASES) >= 18
    readme = (CORPUS / "README.md").read_text()
    for case in CASES:
        assert _layer(case) in ("config", "submit"), case.name
        assert (case / "job.yaml").is_file() and (case / "expected.txt").read_text().strip()
        assert f"| {case.name} |" in readme, f"{case.name} missing from corpus/README.md"


@pytest.mark.parametrize("case", [c for c in CASES if _layer(c) == "config"], ids=lambda c: c.name)
def test_config_case_is_refused(case: Path) -> None:
    expected = (case / "expected.txt").read_text().strip()
    with pytest.raises(ConfigError) as info:
        load_job_definition(case / "job.yaml")
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert expected in message
    assert message.startswith(str(case / "job.yaml"))
    assert "sk-live" not in message  # 17: the literal secret is never echoed


@pytest.mark.parametrize("case", [c for c in CASES if _layer(c) == "submit"], ids=lambda c: c.name)
def test_submit_case_definition_loads(case: Path) -> None:
    job = load_job_definition(case / "job.yaml")
    assert job.config_dir == case
