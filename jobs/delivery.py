"""`JobDelivery`: the narrow interface the dispatcher hands jobs to, and its Dramatiq implementation.

The contract every implementation keeps (tests/test_job_delivery.py runs one suite over each):

* `deliver(jobs)` returns only once the broker has **accepted every job** of the call, as durably
  as the broker is configured to keep what it accepted (Redis with `appendfsync always`, RabbitMQ
  with publisher confirms and persistent messages on durable queues). Only then does the
  dispatcher commit its Kafka offsets.
* When it raises (`BrokerUnavailableError`), any subset of the jobs may have been accepted: the
  caller delivers all of them again. Duplicates are allowed, losses are not; the worker's inbox
  absorbs the duplicates by message id.
* A job keeps its message id, queue, actor, arguments and options; a job with an eta in the
  future is held by the broker until then (Dramatiq's delay queue), one already due runs at once.
* `unreachable()` says why the broker cannot be used right now, or None: the readiness probe.
"""
