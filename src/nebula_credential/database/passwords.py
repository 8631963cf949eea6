"""Passwords and user names for PostgreSQL, from :mod:`secrets`.

No password policy language here (Vault's ``sys/policies/password``): a
connection's ``password_policy`` is kept and reported, and every password is
24 characters of letters and digits with at least one of each class
(about 142 bits), which fits every PostgreSQL authentication method.
"""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 24


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    while True:
        pw = "".join(secrets.choice(_ALPHABET) for _ in range(length))
        if any(c.islower() for c in pw) and any(c.isupper() for c in pw) and any(c.isdigit() for c in pw):
            return pw


def dynamic_username(display: str, role: str, now: float) -> str:
    """Vault's shape ``v-<display>-<role>-<random>-<unix time>``, lower case, within PostgreSQL's 63 bytes."""
    rand = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(20))
    clean = [("".join(c if c.isalnum() else "-" for c in part.lower()))[:8] for part in (display, role)]
    return f"v-{clean[0]}-{clean[1]}-{rand}-{int(now)}"[:63]
