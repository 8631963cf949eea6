"""Child of the lease-sweep test: wait for the start file, sweep expired leases once, print the report."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nebula_credential as nc
from nebula_credential.database import DatabaseEngine


def main() -> int:
    url, start = sys.argv[1], Path(sys.argv[2])
    vault = nc.open(url)
    engine = DatabaseEngine(vault, "database")
    while not start.exists():
        time.sleep(0.01)
    report = engine.leases.sweep()
    print(json.dumps(report.to_json()))
    vault.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
