"""Conditional requests (RFC 9110 section 13): ``If-None-Match`` against an entity tag.

Shared by the artifact downloads (whose tag is the file's SHA-256) and ``GET /v1/jobs/{id}``
(whose tag follows the job row's ``updated_at``), so both read the header the same way.
"""

from __future__ import annotations

import re

#: One entity-tag of a list: optional weakness marker, then a quoted opaque tag (which may
#: itself hold commas, so the list is not simply split on them).
_ENTITY_TAG = re.compile(r'(?:W/)?"([^"]*)"')


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header matches ``etag``: ``*``, or any tag of the list by
    the weak comparison that RFC 9110 prescribes for this header (``W/`` is ignored on both
    sides). A header that holds no well-formed tag matches nothing, so the full response goes
    out: a conditional request can only save work, never lose an answer."""
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/").strip('"')
    return any(tag == wanted for tag in _ENTITY_TAG.findall(if_none_match))
