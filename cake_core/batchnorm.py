"""The teacher's BatchNorm statistics, reachable from a TorchScript file without its Python class.

A teacher trained with BatchNorm carries, in every BatchNorm layer, the running mean and variance
of that layer's input over the real training data. Synthetic inputs whose per-channel batch
statistics match those numbers at every layer look like the training data to the teacher all
the way through the network (DeepInversion's prior), which a classification loss alone does not
ask for. The user uploads TorchScript only, so there are no modules to hook: this module copies
the teacher's inlined graph and adds, as extra outputs, the input and the running statistics of
every ``aten::batch_norm`` node. The rewritten function computes exactly the teacher's logits
(the graph is the same; only outputs were added) and gradients reach the input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchNormTap:
    """The teacher as ``x -> (logits, [(bn input, running mean, running var), ...])``."""

    function: Callable[..., object]
    module: torch.jit.ScriptModule
    layers: int

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        logits, *rest = self.function(self.module._c, x)  # type: ignore[misc]
        n = self.layers
        stats = [(rest[i], rest[n + i], rest[2 * n + i]) for i in range(n)]
        return logits, stats


def tap_batchnorm(teacher: torch.jit.ScriptModule) -> BatchNormTap | None:
    """A :class:`BatchNormTap` for ``teacher``, or None when it has no usable BatchNorm layer.

    Only ``aten::batch_norm`` nodes in the graph's top-level block are tapped: a value made inside
    an ``if`` or a loop cannot leave it. Layers without running statistics (``None``) are left out.
    """
    if not isinstance(teacher, torch.jit.ScriptModule):
        return None
    try:
        graph = teacher.inlined_graph.copy()
    except RuntimeError:
        return None
    outputs = list(graph.outputs())
    if len(outputs) != 1:
        return None
    nodes = [
        node
        for node in graph.nodes()
        if node.kind() == "aten::batch_norm"
        and not isinstance(node.inputsAt(3).type(), torch._C.NoneType)
        and not isinstance(node.inputsAt(4).type(), torch._C.NoneType)
    ]
    if not nodes:
        return None
    values = (
        [outputs[0]]
        + [node.inputsAt(0) for node in nodes]
        + [node.inputsAt(3) for node in nodes]
        + [node.inputsAt(4) for node in nodes]
    )
    tuple_node = graph.create("prim::TupleConstruct", values)
    tuple_node.output().setType(torch._C.TupleType([v.type() for v in values]))
    tuple_node.insertBefore(graph.return_node())
    graph.eraseOutput(0)
    graph.registerOutput(tuple_node.output())
    try:
        function = torch._C._create_function_from_graph("teacher_with_batchnorm_stats", graph)
    except RuntimeError:
        return None
    return BatchNormTap(function, teacher, len(nodes))


def batchnorm_prior(stats: list[tuple[torch.Tensor, ...]], minibatches: int) -> torch.Tensor:
    """Distance of each mini-batch's per-channel statistics from the running ones: ``[K]``.

    The layer inputs hold ``K`` mini-batches one after the other along the batch axis; each is
    compared on its own (its mean and biased variance over samples and positions), so a chunk of
    mini-batches gets exactly the gradients each would get alone. Per layer the L2 norms of the
    mean and variance gaps are added (DeepInversion), then averaged over layers so the weight
    means the same for deep and shallow teachers.
    """
    total: torch.Tensor | None = None
    for x, running_mean, running_var in stats:
        x = x.float()
        channels = x.shape[1]
        per_batch = x.reshape(minibatches, -1, channels, *x.shape[2:]).transpose(1, 2)
        flat = per_batch.reshape(minibatches, channels, -1)
        mean = flat.mean(dim=2)
        var = flat.var(dim=2, unbiased=False)
        gap = (mean - running_mean.float()).norm(dim=1) + (var - running_var.float()).norm(dim=1)
        total = gap if total is None else total + gap
    assert total is not None
    return total / len(stats)
