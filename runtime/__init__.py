"""runtime: what the outboxkit processes (relay, sink, verify, the `outboxkit` command) share.

Not the app-side library: an application that only writes events (`outbox`) imports none of it,
so it ships no HTTP server and no Kafka client code. One module per concept, imported directly
(this package imports none of them, so taking one does not load the others' dependencies):

* `runtime.process` — `ExitCode` for every command, `StopFlag` (SIGTERM/SIGINT), logging set-up;
* `runtime.kafka` — Kafka client settings and librdkafka's logs and errors, said once;
* `runtime.backoff` — retry pacing;
* `runtime.startup` — the bounded start-up wait for a database or Kafka that is away;
* `runtime.errors` — the exception tree (`StartTimeoutError`);
* `runtime.observe` — Prometheus metrics and the health probes' HTTP server;
* `runtime.tracing` — span links to the spans events were written in;
* `runtime.urls` — database URLs in settings, checked when they load.
"""
