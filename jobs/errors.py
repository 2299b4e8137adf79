"""The jobs package's exception tree, each class with the exit code it ends a jobs command with.

    JobsError                     the root; exit 1
    ├── JobsConfigError           settings that cannot work (a broker URL of an unknown scheme):
    │                             exit 2, at start; the message names the setting to fix
    ├── BrokerUnavailableError    the job broker refused or did not answer: the dispatcher retries
    │                             with backoff and commits nothing; the operator checks the broker
    ├── BadJobError               a jobs-topic record that is not a job: the dispatcher stops before
    │                             it (exit 1), the record stays in Kafka; the message names topic,
    │                             partition and offset
    └── NotInWorkerError          an `exactly_once` actor called outside a Dramatiq worker that has
                                  the inbox middleware; add `inbox.middleware` to the broker

Errors raised inside an actor are the actor's own: Dramatiq's Retries middleware retries them
and, once retries run out, moves the message to the dead-letter queue (`jobs.dead_letters`).
"""

from __future__ import annotations

from runtime.process import ExitCode


class JobsError(Exception):
    """Base of every error the jobs package raises."""

    exit_code = ExitCode.ERROR


class JobsConfigError(JobsError):
    """Settings that cannot work; the message names the setting."""

    exit_code = ExitCode.CONFIG


class BrokerUnavailableError(JobsError):
    """The job broker refused or did not answer; nothing was committed, the jobs are delivered again."""


class BadJobError(JobsError):
    """A record on the jobs topic that is not a job; the dispatcher stops before it."""


class NotInWorkerError(JobsError):
    """An `exactly_once` actor ran without the inbox middleware's current message."""
