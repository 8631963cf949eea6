"""``/v1/sys/leases/*`` (and Vault's legacy ``sys/renew``, ``sys/revoke``...) over :mod:`nebula_credential.leases`.

Every answer is OpenBao's (``tests/test_diff_database.py`` compares them step
by step): ``lookup`` takes the id in the body and answers 400 ``invalid
lease`` for an unknown or revoked one; ``renew`` answers the lease envelope
with ``data`` null (400 ``lease not found``), with OpenBao's warning when the
increment was capped; ``revoke`` is idempotent (204; 202 with ``sync`` false);
``LIST sys/leases/lookup/<prefix>`` lists the next segment of every lease id
under the prefix (404 when none) and needs ``sudo`` as in Vault, as do
``revoke-prefix`` and ``revoke-force``; ``tidy`` answers 202 with a warning.

Deliberate differences, each safer: ``revoke-force`` does what
``revoke-prefix`` does -- a user whose revocation fails stays queued for retry
rather than being forgotten while it may still log in; a lease never outlives
the token that created it: a renewal is capped at the token's expiry, and a
lease whose token is gone is revoked at its next renewal (Vault revokes it
with the token; revoking a token here does too, see :meth:`.Backend._revoke_leases`).
Vault's legacy ``sys/renew``, ``sys/revoke``, ``sys/revoke-prefix`` and
``sys/revoke-force`` are served (OpenBao dropped them).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..database import DatabaseInputError, DatabaseUnavailableError
from ..durations import parse_duration
from ..leases import Lease, LeaseInputError, LeaseNotFoundError
from ._backend import Backend
from ._request import Ctx, endpoint, read_json
from .errors import HTTPError, bad_request

NO_CONTENT = 204
ACCEPTED = 202
BAD_GATEWAY = 502
TIDY_WARNING = ("Tidy operation successfully started. Any information from the operation will be printed to "
                "the server's logs.")
#: The longest increment accepted (ten years): anything longer is clipped to the role's max_ttl anyway.
MAX_INCREMENT = 10 * 365 * 86400


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lease_id(body: dict[str, Any], request: Request) -> str:
    """The lease id from the path (``renew/<id>``) or the body; Vault's messages when missing or not a string."""
    from_path = str(request.path_params.get("lease_id", "")).strip("/")
    value = from_path or body.get("lease_id")
    if value in (None, ""):
        raise bad_request("lease_id must be specified")
    if not isinstance(value, str):
        raise bad_request("invalid lease ID")
    return value


def _increment(body: dict[str, Any]) -> int | None:
    """``increment`` in seconds (a number or a duration such as ``10m``); None or 0 means the role's default."""
    value = body.get("increment")
    if value in (None, "", 0, "0"):
        return None
    if isinstance(value, bool):
        raise bad_request('Field validation failed: error converting input for field "increment": not a duration')
    try:
        if isinstance(value, int | float) or (isinstance(value, str) and value.lstrip("-").isdigit()):
            seconds = float(value)
        elif isinstance(value, str):
            seconds = -1.0 if value.startswith("-") else parse_duration(value, "increment").total_seconds()
        else:
            raise ValueError
    except Exception:
        raise bad_request('Field validation failed: error converting input for field "increment": '
                          f"invalid duration {str(value)[:40]!r}") from None
    if seconds < 0:
        raise bad_request('Field validation failed: error converting input for field "increment": '
                          f"cannot provide negative value '{str(value)[:40]}'")
    return int(min(seconds, MAX_INCREMENT))


def lookup_json(lease: Lease, now: float) -> dict[str, Any]:
    """Vault's ``sys/leases/lookup`` data."""
    return {
        "expire_time": _iso(lease.expire_time),
        "id": lease.lease_id,
        "issue_time": _iso(lease.issue_time),
        "last_renewal": _iso(getattr(lease, "last_renewal", None)),
        "path": lease.lease_id.rsplit("/", 1)[0],
        "renewable": lease.renewable,
        "ttl": max(0, round(lease.expire_time - now)),
    }


def _now(ctx: Ctx) -> float:
    return float(ctx.backend.vault.clock().timestamp())


# ---- handlers ------------------------------------------------------------------------------
async def lookup(request: Request, ctx: Ctx) -> Response:
    ctx.require("update")
    lease_id = _lease_id(await read_json(request), request)
    try:
        lease = await ctx.backend.run(ctx.backend.leases().lookup, lease_id)
    except LeaseNotFoundError:
        raise HTTPError(400, "invalid lease") from None
    return ctx.reply(lookup_json(lease, _now(ctx)))


async def list_leases(request: Request, ctx: Ctx) -> Response:
    """``LIST sys/leases/lookup/<prefix>``: sudo, as Vault's root-protected path."""
    ctx.require("sudo")
    ctx.require("list")
    prefix = str(request.path_params.get("prefix", "")).strip("/")
    keys = await ctx.backend.run(ctx.backend.leases().list, f"{prefix}/" if prefix else "")
    if not keys:
        raise HTTPError(404)
    return ctx.reply({"keys": sorted(keys)})


async def renew(request: Request, ctx: Ctx) -> Response:
    ctx.require("update")
    body = await read_json(request)
    lease_id = _lease_id(body, request)
    increment = _increment(body)
    leases = ctx.backend.leases()
    try:
        current = await ctx.backend.run(leases.lookup, lease_id)
        not_after = await _owner_expiry(ctx.backend, current)  # never past the token that created it
        lease = await ctx.backend.write(leases.renew, lease_id, increment, not_after=not_after)
    except LeaseNotFoundError:
        raise HTTPError(400, "lease not found") from None
    except (LeaseInputError, DatabaseInputError) as exc:
        raise HTTPError(400, str(exc)) from None
    except DatabaseUnavailableError as exc:
        raise HTTPError(BAD_GATEWAY, f"failed to renew the lease: {exc}") from None
    # the TTL granted, in whole seconds rounded up (a cap at max_ttl leaves a fraction of a second less)
    duration = max(0, math.ceil(lease.expire_time - _now(ctx) - 0.01))
    warnings = None
    if increment is not None and duration + 1 < increment:  # capped at the role's max_ttl (or the token)
        raw = body.get("increment")
        shown = raw if isinstance(raw, str) else f"{increment}s"
        warnings = [f'TTL of "{shown}" exceeded the effective max_ttl of "{duration}s"; TTL value is capped '
                    "accordingly"]
    ctx.details.update(lease_id=lease.lease_id)
    return ctx.reply(None, lease_id=lease.lease_id, renewable=lease.renewable, lease_duration=duration,
                     warnings=warnings)


async def _owner_expiry(backend: Backend, lease: Lease) -> float | None:
    """The creating token's expiry (a lease never outlives it); a lease whose token is gone is revoked."""
    if not lease.token_accessor:
        return None
    row = await backend.run(backend.tokens.by_accessor, lease.token_accessor)
    if row is None:
        await backend.write(backend.leases().revoke, lease.lease_id)
        raise LeaseNotFoundError(lease.lease_id)
    return row.expires_at


@contextlib.contextmanager
def _revocation_errors(what: str) -> Iterator[None]:
    """A revocation PostgreSQL refused (400, as OpenBao answers ``failed to revoke``) or could not be reached
    (502); either way the lease stays queued and the scheduler retries it."""
    try:
        yield
    except (LeaseInputError, DatabaseInputError) as exc:
        raise HTTPError(400, f'failed to revoke "{what[:200]}": {exc}') from None
    except DatabaseUnavailableError as exc:
        raise HTTPError(BAD_GATEWAY, f'failed to revoke "{what[:200]}": {exc}; it stays queued for retry') from None


async def revoke(request: Request, ctx: Ctx) -> Response:
    ctx.require("update")
    body = await read_json(request)
    lease_id = _lease_id(body, request)
    sync = body.get("sync", True)
    if not isinstance(sync, bool):
        sync = str(sync).lower() not in ("false", "0")
    with _revocation_errors(lease_id), contextlib.suppress(LeaseNotFoundError):  # revoking nothing succeeds
        await ctx.backend.write(ctx.backend.leases().revoke, lease_id, sync=sync)
    ctx.details.update(lease_id=lease_id)
    return Response(status_code=NO_CONTENT if sync else ACCEPTED)


async def revoke_prefix(request: Request, ctx: Ctx) -> Response:
    """``revoke-prefix/<prefix>`` and ``revoke-force/<prefix>`` (the same here: nothing is forgotten)."""
    ctx.require("sudo")
    ctx.require("update")
    prefix = str(request.path_params.get("prefix", "")).strip("/")
    if not prefix:
        raise HTTPError(404, "unsupported path")
    with _revocation_errors(prefix):
        count = await ctx.backend.write(ctx.backend.leases().revoke_prefix, prefix)
    ctx.details.update(prefix=prefix, revoked=int(count))
    return Response(status_code=NO_CONTENT)


async def tidy(request: Request, ctx: Ctx) -> Response:
    ctx.require("update")
    count = await ctx.backend.write(ctx.backend.leases().tidy)
    ctx.details.update(tidied=int(count))
    return ctx.reply(None, status=ACCEPTED, warnings=[TIDY_WARNING])


def routes() -> list[BaseRoute]:
    """Mounted under ``/v1/sys``."""
    post = ["POST", "PUT"]
    out: list[BaseRoute] = [
        Route("/leases/lookup", endpoint(lookup), methods=post),
        Route("/leases/lookup", endpoint(list_leases), methods=["LIST"]),
        Route("/leases/lookup/{prefix:path}", endpoint(list_leases), methods=["LIST"]),
        Route("/leases/tidy", endpoint(tidy), methods=post),
    ]
    for base in ("/leases", ""):  # ``sys/leases/renew`` and Vault's legacy ``sys/renew``
        out += [
            Route(f"{base}/renew", endpoint(renew), methods=post),
            Route(f"{base}/renew/{{lease_id:path}}", endpoint(renew), methods=post),
            Route(f"{base}/revoke", endpoint(revoke), methods=post),
            Route(f"{base}/revoke/{{lease_id:path}}", endpoint(revoke), methods=post),
            Route(f"{base}/revoke-prefix/{{prefix:path}}", endpoint(revoke_prefix), methods=post),
            Route(f"{base}/revoke-force/{{prefix:path}}", endpoint(revoke_prefix), methods=post),
        ]
    return out


__all__ = ["lookup_json", "routes"]
