"""The short proof, in the suite: at least 50,000 events written by a workload with late commits,
rollbacks and savepoints, through relays and sinks running as processes, while at least 20 faults
of mixed kinds hit them — SIGKILLs, pauses past the lease, extra relays, sinks joining and
leaving, PostgreSQL and Kafka restarts — and the independent checker finds nothing lost,
duplicated, reordered, phantom or stale.
"""

from __future__ import annotations

import os

from outbox.kafka_settings import KafkaSettings
from outboxkit.chaos import ChaosSettings, run_chaos
from tests.processes import services


def restart(name: str) -> None:
    services("down", name)
    services("up", name)


def test_exactly_once_in_per_key_order_through_twenty_faults_and_fifty_thousand_events(
    kafka: KafkaSettings, pg_database: str
) -> None:
    external = any(name in os.environ for name in ("OUTBOXKIT_KAFKA_BOOTSTRAP", "OUTBOXKIT_PG_URL"))
    settings = ChaosSettings(_env_file=None, pg_url=pg_database, kafka=kafka)  # type: ignore[call-arg]

    report = run_chaos(settings, None if external else restart)

    assert report.ok, report.render()
    assert report.findings.events >= 50_000, report.render()
    assert sum(report.faults.values()) >= 20, report.render()
    assert len(report.faults) >= (5 if external else 6), report.render()
    assert all(report.transactions[kind] for kind in ("rollback", "late", "savepoint", "delete"))
    # A process may end on its own only as a fenced zombie relay (exit code 3), never with an error.
    assert all(exit.startswith("relay-") and exit.endswith(" exited 3") for exit in report.unasked_exits), (
        report.render()
    )
