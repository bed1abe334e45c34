"""The web dashboard: ``GET /`` and its static files under ``/dashboard/``.

Plain HTML, JavaScript and CSS shipped inside the package (``api/dashboard/``), so the API
serves its own front end on any fresh machine: no separate server, no build step, nothing
fetched at run time. The pages hold no data (the browser reads everything from ``/v1`` with
the user's API key), so these routes are public and left out of the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.errors import ApiError

router = APIRouter(include_in_schema=False)

DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "dashboard"
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# Revalidate every time (the ETag makes that a 304): an upgraded service is seen at once.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _asset(name: str) -> FileResponse:
    """A file of the dashboard folder by bare name: only names listed in the folder are served,
    so no request path can reach anything outside it."""
    path = DASHBOARD_DIR / name
    media_type = _CONTENT_TYPES.get(path.suffix)
    if "/" in name or media_type is None or name not in _asset_names():
        raise ApiError(404, "not_found", f"no dashboard file {name!r}")
    return FileResponse(path, media_type=media_type, headers=_HEADERS)


def _asset_names() -> set[str]:
    return {p.name for p in DASHBOARD_DIR.iterdir() if p.is_file()}


@router.get("/")
def dashboard_index() -> FileResponse:
    return _asset("index.html")


@router.get("/dashboard/{name}")
def dashboard_asset(name: str) -> FileResponse:
    return _asset(name)
