# syntax=docker/dockerfile:1
# The GPU worker: `cake worker` on the gpu and cpu queues, one job at a time.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t cake-distill-worker .
# Run it with a GPU (NVIDIA Container Toolkit): docker-compose.yml reserves one.
#
# The base image brings Python 3.11 and a CUDA build of torch (2.5.1, CUDA 12.4, cuDNN 9), which
# satisfies the project's `torch>=2.4`; the project is installed against it, never replacing it.
# Another CUDA PyTorch image can be chosen with --build-arg BASE_IMAGE=... (Python >= 3.11).
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Fail the build early, and clearly, on a base image that cannot run the worker.
RUN python -c "import sys, torch; \
assert sys.version_info >= (3, 11), 'the project needs Python >= 3.11'; \
assert torch.version.cuda, 'the worker image needs a CUDA build of torch'"

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY cake_core ./cake_core
COPY cake_shared ./cake_shared
COPY cake_cli ./cake_cli
COPY cake_client ./cake_client
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations

# The project, with torch pinned to the base image's build so pip can never swap it.
RUN python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" \
        > /tmp/torch-constraint.txt \
    && pip install -c /tmp/torch-constraint.txt . \
    && rm /tmp/torch-constraint.txt \
    && python -c "import torch, cake_cli.service, worker.runner; assert torch.version.cuda"

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
