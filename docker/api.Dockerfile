# syntax=docker/dockerfile:1
# The REST API: `cake serve --no-worker` (jobs run in the worker image, docker/worker.Dockerfile).
# Build from the repository root:  docker build -f docker/api.Dockerfile -t cake-distill-api .
# The same image runs the one-shot migration (`cake db upgrade`) in docker-compose.yml.
FROM python:3.11-slim

# The API checks every uploaded teacher in a sandboxed child process that imports torch, so the
# image needs torch: the version constraints.txt pins (the worker image runs the same one), in
# its CPU build, installed before the project: a bare `torch>=2.4` resolved from PyPI would pull
# a multi-GB CUDA build the API never uses. Every other package is pinned by constraints.txt too.

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY constraints.txt ./
RUN pip install -c constraints.txt torch --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md alembic.ini ./
COPY cake_core ./cake_core
COPY cake_shared ./cake_shared
COPY cake_cli ./cake_cli
COPY cake_client ./cake_client
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations

# The project, from the lock: torch is pinned there to the build above, so pip keeps it.
RUN pip install -c constraints.txt . \
    && python -c "import torch, cake_cli.service, api.main; print('torch', torch.__version__)"

# The code runs from this copy of the source tree, so what runs is exactly what was copied
# (migrations/ included); the installed wheel supplies the dependencies and the `cake` script.
ENV PYTHONPATH=/app \
    CAKE_DATA_DIR=/data

RUN groupadd --system --gid 10001 cake \
    && useradd --system --uid 10001 --gid cake --create-home --home-dir /home/cake cake \
    && mkdir -p /data \
    && chown cake:cake /data
USER 10001:10001

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# --allow-remote: inside a container the API must listen on all interfaces to be reachable at
# all; docker-compose.yml publishes the port on the host's loopback only.
CMD ["cake", "serve", "--no-worker", "--host", "0.0.0.0", "--port", "8000", "--allow-remote"]
