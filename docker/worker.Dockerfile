# syntax=docker/dockerfile:1
# The GPU worker: `cake worker` on the gpu and cpu queues, one job at a time.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t cake-distill-worker .
# Run it with a GPU (NVIDIA Container Toolkit): docker-compose.yml reserves one.
#
# torch is the version constraints.txt pins, the one the API checks teachers with (one torch for
# checking and running), in its default Linux build from PyPI: a CUDA build that brings the CUDA
# and cuDNN runtime libraries as pip packages, so the base image needs no CUDA of its own (the
# driver comes from the host through the NVIDIA Container Toolkit). Every other package is
# pinned by constraints.txt too.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY constraints.txt ./
# Fail the build early, and clearly, on a torch that cannot use the GPU.
RUN pip install -c constraints.txt torch \
    && python -c "import torch; assert torch.version.cuda, 'the worker image needs a CUDA build of torch'"

COPY pyproject.toml README.md alembic.ini ./
COPY cake_core ./cake_core
COPY cake_shared ./cake_shared
COPY cake_cli ./cake_cli
COPY cake_client ./cake_client
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations

# The project, from the lock: torch is pinned there to the build above, so pip keeps it. With
# the [mlflow] extra (mlflow-skinny): a job logs to MLflow when CAKE_MLFLOW_TRACKING_URI is set
# (worker.mlflow_log), and the worker imports it only then.
RUN pip install -c constraints.txt ".[mlflow]" \
    && python -c "import torch, mlflow, cake_cli.service, worker.runner; assert torch.version.cuda"

# The code runs from this copy of the source tree, so what runs is exactly what was copied
# (migrations/ included); the installed wheel supplies the dependencies and the `cake` script.
ENV PYTHONPATH=/app \
    CAKE_DATA_DIR=/data

RUN groupadd --system --gid 10001 cake \
    && useradd --system --uid 10001 --gid cake --create-home --home-dir /home/cake cake \
    && mkdir -p /data \
    && chown cake:cake /data
USER 10001:10001

CMD ["cake", "worker", "--queues", "gpu,cpu", "--concurrency", "1"]
