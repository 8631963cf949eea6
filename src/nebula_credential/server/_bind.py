"""One server per address: ``serve`` refuses an address another process listens on.

granian binds its listening socket with ``SO_REUSEPORT`` (so its own
workers can share it), and Linux then lets any later process that also
asks for ``SO_REUSEPORT`` join the same port: a second ``serve`` started
and split requests with the first, each on its own store.  Before granian
starts, :func:`check_address_free` binds the address itself *without*
``SO_REUSEPORT`` (only ``SO_REUSEADDR``, so a port in TIME_WAIT after a
restart is fine); a socket already listening there makes that bind fail,
and ``serve`` stops with "address already in use" instead of sharing.
Workers of one ``serve`` still share granian's socket.  (Two ``serve``
processes started in the same instant could both pass the check; the
check closes the everyday mistake, not a race between two starts.)
"""

from __future__ import annotations

import errno
import socket

from ..exceptions import ConfigError


def check_address_free(host: str, port: int) -> None:
    """Raise ConfigError "address already in use" when something listens on ``host:port``."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError("--listen", f"cannot resolve {host}: {exc.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError("--listen", f"{host}:{port}: address already in use "
                                      "(another server listens there; stop it or choose another port)") from None
                raise ConfigError("--listen", f"cannot listen on {host}:{port}: {exc.strerror}") from None
