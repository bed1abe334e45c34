"""The student architecture catalogue (computed once in a child process, then cached)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import catalog
from api.schemas import ANY_CLIENT_ERROR, ArchitectureList, problem_responses

router = APIRouter(prefix="/v1/architectures", tags=["catalogue"], responses=ANY_CLIENT_ERROR)


@router.get(
    "",
    response_model=ArchitectureList,
    summary="List student architectures",
    description=(
        "Each with its name, description, accepted input ranks, the ranks it is the default "
        "for, the accepted width and parameter counts for example inputs."
    ),
    responses=problem_responses(503),
)
def list_architectures() -> dict[str, Any]:
    items = catalog.architectures()
    return {"object": "list", "data": items, "has_more": False, "next_after": None}
