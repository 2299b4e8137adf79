"""jobs: Dramatiq jobs through the outbox — sent only if the app's transaction commits, run once in effect.

The path of one job (the design, with its crash windows, is in README.md's "Background jobs"):

    app transaction ── outbox.jobs.enqueue() ──> outbox row (topic outboxkit.jobs)
    relay ─────────── exactly once ───────────> Kafka, read_committed
    dispatcher (jobs.dispatch) ── deliver, then commit offsets ──> Dramatiq broker (Redis, RabbitMQ)
    worker ── jobs.inbox: message id + the actor's writes, one transaction ──> effects once

Delivery into the broker is at least once (a dispatcher that dies between the broker's accept and
its offset commit delivers again); the worker's inbox makes the effect exactly once.

One module per concept:

* `jobs.delivery` — `JobDelivery`, the interface of a job broker, and its Dramatiq implementation;
* `jobs.dispatch` — the dispatcher's loop: Kafka's jobs topic into a `JobDelivery`;
* `jobs.inbox` — the worker's side: `Inbox`, its middleware and the `exactly_once` decorator;
* `jobs.dead_letters` — the broker's dead-letter queues: count, list, replay;
* `jobs.settings` — `JobsSettings` (`OUTBOXKIT_JOBS_*`);
* `jobs.status` — `outboxkit jobs status`: lag, queues, dead letters, the inbox;
* `jobs.names` — the names dashboards and alerts depend on (metrics, spans, loggers);
* `jobs.errors` — the exception tree.
"""
