"""Dynamic roles (placeholder until the lease library lands)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..vault import Vault
    from .connections import Connections
    from .items import Items


class DynamicRoles:
    def __init__(self, vault: Vault, items: Items, connections: Connections) -> None:
        self.vault = vault
        self.items = items
        self.connections = connections
