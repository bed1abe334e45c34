"""2. Upload: a TorchScript teacher of ``--upload-mb`` MiB streamed to ``POST /v1/teachers``
(through the client's multipart encoder, never whole in memory) while the API's memory is
watched."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from torch import nn

from bench.common import console
from bench.service.monitor import (
    MIB,
    CpuWindow,
    RssSampler,
    peak_rss_kib,
    reset_peak_rss,
    rss_bytes,
)
from bench.service.processes import LOCAL_ONLY, BenchError, Managed
from cake_client.multipart import FilePart, MultipartBody


def build_big_teacher(path: Path, mib: float, layers: int = 6) -> dict[str, Any]:
    """A scripted MLP classifier on ``[13]`` inputs (3 classes) with about ``mib`` MiB of
    float32 parameters: ``Linear(13, W)``, ``layers`` x ``Linear(W, W)``, ``Linear(W, 3)``."""
    target = mib * MIB / 4
    width = max(8, int(math.sqrt(target / layers)))
    torch.manual_seed(0)
    mods: list[nn.Module] = [nn.Linear(13, width), nn.ReLU()]
    with torch.no_grad():
        for _ in range(layers):
            layer = nn.Linear(width, width)
            # small weights keep the logits finite through many layers (and init is fast)
            layer.weight.normal_(0.0, 1.0 / math.sqrt(width))
            layer.bias.zero_()
            mods += [layer, nn.ReLU()]
    mods.append(nn.Linear(width, 3))
    model = nn.Sequential(*mods).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    parameters = sum(p.numel() for p in model.parameters())
    torch.jit.save(torch.jit.script(model), str(path))
    del model
    return {"width": width, "layers": layers + 2, "parameters": parameters}


def run_upload(api: Managed, base: str, teacher_path: Path, built: dict[str, Any]) -> dict:
    size = teacher_path.stat().st_size
    console.print(
        f"  upload: {size / MIB:.0f} MiB TorchScript teacher ({built['parameters']:,} "
        f"parameters) to {api.name} ...",
        end="",
        highlight=False,
    )
    time.sleep(1.0)  # let the API settle after start-up
    api.remember_tree()
    baseline = rss_bytes(api.pid)
    hwm_before = peak_rss_kib(api.pid)
    reset = reset_peak_rss(api.pid)
    sent_at: float | None = None

    def note_sent(sent: int, total: int) -> None:
        nonlocal sent_at
        if sent == total:  # the last byte was handed to the client
            sent_at = time.perf_counter()

    body = MultipartBody(
        {"input_shape": "[13]", "name": "bench-big"},
        [FilePart("file", teacher_path)],
        on_progress=note_sent,
    )
    sampler = RssSampler(api.pid)
    sampler.start()
    started = time.perf_counter()
    try:
        with (
            CpuWindow(groups={"server": api.pid}) as cpu,
            httpx.Client(timeout=600, **LOCAL_ONLY) as client,
        ):
            response = client.post(
                base + "/v1/teachers",
                content=body,
                headers={"Content-Type": body.content_type, "Content-Length": str(len(body))},
            )
        answered = time.perf_counter()
    finally:
        sampler.finish()
    hwm_after = peak_rss_kib(api.pid)
    wall = answered - started
    sent = (sent_at or answered) - started
    payload = response.json() if response.headers.get("content-type", "").endswith("json") else {}
    result = {
        "file_bytes": size,
        "file_mib": round(size / MIB, 1),
        "model": built,
        "status": response.status_code,
        "response": {
            k: payload.get(k) for k in ("id", "code", "detail", "num_classes", "parameters")
        },
        "wall_seconds": round(wall, 2),
        "mib_per_second": round(size / MIB / wall, 1),
        "body_sent_seconds": round(sent, 2),
        "body_mib_per_second": round(size / MIB / max(sent, 1e-9), 1),
        "after_body_seconds": round(wall - sent, 2),
        "api_rss_before_mib": round(baseline / MIB, 1),
        "api_rss_peak_sampled_mib": round(sampler.peak_api / MIB, 1),
        "api_vmhwm_reset": reset,
        "api_vmhwm_before_mib": round(hwm_before / 1024, 1) if hwm_before else None,
        "api_vmhwm_after_mib": round(hwm_after / 1024, 1) if hwm_after else None,
        "children_rss_peak_sum_mib": round(sampler.peak_children_sum / MIB, 1),
        # the API's children are its torch fork server; the check processes are forked from it
        "fork_server_rss_peak_mib": round(sampler.peak_by_depth.get(1, 0) / MIB, 1),
        "check_process_rss_peak_mib": round(sampler.peak_by_depth.get(2, 0) / MIB, 1),
        "rss_samples": sampler.samples,
        "rss_trace_mib": sampler.trace,  # (seconds, API MiB, children MiB) every 0.25 s
        "cpu": cpu.result,
    }
    # The peak that counts: the kernel's own (exact) if it could be reset, else the sampled one.
    exact = result["api_vmhwm_after_mib"] if reset else None
    result["api_rss_peak_mib"] = max(v for v in (exact, result["api_rss_peak_sampled_mib"]) if v)
    console.print(
        f" HTTP {response.status_code} in {wall:.1f} s ({result['mib_per_second']:.0f} MiB/s); "
        f"API RSS {result['api_rss_before_mib']:.0f} -> peak {result['api_rss_peak_mib']:.0f} "
        f"MiB; check process peak {result['check_process_rss_peak_mib']:.0f} MiB",
        highlight=False,
    )
    if response.status_code != 201:
        raise BenchError(f"the upload was refused: {response.status_code} {response.text[:500]}")
    with httpx.Client(timeout=60, **LOCAL_ONLY) as client:
        client.delete(f"{base}/v1/teachers/{payload['id']}")
    return result
