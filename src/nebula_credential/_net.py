"""Network-address helpers shared by the surfaces (``serve``, ``daemon --ui``).

Low in the package so the HTTP server and the console each import it
instead of one another.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence


def address_in(address: str, blocks: Sequence[str]) -> bool:
    """Whether ``address`` (an IP literal) lies in one of the CIDR ``blocks``; True when there are none.

    An address that is not an IP literal (a Unix socket peer, a test client's name) is in no block.
    """
    if not blocks:
        return True
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(b, strict=False) for b in blocks)


def cidr_text(text: str) -> str:
    """A CIDR block in Vault's spelling: ``10.0.0.0/8``, and a single host as its bare address
    (``127.0.0.1``, not ``127.0.0.1/32``).  Raises ValueError for anything else."""
    network = ipaddress.ip_network(text.strip(), strict=False)
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (IPv6 may be bracketed); a name is never resolved."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
