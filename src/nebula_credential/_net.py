"""Network-address helpers shared by the surfaces (``serve``, ``daemon --ui``).

Low in the package so the HTTP server and the console each import it
instead of one another.
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (IPv6 may be bracketed); a name is never resolved."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
