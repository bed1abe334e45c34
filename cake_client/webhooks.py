"""Webhook signatures for receivers of job callbacks: ``verify_signature`` and its helpers.

The service POSTs the finished job to the job's ``callback_url`` with the header::

    Cake-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

where ``secret`` is the tenant's webhook secret (``GET /v1/webhooks/secret``). For a grace
period after a rotation the header carries a second ``v1``, made with the previous secret, so
a receiver that has not switched yet keeps verifying; ``verify_signature`` accepts either::

    from cake_client.webhooks import verify_signature

    if not verify_signature(secret, request.headers["Cake-Signature"], raw_body):
        return 400

The rule itself lives in :mod:`cake_shared.signing` (standard library only, shipped in the same
distribution), the one place both the service's sender and this client read it; this module
re-exports it under the name the client has always documented.
"""

from __future__ import annotations

# ``name as name``: an explicit re-export (PEP 484), so linters and type checkers keep them.
from cake_shared.signing import ALGORITHM as ALGORITHM
from cake_shared.signing import DEFAULT_TOLERANCE_S as DEFAULT_TOLERANCE_S
from cake_shared.signing import DELIVERY_HEADER as DELIVERY_HEADER
from cake_shared.signing import EVENT_HEADER as EVENT_HEADER
from cake_shared.signing import SIGNATURE_HEADER as SIGNATURE_HEADER
from cake_shared.signing import parse_signature as parse_signature
from cake_shared.signing import sign as sign
from cake_shared.signing import verify_signature as verify_signature
