"""B1 runs, reports, and refuses to report a figure its tables contradict.

Quick mode only: these catch a broken benchmark, they do not judge the outbox's speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, event
from sqlalchemy.orm import Session

from bench import b1
from bench.report import BenchmarkError, Options
from outbox import outbox_table

ROOT = Path(__file__).resolve().parent.parent


def test_b1_quick_reports_both_variants_and_a_ratio(pg_database: str, tmp_path: Path) -> None:
    results = tmp_path / "b1.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "b1", "--quick", "--clients", "1,8", "--json", str(results)],
        cwd=ROOT,
        env={**os.environ, "OUTBOXKIT_PG_URL": pg_database},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| B1 app-transaction | 1 |" in done.stdout
    document = json.loads(results.read_text())
    assert [r["clients"] for r in document["results"]] == [1, 8]
    for result in document["results"]:
        for variant in ("baseline", "outbox"):
            assert len(result[variant]) == 1  # --quick: one repetition
            assert result[variant][0] > 0
        assert result["ratio"] == pytest.approx(result["outbox_median"] / result["baseline_median"])
    assert document["host"]["postgresql"]["server_version"]


@pytest.fixture
def outbox_losing_its_rows() -> Iterator[None]:
    """Every commit deletes the outbox rows its transaction wrote: an outbox that emits nothing."""

    def lose(session: Session) -> None:
        session.execute(delete(outbox_table))

    event.listen(Session, "before_commit", lose)
    yield
    event.remove(Session, "before_commit", lose)


@pytest.mark.usefixtures("outbox_losing_its_rows")
def test_b1_refuses_a_figure_when_the_outbox_wrote_no_rows(pg_database: str) -> None:
    with pytest.raises(BenchmarkError, match="outbox grew by 0 rows"):
        b1.run(pg_database, Options(seconds=0.2, reps=1, clients=(1,), quick=True))
