"""Secret leases (being written)."""
