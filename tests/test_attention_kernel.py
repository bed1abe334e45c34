"""The CPU attention-kernel choice: a speed lever that must not change what a teacher computes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from cake_core.device import Runtime, tune_attention, uses_attention
from cake_core.pipeline import run_job
from cake_core.students import build_student

CPU = Runtime(device=torch.device("cpu"))
SHAPE = (1, 8, 8)


def _scripted(arch: str, path: Path) -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    model = build_student(arch, SHAPE, 10, 0.25).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    scripted = torch.jit.script(model)
    scripted.save(str(path))
    return torch.jit.load(str(path))


def test_attention_is_found_in_a_vit_and_not_in_a_cnn(tmp_path: Path) -> None:
    assert uses_attention(_scripted("vit", tmp_path / "vit.pt"))
    assert not uses_attention(_scripted("lenet5", tmp_path / "cnn.pt"))
    assert not uses_attention(lambda x: x)  # not TorchScript: nothing to inspect


class _MultiheadTeacher(torch.nn.Module):
    """nn.MultiheadAttention calls the fused kernel from inside a branch of its graph."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x, x, x, need_weights=False)[0].mean(dim=1)


def test_attention_inside_control_flow_is_found() -> None:
    assert uses_attention(torch.jit.script(_MultiheadTeacher().eval()))


def test_math_kernel_gives_the_same_logits_and_input_gradients(tmp_path: Path) -> None:
    teacher = _scripted("vit", tmp_path / "vit.pt")
    x = torch.randn(16, *SHAPE)
    results = []
    for kernel in ("default", "math"):
        with replace(CPU, attention=kernel).kernels():
            inputs = x.clone().requires_grad_(True)
            logits = teacher(inputs)
            (grad,) = torch.autograd.grad(logits.logsumexp(dim=1).sum(), inputs)
        results.append((logits.detach(), grad))
    (logits_a, grad_a), (logits_b, grad_b) = results
    torch.testing.assert_close(logits_a, logits_b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-5)


def test_tuning_picks_a_kernel_for_attention_teachers_only(tmp_path: Path) -> None:
    vit = _scripted("vit", tmp_path / "vit.pt")
    cnn = _scripted("lenet5", tmp_path / "cnn.pt")
    assert tune_attention(vit, SHAPE, 20, CPU).attention in ("default", "math")
    assert tune_attention(cnn, SHAPE, 20, CPU) == CPU
    cuda = replace(CPU, device=torch.device("cuda"))
    assert tune_attention(vit, SHAPE, 20, cuda) == cuda  # never timed on CUDA


def test_kernels_context_restores_torch_defaults(tmp_path: Path) -> None:
    before = torch.backends.cuda.flash_sdp_enabled()
    with replace(CPU, attention="math").kernels():
        assert not torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled() == before


def test_a_job_records_the_kernel_it_used(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt"
    _scripted("vit", path)
    spec = {
        "preset": "fast",
        "synthesis": {"num_samples": 200, "steps": 3},
        "training": {"epochs": 1},
    }
    result = run_job(path, SHAPE, spec, tmp_path / "out", runtime=CPU)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["attention_kernel"] in ("default", "math")
    assert result.metrics["num_samples"] == 200
