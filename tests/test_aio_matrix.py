"""The sync vault test matrix, run again through the asyncio API (parametrised, not copied).

The test functions of the facade modules are imported here, so pytest
collects them a second time in this module, where the ``vault`` fixture is
overridden: it yields a sync-looking adapter over :class:`nc.AsyncVault`
(``tests/aio_adapter.py``) on every store kind.  A rule that behaved
differently through the async API fails here under its own name.  Tests
that drive the key manager's internals directly (``lifecycle.advance`` on
``vault.keys``, the reservation counter) stay sync-only: they test the
shared engine, not the facade.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .aio_adapter import Portal, SyncOverAsync, open_sync_over_async, portal_fixture  # noqa: F401 - fixture
from .helpers import FakeClock
from .test_audit import (  # noqa: F401 - collected again against the async API
    test_chain_verifies_after_mixed_workload_and_holds_no_secrets,
    test_rotation_event_names_old_and_new_versions,
    test_secret_like_details_are_refused,
    test_tampered_credential_read_is_audited,
)
from .test_keys import (  # noqa: F401 - collected again against the async API
    test_lifecycle_rules,
    test_many_versions_decrypt_side_by_side,
    test_one_active_per_keyring,
    test_refresh_sees_rotation_by_another_process,
    test_revoked_version_names_itself_and_the_fix,
)
from .test_lifecycle import (  # noqa: F401 - collected again against the async API
    test_full_lifecycle_by_the_clock,
    test_maintain_report_json_shape,
)
from .test_metrics_alerts import (  # noqa: F401 - collected again against the async API
    test_status_evaluates_alerts_from_the_store,
)
from .test_reencrypt import (  # noqa: F401 - collected again against the async API
    second_vault,
    test_cas_update_counts_only_rows_whose_revision_held,
    test_corrupt_row_is_reported_skipped_and_never_rewritten,
    test_instance_with_a_stale_cache_never_moves_rows_back,
    test_missing_key_version_is_reported,
    test_pass_moves_every_row_once_and_audits,
    test_priority_order_is_honoured,
    test_revoked_key_rows_are_reported_not_rewritten,
    test_several_old_versions_and_a_second_rotation,
    test_stop_then_resume_redoes_nothing,
    test_writers_and_readers_during_the_pass,
)
from .test_tamper import *  # noqa: F403 - collected again against the async API


@pytest.fixture
def vault(store_url: str, key_file: Path, clock: FakeClock, portal: Portal) -> Iterator[SyncOverAsync]:
    """The conftest ``vault``, opened with ``nc.aopen`` and driven through its event loop."""
    v = open_sync_over_async(store_url, portal, create=True, clock=clock)
    try:
        yield v
    finally:
        v.close()
