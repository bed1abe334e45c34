"""Where and how the engine computes: device, precision, memory format, threads.

These are speed levers, kept apart from the job spec: they change how fast a job runs, not what
it computes (bf16 changes rounding, nothing else). The defaults pick what is fastest and safe on
the hardware found at run time.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

AttentionKernel = Literal["default", "math"]


@dataclass(frozen=True)
class Runtime:
    """How to run: ``autocast`` is ``"bf16"`` or ``None``; ``channels_last`` for image inputs.

    ``attention`` is the kernel behind ``scaled_dot_product_attention`` in the teacher:
    ``"default"`` lets torch choose, ``"math"`` forces the plain matmul-softmax-matmul path
    (see :func:`tune_attention`). It applies inside :meth:`kernels`.
    """

    device: torch.device
    autocast: str | None = None
    channels_last: bool = False
    attention: AttentionKernel = "default"

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @contextlib.contextmanager
    def kernels(self) -> Iterator[None]:
        """Kernel choices that hold for a whole job: wrap everything that calls the teacher."""
        if self.attention == "math":
            with sdpa_kernel(SDPBackend.MATH):
                yield
        else:
            yield

    @contextlib.contextmanager
    def autocast_context(self) -> Iterator[None]:
        if self.autocast == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                yield
        else:
            yield


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` ("cpu", "cuda", "cuda:1") or, when None, CUDA if present else CPU."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA device is available")
    return device


def default_runtime(requested: str | None = None) -> Runtime:
    """bf16 autocast, channels-last and TF32 on CUDA; fp32 with channels-last on the CPU.

    Channels-last only applies to image inputs and leaves fp32 results unchanged; on the CPU it
    was 1.8-2.1x faster for conv teachers (bench/synthesis). bf16 stays off on the CPU: it is
    fast only where the CPU has native bf16 instructions.
    """
    device = pick_device(requested)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        return Runtime(device=device, autocast="bf16", channels_last=True)
    configure_cpu_threads()
    return Runtime(device=device, channels_last=True)


def configure_cpu_threads() -> int:
    """Use every core the process may run on, unless the user pinned a count."""
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores))
    return cores


ATTENTION_OP = "aten::scaled_dot_product_attention"


def uses_attention(teacher: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Whether a TorchScript teacher calls ``scaled_dot_product_attention`` anywhere."""
    graph = getattr(teacher, "inlined_graph", None)
    # findAllNodes also searches the blocks of control flow (nn.MultiheadAttention takes its
    # fused path in one branch of an if).
    return graph is not None and bool(graph.findAllNodes(ATTENTION_OP))


def tune_attention(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    input_shape: tuple[int, ...],
    batch_size: int,
    runtime: Runtime,
    repeats: int = 3,
) -> Runtime:
    """``runtime`` with the faster attention kernel for this teacher on the CPU.

    On the CPU torch picks its flash-attention kernel for every sequence length; for the short
    sequences of small-image ViTs (17 tokens on 8x8 digits) it was 1.3-1.5x slower than the
    plain math path, forward and backward (bench/README, "Attention kernel"). The math path
    holds the whole attention matrix, which for long sequences costs memory and time, so
    rather than a rule on sequence length this times one input-gradient step of a mini-batch
    with each kernel and keeps the faster (about a second, once per job). Both give the same
    result up to float rounding. Teachers without attention and CUDA runs are left as they are.
    """
    if runtime.is_cuda or not uses_attention(teacher):
        return runtime
    gen = torch.Generator(device=runtime.device).manual_seed(0)
    x = torch.randn((batch_size, *input_shape), generator=gen, device=runtime.device)
    if runtime.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    best: tuple[float, AttentionKernel] | None = None
    for kernel in ("default", "math"):
        candidate = replace(runtime, attention=kernel)
        with candidate.kernels():
            seconds = min(_input_gradient_seconds(teacher, x) for _ in range(repeats + 1))
        if best is None or seconds < best[0]:
            best = (seconds, kernel)
    assert best is not None
    return replace(runtime, attention=best[1])


def _input_gradient_seconds(
    teacher: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> float:
    started = time.perf_counter()
    inputs = x.detach().requires_grad_(True)
    torch.autograd.grad(teacher(inputs).float().logsumexp(dim=1).sum(), inputs)
    return time.perf_counter() - started
