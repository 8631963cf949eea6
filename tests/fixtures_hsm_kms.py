"""Real peers for the HSM and KMS providers, started once per test session.

* SoftHSM2: a config whose token folder is a fresh temp folder (labels are
  not unique in a token, and ``pkcs11.lib`` is one per process, so the whole
  session shares one SoftHSM instance with its own tokens).
* moto_server: ``moto_server -H 127.0.0.1 -p PORT`` from the venv's bin folder, one for
  the session shared by the xdist workers (tests/shared_service.py).

A service that cannot start fails the test that needs it, with the reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .helpers import free_port
from .shared_service import detached, shared, stop_pid

SOFTHSM_LIBRARY_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


def find_softhsm_library() -> str | None:
    for path in SOFTHSM_LIBRARY_CANDIDATES:
        if Path(path).is_file():
            return path
    # bounded patterns: a recursive walk of /usr can take minutes
    for pattern in (
        "/usr/lib/*/softhsm/libsofthsm2.so",
        "/usr/lib*/softhsm/libsofthsm2.so",
        "/usr/local/lib*/softhsm/libsofthsm2.so",
        "/usr/lib/*/libsofthsm2.so",
    ):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


@dataclass
class SoftHsm:
    library: str
    conf: Path
    folder: Path
    token_label: str
    pin: str
    pin_file: Path
    #: a second token, used only by the wrong-PIN test (so it cannot lock the main one)
    spare_token_label: str
    tokens: list[str] = field(default_factory=list)

    def settings(self, mode: str = "wrap", **extra: Any) -> dict[str, Any]:
        """``[provider]`` settings for a fresh root key (unique key label) in the session token."""
        return {
            "type": "pkcs11",
            "library": self.library,
            "token_label": self.token_label,
            "key_label": f"root-{uuid.uuid4().hex[:12]}",
            "pin_file": str(self.pin_file),
            "mode": mode,
            **extra,
        }

    def init_token(self, label: str, pin: str) -> None:
        so_pin = uuid.uuid4().hex[:8]
        proc = subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                pin,
                "--so-pin",
                so_pin,
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ, SOFTHSM2_CONF=str(self.conf)),
            timeout=60,
        )
        if proc.returncode != 0:
            pytest.fail(
                f"softhsm2-util --init-token failed: {proc.stderr.strip() or proc.stdout.strip()}"
            )
        self.tokens.append(label)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """A SoftHSM2 with a fresh token folder for this session; SOFTHSM2_CONF points at it."""
    if shutil.which("softhsm2-util") is None:
        pytest.fail(
            "softhsm2-util not found: run scripts/ensure-system-deps.sh (Debian package softhsm2)"
        )
    library = find_softhsm_library()
    if library is None:
        pytest.fail(
            "libsofthsm2.so not found: run scripts/ensure-system-deps.sh (Debian package softhsm2)"
        )
    folder = tmp_path_factory.mktemp("softhsm")
    (folder / "tokens").mkdir()
    conf = folder / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    pin = uuid.uuid4().hex[:10]
    pin_file = folder / "pin"
    pin_file.write_text(pin + "\n")
    pin_file.chmod(0o600)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", str(conf))
        hsm = SoftHsm(library, conf, folder, "nebula-test", pin, pin_file, "nebula-spare")
        # every token exists before the first test loads the library (which is
        # once per process and does not see tokens created later)
        for label in (hsm.token_label, hsm.spare_token_label):
            hsm.init_token(label, pin)
        yield hsm


@dataclass
class MotoKms:
    endpoint_url: str
    port: int
    region: str = "us-east-1"

    def client(self) -> Any:
        import boto3

        return boto3.client("kms", region_name=self.region, endpoint_url=self.endpoint_url)

    def create_key(self) -> str:
        return str(self.client().create_key(Description="nebula test root")["KeyMetadata"]["Arn"])

    def settings(self, key_id: str | None = None, **extra: Any) -> dict[str, Any]:
        """``[provider]`` settings for a fresh KMS key (created here unless one is given)."""
        return {
            "type": "aws-kms",
            "key_id": key_id or self.create_key(),
            "region": self.region,
            "endpoint_url": self.endpoint_url,
            **extra,
        }


AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def aws_test_env() -> Iterator[None]:
    """Fake credentials for the default chain, and no way to reach a real AWS account."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in AWS_TEST_ENV.items():
            mp.setenv(k, v)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        yield


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 30.0,
                  log: Path | None = None) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            if log is not None:
                out = log.read_text(errors="replace")
            pytest.fail(f"moto_server exited with status {proc.returncode}: {out[-2000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"service on 127.0.0.1:{port} did not start within {timeout:.0f}s")


def _start_moto(folder: Path) -> dict[str, Any]:
    binary = Path(sys.executable).parent / "moto_server"
    if not binary.exists():
        pytest.fail(f"{binary} not found: install the test extra (moto[server])")
    port = free_port()
    proc = detached([str(binary), "-H", "127.0.0.1", "-p", str(port)], folder / "moto.log",
                    env=dict(os.environ, **AWS_TEST_ENV))
    try:
        wait_for_port(port, proc, log=folder / "moto.log")
    except BaseException:
        stop_pid({"pid": proc.pid})
        raise
    return {"kind": "pid", "pid": proc.pid, "port": port}


@pytest.fixture(scope="session")
def moto_kms(aws_test_env: None) -> MotoKms:
    """``moto_server`` on a free loopback port, one for the session (shared by the xdist workers)."""
    record = shared("moto", _start_moto)
    return MotoKms(f"http://127.0.0.1:{record['port']}", int(record["port"]))


# ---- provider factories for the conformance suite (tests/test_providers_conformance.py) ----
ProviderFactory = Callable[[], dict[str, Any]]


@pytest.fixture
def pkcs11_wrap_provider_factory(softhsm: SoftHsm) -> ProviderFactory:
    return lambda: softhsm.settings(mode="wrap")


@pytest.fixture
def pkcs11_direct_provider_factory(softhsm: SoftHsm) -> ProviderFactory:
    return lambda: softhsm.settings(mode="direct")


@pytest.fixture
def aws_kms_provider_factory(moto_kms: MotoKms) -> ProviderFactory:
    return lambda: moto_kms.settings()
