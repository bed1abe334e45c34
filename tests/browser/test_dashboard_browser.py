"""The dashboard at ``/`` in a real browser (headless chromium) against a real ``cake serve``.

A small digits job runs while the browser watches: the job appears in the list, its page shows
the progress moving and the events arriving, then the metrics, every PNG artifact and working
downloads. With an API key configured the page asks for a key and works once given one.

``CAKE_UPDATE_DOCS_SCREENSHOT=1`` also writes the finished job's page to
``docs/dashboard.png`` (otherwise the screenshot stays in the test's temporary folder, so a test
run does not rewrite a tracked file); the job is then the full ``fast`` preset (about a minute
on an idle machine), so that the picture shows a realistic result.
"""

from __future__ import annotations

import os
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from dashboard_support import ROOT, Served, create_key, expect, sha256_of, start_served
from playwright.sync_api import Page
from playwright.sync_api import expect as page_expect

DIGITS_TEACHER = ROOT / "examples" / "digits_cnn.pt"  # the bundled, already trained CNN
DIGITS_EVAL = ROOT / "examples" / "digits_cnn_test.npz"  # its held-out real split
DOCS_SCREENSHOT = os.environ.get("CAKE_UPDATE_DOCS_SCREENSHOT") == "1"
# About 10-20 s on one busy core: long enough to watch the progress move, with a progress
# write after every second synthesis mini-batch and every training epoch.
JOB_SPEC: dict[str, Any] = {
    "preset": "fast",
    "synthesis": {"num_samples": 1200, "steps": 50, "chunk_batches": 2},
    "training": {"epochs": 12},
    "metadata": {"name": "dashboard test"},
}
DOCS_JOB_SPEC: dict[str, Any] = {
    "preset": "fast",
    "metadata": {"name": "digits CNN to LeNet-5-Half"},
}
JOB_TIMEOUT_MS = (600 if DOCS_SCREENSHOT else 180) * 1000  # on a loaded 2-core machine
UI_TIMEOUT_MS = 15_000

# Every value the page's progress label shows, recorded by the page itself as it changes.
RECORD_PROGRESS = """() => {
  const label = document.querySelector("#job-progress");
  window.progressSeen = [Number(label.dataset.progress)];
  new MutationObserver(() => window.progressSeen.push(Number(label.dataset.progress)))
    .observe(label, { attributes: true, attributeFilter: ["data-progress"] });
}"""
PROGRESS_MOVED = """() => new Set(window.progressSeen.filter((v) => v > 0 && v < 1)).size >= 2"""
IMAGE_RENDERED = """(name) => {
  const img = document.querySelector(`#images img[data-artifact="${name}"]`);
  return img !== null && img.complete && img.naturalWidth > 0;
}"""


def _new_page(chromium: Any) -> tuple[Any, Page, list[str]]:
    """A fresh browser context (own local storage) and page; page errors are collected."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    return context, page, errors


def test_dashboard_follows_a_job_to_its_downloads(
    chromium: Any, served: Served, tmp_path: Path
) -> None:
    client = served.client
    with open(DIGITS_TEACHER, "rb") as f:
        teacher = expect(
            client.post(
                "/v1/teachers",
                files={"file": ("digits_cnn.pt", f)},
                data={"input_shape": "[1,8,8]", "name": "digits-cnn"},
            ),
            201,
        )
    with open(DIGITS_EVAL, "rb") as f:
        dataset = expect(client.post("/v1/datasets", files={"file": ("digits.npz", f)}), 201)
    spec = DOCS_JOB_SPEC if DOCS_SCREENSHOT else JOB_SPEC
    body = {"teacher_id": teacher["id"], "eval_dataset_id": dataset["id"], **spec}
    job = expect(client.post("/v1/jobs", json=body), 202)
    job_id = job["id"]

    context, page, errors = _new_page(chromium)
    try:
        page.goto(served.url + "/")
        row = page.locator(f'#jobs-table tr[data-job-id="{job_id}"]')
        page_expect(row).to_be_visible(timeout=UI_TIMEOUT_MS)
        page_expect(row).to_contain_text(spec["metadata"]["name"])
        row.locator("a").first.click()

        page_expect(page.locator("#job")).to_have_attribute("data-job-id", job_id)
        page_expect(page.locator("#job-progress")).to_be_visible()
        page.evaluate(RECORD_PROGRESS)
        # The label changes while the job runs: two distinct values strictly inside (0, 1).
        page.wait_for_function(PROGRESS_MOVED, timeout=JOB_TIMEOUT_MS, polling=200)
        page_expect(page.locator("#events tr").first).to_be_visible(timeout=UI_TIMEOUT_MS)

        page_expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
        page_expect(page.locator("#job-progress")).to_have_text("100%")
        done = expect(client.get(f"/v1/jobs/{job_id}"), 200)
        artifacts = expect(client.get(f"/v1/jobs/{job_id}/artifacts"), 200)["data"]

        # metrics, as the API reports them
        metrics = done["metrics"]
        page_expect(page.locator("#metrics tr")).to_have_count(len(metrics))
        for key in ("teacher_parameters", "student_parameters"):
            cell = page.locator(f'#metrics tr[data-metric="{key}"] td')
            page_expect(cell).to_have_text(f"{round(metrics[key]):,}")
        for key in ("agreement_synthetic", "agreement_eval", "student_accuracy"):
            shown = page.locator(f'#metrics tr[data-metric="{key}"] td').inner_text()
            assert shown.endswith("%"), (key, shown)
            assert abs(float(shown[:-1]) - 100 * metrics[key]) <= 0.051, (key, shown)

        # the deployment table: the rows of the job's manifest.json, and what became of int8
        manifest = expect(client.get(f"/v1/jobs/{job_id}/artifacts/manifest.json"), 200)
        _check_deployment(page, manifest["deployment"])

        # every PNG artifact rendered (fetched with the key, shown from a blob URL)
        pngs = [a["name"] for a in artifacts if a["content_type"].split(";")[0] == "image/png"]
        assert "samples.png" in pngs, artifacts
        page_expect(page.locator("#images img")).to_have_count(len(pngs))
        for name in pngs:
            page.wait_for_function(IMAGE_RENDERED, arg=name, timeout=UI_TIMEOUT_MS)

        # the events streamed in until the end
        page_expect(page.locator('#events tr[data-type="succeeded"]')).to_have_count(
            1, timeout=UI_TIMEOUT_MS
        )

        # downloads: student.pt first (then its ONNX form), and the file saved is the artifact
        buttons = page.locator("#downloads button.download")
        page_expect(buttons).to_have_count(len(artifacts))
        page_expect(buttons.first).to_have_attribute("data-artifact", "student.pt")
        page_expect(buttons.nth(1)).to_have_attribute("data-artifact", "student.onnx")
        with page.expect_download(timeout=UI_TIMEOUT_MS) as download_info:
            buttons.first.click()
        download = download_info.value
        assert download.suggested_filename == "student.pt"
        saved = tmp_path / "downloaded-student.pt"
        download.save_as(saved)
        student = next(a for a in artifacts if a["name"] == "student.pt")
        assert sha256_of(saved) == student["sha256"]

        shot = tmp_path / "dashboard.png"
        page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(path=str(shot), full_page=True)
        if DOCS_SCREENSHOT:
            (ROOT / "docs").mkdir(exist_ok=True)
            (ROOT / "docs" / "dashboard.png").write_bytes(shot.read_bytes())
        assert not errors, errors
    finally:
        context.close()


def _fixed(value: float, digits: int) -> str:
    """JavaScript's ``value.toFixed(digits)``: the exact binary value, ties rounded up."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def _bytes_text(n: int) -> str:
    """The dashboard's ``formatBytes``: binary units, one decimal above bytes."""
    units, i, value = ["B", "KiB", "MiB", "GiB", "TiB"], 0, Decimal(n)
    while value >= 1024 and i < len(units) - 1:
        value, i = value / 1024, i + 1
    return f"{n} {units[0]}" if i == 0 else f"{_fixed(float(value), 1)} {units[i]}"


def _ms_text(ms: float) -> str:
    return f"{_fixed(ms, 2 if ms < 10 else 1)} ms"


def _check_deployment(page: Page, deployment: dict[str, Any]) -> None:
    """The panel shows each row of the manifest's deployment table, in its order, and a line
    each on ONNX and int8 (kept or not, and the manifest's reason)."""
    table = deployment["table"]
    kept = ["teacher.pt", "student.pt", "student.onnx"]
    assert [row["artifact"] for row in table] == kept + (
        ["student.int8.onnx"] if deployment["int8"]["kept"] else []
    )
    page_expect(page.locator("#deployment-panel")).to_be_visible(timeout=UI_TIMEOUT_MS)
    rows = page.locator("#deployment tbody tr")
    page_expect(rows).to_have_count(len(table))
    for i, row in enumerate(table):
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert rows.nth(i).get_attribute("data-artifact") == row["artifact"]
        artifact, runtime, size, parameters, batch_1, batch_64, agreement = cells
        assert (artifact, runtime) == (row["artifact"], row["runtime"])
        assert parameters == f"{row['parameters']:,}"
        assert size == _bytes_text(row["size_bytes"])
        assert batch_1 == _ms_text(row["latency_ms_batch_1"])
        assert batch_64 == _ms_text(row["latency_ms_batch_64"])
        assert agreement == f"{_fixed(row['agreement_teacher'] * 100, 1)}%"
    for key, label in (("onnx", "ONNX"), ("int8", "int8")):
        note = page.locator(f"#deployment-{key}")
        page_expect(note).to_have_attribute("data-kept", str(deployment[key]["kept"]).lower())
        page_expect(note).to_contain_text(label)
        page_expect(note).to_contain_text("kept" if deployment[key]["kept"] else "not kept")
        page_expect(note).to_contain_text(deployment[key]["reason"])
    page_expect(page.locator("#deployment-method")).to_contain_text(
        f"{deployment['latency']['threads']} thread"
    )


def test_dashboard_asks_for_a_key_when_keys_are_configured(chromium: Any, tmp_path: Path) -> None:
    key = create_key(tmp_path / "data", "dash")
    served = start_served(tmp_path, "--no-worker")
    try:
        # the pages are public and undocumented; the API behind them is not public
        assert served.client.get("/").status_code == 200
        assert served.client.get("/dashboard/app.js").status_code == 200
        assert served.client.get("/dashboard/missing.js").status_code == 404
        paths = expect(served.client.get("/openapi.json"), 200)["paths"]
        assert not [
            p for p in paths if not p.startswith(("/v1/", "/healthz", "/readyz", "/metrics"))
        ]
        assert served.client.get("/v1/jobs").status_code == 401

        context, page, _ = _new_page(chromium)  # the 401s are logged to the console on purpose
        try:
            page.goto(served.url + "/")
            prompt = page.locator("#auth-prompt")
            page_expect(prompt).to_be_visible(timeout=UI_TIMEOUT_MS)
            page_expect(prompt).to_contain_text("This service needs an API key")
            page_expect(page.locator("#auth-detail")).to_contain_text("requires an API key")
            page_expect(page.locator("#jobs-table tbody tr")).to_have_count(0)

            page.fill("#auth-key", "cake_not-a-real-key")
            page.click("#auth-form button[type=submit]")
            page_expect(page.locator("#auth-detail")).to_contain_text(
                "refused", timeout=UI_TIMEOUT_MS
            )

            page.fill("#auth-key", key)
            page.click("#auth-form button[type=submit]")
            page_expect(prompt).to_be_hidden(timeout=UI_TIMEOUT_MS)
            page_expect(page.locator(".empty")).to_be_visible(timeout=UI_TIMEOUT_MS)
            assert page.evaluate("() => localStorage.getItem('cake.apiKey')") == key
            page_expect(page.locator("#api-key")).to_have_value(key)
        finally:
            context.close()
    finally:
        served.stop()
