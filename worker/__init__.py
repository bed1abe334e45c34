"""The Celery worker: takes job ids from the ``gpu``/``cpu`` queues and runs the engine.

``celery -A worker.app worker -Q cpu,gpu`` (or ``cake worker``) starts one. The worker never
imports the API; both share ``cake_shared`` (settings, models, job state, store, queue).
"""
