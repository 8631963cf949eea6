"""Request bodies parsed with bounds, so bad input is a 400 and never a 5xx.

``json.loads`` recurses once per nesting level and raises RecursionError
near ~950 levels (a 500 before); it turns ``NaN``/``Infinity`` and ``1e999``
into floats that every later read of the stored secret refuses; and a
5,000-digit literal fails with Python's own advice about
``sys.set_int_max_str_digits()``.  :func:`loads` measures the nesting depth
with a cheap linear scan first and refuses more than :data:`MAX_DEPTH`
levels, refuses non-finite numbers naming the field, and bounds integers:
at most :data:`MAX_INT_DIGITS` digits anywhere, and within a signed 64-bit
range outside the ``data`` payload (``options.cas``, versions, TTLs), which
is what every integer we act on fits in.  Each refusal is a
:class:`~.errors.HTTPError` 400 in our words.

Speed: the depth scan is a Python loop over every byte (about 25 ms for a
1,000-item Transit batch of 350 kB, more than the batch's crypto), so a
body is parsed by ``orjson`` first when it is installed, and the depth is
measured on the parsed value in the walk that checks the numbers anyway.
orjson would turn an integer of more than 64 bits into a float and refuses
what ``json`` takes and we then name (``NaN``, ``1e999``, lone surrogates):
a body where the walk finds a float of 2**64 or more (what such an integer
becomes; every smaller integer stays one), or one orjson refuses, is parsed
again the original way, so every answer is the same as before, only sooner.
"""

from __future__ import annotations

import json
import math
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - the server extra installs it
    orjson = None  # type: ignore[assignment]

from starlette.responses import JSONResponse

from .errors import HTTPError

#: Deepest nesting of arrays/objects accepted (OpenBao takes deeper; we refuse with a 400 instead of a 500).
MAX_DEPTH = 512
#: Longest integer literal accepted anywhere in a body.
MAX_INT_DIGITS = 64
#: Integers outside the secret payload must fit a signed 64-bit integer (as Vault's do).
INT_BOUND = 2**63 - 1
#: Top-level fields whose integers are stored as given rather than acted on.
PAYLOAD_FIELDS = frozenset({"data"})


def nesting_depth(raw: bytes) -> int:
    """The deepest ``[``/``{`` nesting of ``raw``, skipping string contents (no recursion, one pass)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:  # stop early: the answer is already "too deep"
                    return deepest
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise HTTPError(400, f"failed to parse JSON input: a number has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _field(path: list[str]) -> str:
    return ".".join(path) or "(body)"


#: orjson keeps integers in [-2**63, 2**64) and turns the others into floats: a float this big may have
#: been one (2**63, not 2**64: a negative integer past -2**63 became a float that passed unchecked).
_MAYBE_BIG_INT = float(2**63)


class _ParsedAgain(Exception):
    """The orjson parse may have changed a number: parse with ``json``."""
_TOO_DEEP = f"failed to parse JSON input: nested deeper than {MAX_DEPTH} levels"


def _check_numbers(body: Any, *, check_depth: bool = False) -> None:
    """Refuse non-finite floats anywhere and out-of-range integers outside the payload, naming the field;
    with ``check_depth``, also a value nested deeper than :data:`MAX_DEPTH` (the byte scan's answer).

    Iterative (an explicit stack), so a body of :data:`MAX_DEPTH` levels costs no recursion.  A value's
    field path is kept as a link to its parent's and spelled out only for a refusal: building it for
    every value was ~1.2 ms of a 1,000-item Transit batch.  Bodies come from a JSON parser, so the
    exact types (``type(v) is dict``) are the whole set.
    """
    stack: list[tuple[Any, int, tuple[Any, ...] | None, bool]] = [(body, 0, None, False)]
    pop, push = stack.pop, stack.append
    while stack:
        value, depth, link, payload = pop()
        kind = type(value)
        if kind is str or kind is bool or value is None:
            continue
        if kind is dict or kind is list:
            if check_depth and depth >= MAX_DEPTH:
                raise HTTPError(400, _TOO_DEEP)
            child = depth + 1
            if kind is dict:
                for key, item in value.items():
                    if type(item) is not str:
                        push((item, child, (key, link), payload or (not depth and key in PAYLOAD_FIELDS)))
            else:
                for i, item in enumerate(value):
                    if type(item) is not str:
                        push((item, child, (i, link), payload))
        elif kind is float:
            if not math.isfinite(value):
                raise HTTPError(400, f"{_field(_path(link))}: NaN and Infinity are not valid JSON numbers")
            if check_depth and abs(value) >= _MAYBE_BIG_INT:
                raise _ParsedAgain()
        elif kind is int and not payload and abs(value) > INT_BOUND:
            raise HTTPError(400, f"{_field(_path(link))}: number out of range (at most {INT_BOUND})")


def _path(link: tuple[Any, ...] | None) -> list[str]:
    """The field path a :func:`_check_numbers` link stands for, outermost first."""
    path: list[str] = []
    while link is not None:
        path.append(str(link[0]))
        link = link[1]
    return path[::-1]


def loads(raw: bytes | str) -> Any:
    """Parse a request body within the bounds above; any refusal is a 400 naming the problem."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if orjson is not None:
        try:
            parsed = orjson.loads(data)
            _check_numbers(parsed, check_depth=True)
            return parsed
        except (orjson.JSONDecodeError, _ParsedAgain, HTTPError):
            pass  # the original path gives the original answer (its refusal first, or what orjson refuses)
    if nesting_depth(data) > MAX_DEPTH:
        raise HTTPError(400, _TOO_DEEP)
    try:
        body = json.loads(data, parse_int=_parse_int)
    except HTTPError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise HTTPError(400, "failed to parse JSON input: request body is not valid JSON") from None
    _check_numbers(body)
    return body


def dumps(content: Any) -> bytes:
    """``content`` as Starlette's JSONResponse writes it (compact, UTF-8, no NaN), by orjson when it can."""
    if orjson is not None:
        try:
            return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
        except (orjson.JSONEncodeError, TypeError):
            pass  # what orjson refuses (a lone surrogate, an int past 64 bits) gets json's own answer
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                      separators=(",", ":")).encode("utf-8")


class JSONAnswer(JSONResponse):
    """A JSONResponse rendered by :func:`dumps` (Vault's envelope on every hot answer)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
