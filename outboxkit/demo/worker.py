"""The demo's e-mail service as a Dramatiq worker app: what `outboxkit demo` runs as a real worker process,

    python -m dramatiq outboxkit.demo.worker --processes 1 --threads 2

with `OUTBOXKIT_DEMO_WORKER_DB_URL`, `_BROKER_URL` and `_QUEUE` naming its database (`worker.db`),
the Redis the dispatcher delivers to and the run's queue. As any Dramatiq app, it sets up its
broker at import: the broker gets the inbox's middleware, then the actor is declared on it.

The demo stops the worker when it is done. A demo killed outright cannot, and the worker runs in
a session of its own (Ctrl-C must not reach it): `_DEMO_PID` names the demo, and the worker ends
itself once that process is gone.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import dramatiq
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.delivery import broker_from_url
from outboxkit.demo.mailer import Mailer
from runtime.process import alive


class WorkerSettings(BaseSettings):
    """`OUTBOXKIT_DEMO_WORKER_*`: the demo sets them for the process it starts."""

    model_config = SettingsConfigDict(env_prefix="OUTBOXKIT_DEMO_WORKER_", extra="ignore")

    db_url: str
    broker_url: SecretStr
    queue: str
    demo_pid: int


class EndsWithTheDemo(dramatiq.Middleware):
    """In each worker process, a thread that asks Dramatiq's main process for its graceful shutdown
    (SIGTERM) once the demo process `pid` is gone."""

    def __init__(self, pid: int) -> None:
        self._pid = pid

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        threading.Thread(target=self._watch, name="ends-with-the-demo", daemon=True).start()

    def _watch(self) -> None:
        while alive(self._pid):
            time.sleep(1)
        os.kill(os.getppid(), signal.SIGTERM)


settings = WorkerSettings()
mailer = Mailer(settings.db_url)
broker = broker_from_url(settings.broker_url.get_secret_value())
broker.add_middleware(mailer.inbox.middleware)
broker.add_middleware(EndsWithTheDemo(settings.demo_pid))
dramatiq.set_broker(broker)
send_order_confirmation = mailer.declare(broker, settings.queue)
