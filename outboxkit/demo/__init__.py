"""The demo, the README's first command: a small shop writing continuously through its outbox, a
relay, Kafka and a sink, with live progress, ending with the app's tables compared with the
warehouse's."""

from outboxkit.demo.run import DemoReport, run_demo
from outboxkit.demo.stage import DemoSettings

__all__ = ["DemoReport", "DemoSettings", "run_demo"]
