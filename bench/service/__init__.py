"""Service benchmarks: polling latency, upload memory and queue latency, against real processes.

Everything runs as it is deployed: the API is a real uvicorn process (``cake serve --no-worker``,
or ``python -m uvicorn api.main:create_app --factory --workers N`` for more than one API
process), jobs run in a real ``cake worker``, state lives in a PostgreSQL database of its own
(created on 127.0.0.1:5432 and dropped at the end) and messages go through an empty Redis
database on 127.0.0.1:6379 (flushed at the end). All traffic goes to 127.0.0.1.

1. **Polling**: ``--clients`` concurrent clients (asyncio, one ``httpx.AsyncClient`` with one
   keep-alive connection per client) poll ``GET /v1/jobs/{id}`` of one finished job for
   ``--duration`` seconds: requests per second, p50, p99, max latency, errors. Two ways to poll:
   back-to-back (interval 0: each client sends its next request as soon as the previous answers;
   a closed loop, so the mean latency is ``clients / throughput`` by Little's law) and paced
   (each client polls every ``interval`` seconds on its own clock, random phase; ``--poll-schedule
   sleep`` waits the interval after each answer instead). Before the rows, a **burst** check:
   ``--clients`` new clients send their first request at the same moment (3 times): does every
   one get an answer? Every row runs on a freshly started server. The load generator shares the
   machine's cores with the server; the CPU each used is reported, and the API's own latency
   histogram (``/metrics``, time inside the app) beside the client's numbers.
2. **Upload**: a TorchScript classifier of ``--upload-mb`` MiB of parameters (``nn.Linear``
   layers on a ``[13]`` input, 3 classes) is streamed to ``POST /v1/teachers`` from disk
   (``cake_client.multipart``, never in memory). The API process's resident memory is sampled
   every 20 ms (psutil) and its kernel peak (``VmHWM``, reset before the upload) read after; its
   children (the torch fork server and the check process it forks) are sampled separately.
3. **Queue latency**: a tiny job is created (``POST /v1/jobs``) on an idle worker and polled every
   10 ms until it leaves ``queued``; the time from the POST returning to the first answer that
   says ``running``, and the database's ``started_at - created_at``. One warm-up job first (not
   counted), then ``--jobs`` jobs, each after the previous finished. For two brokers: Redis
   (with PostgreSQL, ``cake serve --no-worker`` + ``cake worker``) and the embedded filesystem
   broker (``cake serve`` with no configuration: SQLite, local store, its own worker).

    python -m bench.service            # full run (about 8 minutes)
    python -m bench.service --quick    # tiny sizes, under a minute

Every process started here is stopped at the end (also on errors, Ctrl-C and SIGTERM): the
process tree of each server, then the PostgreSQL database is dropped and the Redis database
flushed. Servers also get SIGTERM if the benchmark itself is killed (``PR_SET_PDEATHSIG``).

The modules, one job each: ``processes`` (servers, workers, their databases), ``monitor``
(process trees, memory and CPU through psutil), ``load`` (1), ``upload`` (2), ``queue_latency``
(3), ``runs`` (the two set-ups), ``stats`` (targets, percentiles), ``report`` (the table) and
``cli`` (flags, the result file; ``python -m bench.service`` runs its ``main``).
"""
