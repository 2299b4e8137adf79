"""The proof: a workload writing continuously, relays and sinks as OS processes, faults injected
into all of them, and the independent checker (`verify`) judging the outcome."""

from outboxkit.chaos.harness import ChaosReport, ChaosSettings, run_chaos
from outboxkit.chaos.workload import Mix

__all__ = ["ChaosReport", "ChaosSettings", "Mix", "run_chaos"]
