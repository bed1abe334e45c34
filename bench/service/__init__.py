"""Service benchmarks against real processes: polling, long polling, upload memory, queue latency.

Everything runs as it is deployed: the API is a real uvicorn process (``cake serve --no-worker``,
or ``python -m uvicorn api.main:create_app --factory --workers N`` for more than one API
process), jobs run in a real ``cake worker``, state lives in SQLite (the embedded default, in a
data dir of its own) or in a PostgreSQL database of its own (created on 127.0.0.1:5432 and
dropped at the end), and the queue-latency part's messages go through an empty Redis database
on 127.0.0.1:6379 (flushed at the end). All traffic goes to 127.0.0.1.

1. **Polling** (part ``polling``): a matrix of rows, ``--databases`` (sqlite, postgresql) x
   ``--api-workers`` (1, 2) x ``--poll-schedules`` (synchronized, ticker) x
   ``--poll-intervals`` (1 s). Each row starts a fresh server on the database's state (one
   queued job: no worker runs it, and no broker is configured, so Redis is not involved) and
   ``--clients`` (200) concurrent clients (asyncio, one ``httpx.AsyncClient`` with one
   keep-alive connection per client) poll ``GET /v1/jobs/{id}`` for ``--duration`` (30) s.
   With ``--auth key`` (the default) an API key is made first (``cake keys create``, its
   tenant's rate limit raised out of the way) and every request sends it, as a deployment with
   keys does; ``--auth local`` sends none. Schedules: ``synchronized``: every client on one
   clock from phase 0, a burst of ``--clients`` requests every interval (``hey -c 200 -q 1``,
   or cron jobs); ``ticker``: each client on a clock of its own at a random phase (independent
   scripts); ``sleep``: the interval after each answer. An interval of 0 is one back-to-back row
   (each client sends its next request as soon as the previous answers: a closed loop, so the
   mean latency is ``clients / throughput`` by Little's law). Each row reports p50, p99, max,
   errors and the **API's CPU per request**: the CPU time of the server's process tree over the
   measured window (first tick to last answer) divided by the requests answered in it.
   Targets, judged for SQLite, 1 API process and a key only (other rows are informative):
   synchronized p99 < 250 ms and < 1.0 ms of API CPU per request; random phase (ticker) p99 <
   20 ms; 0 errors. The load generator shares the machine's cores with the server; the CPU each
   used is reported, and the API's own latency histogram (``/metrics``, time inside the app)
   beside the client's numbers with one API process. Part ``burst`` (not run by default):
   ``--clients`` new clients send their first request at the same moment (3 times), per
   database and process count: does every one get an answer?
2. **Long polling** (part ``longpoll``): on a fresh server (SQLite, 1 API process, ``--auth``),
   ``--long-poll-clients`` (1000) clients, each on its own keep-alive connection, wait on one
   queued job with ``GET /v1/jobs/{id}?wait=--long-poll-wait`` (30) and ``If-None-Match``,
   asking again at once after each 304. For ``--long-poll-idle`` (40) s nothing changes (every
   client's wait expires once): the API process tree's CPU then. Then the job is canceled
   (``POST /v1/jobs/{id}/cancel``): how long after the cancel was sent each client gets its
   200. Target: 0 errors, idle API < 0.25 cores, every client sees the change, the last within
   1 s. The open-files limit is raised to its hard limit when it is below the clients' needs.
3. **Upload**: a TorchScript classifier of ``--upload-mb`` MiB of parameters (``nn.Linear``
   layers on a ``[13]`` input, 3 classes) is streamed to ``POST /v1/teachers`` from disk
   (``cake_client.multipart``, never in memory), on PostgreSQL + Redis, local mode. The API
   process's resident memory is sampled every 20 ms (psutil) and its kernel peak (``VmHWM``,
   reset before the upload) read after; its children (the torch fork server and the check
   process it forks) are sampled separately.
4. **Queue latency**: a tiny job is created (``POST /v1/jobs``) on an idle worker and polled every
   10 ms until it leaves ``queued``; the time from the POST returning to the first answer that
   says ``running``, and the database's ``started_at - created_at``. One warm-up job first (not
   counted), then ``--jobs`` jobs, each after the previous finished. For two brokers: Redis
   (with PostgreSQL, ``cake serve --no-worker`` + ``cake worker``) and the embedded filesystem
   broker (``cake serve`` with no configuration: SQLite, local store, its own worker).

    python -m bench.service            # full run (about 13 minutes on a quiet 2-core machine)
    python -m bench.service --quick    # tiny sizes, a few minutes
    python -m bench.service --parts polling --databases sqlite --api-workers 1   # one set-up

Every process started here is stopped at the end (also on errors, Ctrl-C and SIGTERM): the
process tree of each server, then the PostgreSQL databases are dropped and the Redis database
flushed. Servers also get SIGTERM if the benchmark itself is killed (``PR_SET_PDEATHSIG``).

The modules, one job each: ``processes`` (servers, workers, their databases, API keys),
``monitor`` (process trees, memory and CPU through psutil), ``load`` (1), ``long_poll`` (2),
``upload`` (3), ``queue_latency`` (4), ``runs`` (the set-ups), ``stats`` (targets,
percentiles), ``report`` (the tables) and ``cli`` (flags, the result file; ``python -m
bench.service`` runs its ``main``).
"""
