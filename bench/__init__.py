"""Warren's benchmark: `python -m bench --help`.

Every scenario runs against the same RabbitMQ and the same database in one run, so that its
numbers can be read as ratios: Warren against the raw broker and SQL limits it is built on.
Each run (and each backend in it) gets its own queue namespace and its own SQLite file or
PostgreSQL schema, removed at the end.

Scenarios (the numbers are those of issue 4):

1. throughput: instances of 10 trivial steps, with 1, 2 and 4 worker processes.
2. latency: create-to-result of one 3-step instance at a time.
3. event_latency: send_event to completion of an instance parked in wait_for_event.
4. sleeping: 10,000 instances asleep at once: the worker's memory, threads and CPU meanwhile.
5. timers: lateness of durable sleeps of random length.
6. broker_limit and sql_limit: raw aio-pika round trips and raw one-row SQL commits.
7. dbos: DBOS Transact for Python running 1 to 3 on the same database (`bench.peer`).
"""
