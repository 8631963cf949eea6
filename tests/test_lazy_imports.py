"""The lazy replacements made for start-up (issue 27, target 6) behave as what they replaced."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

from nebula_credential import _sleep
from nebula_credential.audit import default_actor

from .helpers import cli_env


def test_sleep_without_the_bridge_loaded_is_time_sleep() -> None:
    probe = ("import sys, time\n"
             "from nebula_credential import _sleep\n"
             "t = time.monotonic(); _sleep.sleep(0.05); spent = time.monotonic() - t\n"
             "assert spent >= 0.05, spent\n"
             "assert 'nebula_credential._bridge' not in sys.modules and 'greenlet' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", probe], env=cli_env(), capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_sleep_inside_the_bridge_yields_the_loop() -> None:
    """A retry's sleep inside the asyncio bridge lets other tasks run, as ``_bridge.sleep`` did."""
    from nebula_credential import _bridge

    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(5):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main() -> None:
        task = asyncio.create_task(ticker())
        await _bridge.greenlet_spawn(lambda: _sleep.sleep(0.1))
        await task

    asyncio.run(main())
    assert len(ticks) == 5  # the ticker ran while the bridged code slept


def test_sleep_outside_a_greenlet_blocks_even_with_the_bridge_loaded() -> None:
    from nebula_credential import _bridge  # noqa: F401 - loaded, but this thread is not bridged

    start = time.monotonic()
    _sleep.sleep(0.02)
    assert time.monotonic() - start >= 0.02


def test_default_actor_names_the_host_as_socket_does() -> None:
    assert default_actor().rsplit("@", 1)[1] == socket.gethostname()
