"""The rule for a job spec's ``mlflow_tracking_uri``: who may name one, and which URLs.

The worker dials that URL with the job's results, so it is held to the same rules as a
webhook's ``callback_url`` (:mod:`cake_shared.webhooks`): an absolute http(s) URL without
credentials or fragment (no ``file://``, no local path, no ``sqlite:``: those would write on
the worker's own disk), on a public address unless ``webhook_allow_private``; and only
tenants the operator lists in ``CAKE_MLFLOW_SPEC_TENANTS`` may name one at all. The API checks
it when the job is submitted (a 422), the worker again before it dials (the operator may have
changed the list since, and a host name may resolve elsewhere now).

The operator's own ``CAKE_MLFLOW_TRACKING_URI`` is not held to this: it may be anything MLflow
accepts, a local folder or a SQLite file included.
"""

from __future__ import annotations

from cake_shared.settings import Settings
from cake_shared.webhooks import CallbackURLError, refuse_non_public, validate_callback_url

__all__ = ["MlflowURIError", "check_mlflow_uri", "validate_mlflow_uri"]


class MlflowURIError(ValueError):
    """A spec ``mlflow_tracking_uri`` the service will not dial; the message says why."""


def validate_mlflow_uri(url: str) -> str:
    """``url`` if it is an http(s) URL the worker may dial (syntax only, no DNS): what
    request validation runs."""
    try:
        return validate_callback_url(url)
    except CallbackURLError as exc:
        raise MlflowURIError(str(exc)) from None


def check_mlflow_uri(url: str, tenant: str, settings: Settings) -> str:
    """``url`` if ``tenant`` may name its own tracking server and the URL passes
    :func:`validate_mlflow_uri` and (``webhook_allow_private`` off) resolves only to public
    addresses; else :class:`MlflowURIError`."""
    if not settings.mlflow_spec_allowed(tenant):
        raise MlflowURIError(
            f"tenant {tenant!r} may not name its own MLflow tracking server; the service "
            "operator can allow it (CAKE_MLFLOW_SPEC_TENANTS)"
        )
    validate_mlflow_uri(url)
    if not settings.webhook_allow_private:
        try:
            refuse_non_public(url)
        except CallbackURLError as exc:
            raise MlflowURIError(str(exc)) from None
    return url
