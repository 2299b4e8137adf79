"""The short proof, in the suite, once per capture (polling and the write-ahead log): at least
25,000 events written by a workload with late commits, rollbacks and savepoints, through relays
and sinks running as processes, while at least 10 faults hit them, every kind at least once —
SIGKILLs, pauses past the lease (zombies), extra relays, sinks joining and leaving, PostgreSQL and
Kafka restarts — and the independent checker finds nothing lost, duplicated, reordered, phantom
or stale.

The run lasts until those targets are met, however long the machine takes, up to a generous cap
(`CAP`): a slow machine makes the run longer, not the test red. Only a machine that cannot reach
the targets within the cap fails it, saying so; the throughput is printed apart from the verdict.
The two captures split what one run of 50,000 events and 20 faults used to prove for polling alone
(the suite's time budget holds one such run): each of them meets every kind of fault.
"""

from __future__ import annotations

import os

import pytest

from outboxkit.chaos import ChaosSettings, run_chaos
from relay.capture import CaptureMode
from runtime.kafka import KafkaSettings
from tests.processes import services

CAP = 600.0  # seconds of load at most: ~1 min each here; 225 s for 40,000 events on a busy machine
DRAIN = 180.0
EVENTS, FAULTS = 25_000, 10
PROCESS_KINDS, ALL_KINDS = 6, 8  # without and with the service restarts


def restart(name: str) -> None:
    services("down", name)
    services("up", name)


@pytest.mark.timeout(CAP + DRAIN + 300)  # plus setup, healing and the checks
@pytest.mark.parametrize("capture", ["poll", "wal"])
def test_exactly_once_in_per_key_order_through_every_kind_of_fault(
    capture: CaptureMode, kafka: KafkaSettings, pg_database: str
) -> None:
    external = any(name in os.environ for name in ("OUTBOXKIT_KAFKA_BOOTSTRAP", "OUTBOXKIT_PG_URL"))
    settings = ChaosSettings(
        _env_file=None,  # type: ignore[call-arg]
        pg_url=pg_database,
        kafka=kafka,
        capture=capture,
        seconds=CAP,
        drain_timeout=DRAIN,
        events=EVENTS,
        faults=FAULTS,
        fault_kinds=PROCESS_KINDS if external else ALL_KINDS,
    )

    report = run_chaos(settings, None if external else restart)
    print(report.load)

    assert report.ok, report.render()
    assert all(report.transactions[kind] for kind in ("rollback", "late", "savepoint", "delete"))
    # A process may end on its own only as a fenced zombie relay (exit code 3), never with an error.
    assert all(exit.startswith("relay-") and exit.endswith(" exited 3") for exit in report.unasked_exits), (
        report.render()
    )
    if not report.load.reached:
        pytest.fail(
            f"machine too slow: reached {report.findings.events} events/{sum(report.faults.values())} "
            f"faults of {len(report.faults)} kinds in {report.load.seconds:.0f} s (targets: {EVENTS} events, "
            f"{FAULTS} faults of {settings.fault_kinds} kinds, within {CAP:.0f} s)\n{report.render()}"
        )
    assert report.findings.events >= EVENTS, report.render()
    assert sum(report.faults.values()) >= FAULTS, report.render()
    assert len(report.faults) >= settings.fault_kinds, report.render()
