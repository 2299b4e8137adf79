"""The demo's e-mail service as a Dramatiq worker app: what `outboxkit demo` runs as a real worker process,

    python -m dramatiq outboxkit.demo.worker --processes 1 --threads 2

with `OUTBOXKIT_DEMO_WORKER_DB_URL`, `_BROKER_URL` and `_QUEUE` naming its database (`worker.db`),
the Redis the dispatcher delivers to and the run's queue. As any Dramatiq app, it sets up its
broker at import: the broker gets the inbox's middleware, then the actor is declared on it.
"""

from __future__ import annotations

import dramatiq
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.delivery import broker_from_url
from outboxkit.demo.mailer import Mailer


class WorkerSettings(BaseSettings):
    """`OUTBOXKIT_DEMO_WORKER_*`: the demo sets them for the process it starts."""

    model_config = SettingsConfigDict(env_prefix="OUTBOXKIT_DEMO_WORKER_", extra="ignore")

    db_url: str
    broker_url: SecretStr
    queue: str


settings = WorkerSettings()
mailer = Mailer(settings.db_url)
broker = broker_from_url(settings.broker_url.get_secret_value())
broker.add_middleware(mailer.inbox.middleware)
dramatiq.set_broker(broker)
send_order_confirmation = mailer.declare(broker, settings.queue)
