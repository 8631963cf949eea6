"""Credential encrypt/decrypt ops/s per root of trust, beside the raw SoftHSM AES-GCM rate.

Starts its own SoftHSM2 token (temp folder) and moto_server (free loopback
port), like the test session does, then measures through ``KeyManager``:

* ``wrap`` mode of every provider beside ``local``: the provider is off the
  hot path (one unwrap per DEK version), so these should all match local;
* HSM ``direct`` mode: every credential operation is one AES-GCM call in
  the token, shown beside python-pkcs11 calling SoftHSM's AES-GCM directly
  on a session key (the ceiling for direct mode on this machine);
* the cost of one unwrap (``open_dek``) per provider, which is what a cold
  cache or a ``dek_cache_ttl`` expiry pays.

Run: ``python benchmarks/bench_providers.py [--seconds 1.0]`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # run from a checkout without installing

PAYLOAD = b'{"token":"ghp_0123456789abcdef0123456789abcdef01234567"}'
AAD = b"\x00\x07default\x00\x06github\x00\x0aproduction"


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (batches of 200 calls)."""
    for _ in range(200):  # warm-up
        fn()
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            fn()
        n += 200
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def softhsm(folder: Path) -> Iterator[dict[str, Any]]:
    from tests.fixtures_hsm_kms import find_softhsm_library

    library = find_softhsm_library()
    if library is None:
        sys.exit("libsofthsm2.so not found: run scripts/ensure-system-deps.sh")
    (folder / "tokens").mkdir()
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = uuid.uuid4().hex[:10]
    (folder / "pin").write_text(pin)
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--pin",
            pin,
            "--so-pin",
            uuid.uuid4().hex[:10],
        ],
        check=True,
        capture_output=True,
    )
    yield {
        "type": "pkcs11",
        "library": library,
        "token_label": "bench",
        "pin_file": str(folder / "pin"),
    }


@contextmanager
def moto() -> Iterator[dict[str, Any]]:
    port = free_port()
    binary = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit("moto_server did not start")
            time.sleep(0.05)
        yield {"type": "aws-kms", "region": "us-east-1", "endpoint_url": f"http://127.0.0.1:{port}"}
    finally:
        proc.terminate()
        proc.wait()


def key_manager(settings: dict[str, Any]) -> Any:
    from nebula_credential.config import ProviderConfig
    from nebula_credential.keys import KeyManager
    from nebula_credential.providers import open_provider
    from nebula_credential.store import open_store

    provider = open_provider(ProviderConfig(settings["type"], settings, True), create=True)
    km = KeyManager(open_store("sqlite:///:memory:"), provider)
    km.initialize()
    return km


def bench_manager(name: str, km: Any, seconds: float) -> dict[str, Any]:
    from nebula_credential.providers import WrapContext

    blob = km.encrypt(PAYLOAD, AAD)
    assert km.decrypt(blob, AAD) == PAYLOAD
    wrapped = km.list()[0].wrapped_key
    ctx = WrapContext(km.keyring, 1)
    row = {
        "provider": name,
        "encrypt/s": rate(lambda: km.encrypt(PAYLOAD, AAD), seconds),
        "decrypt/s": rate(lambda: km.decrypt(blob, AAD), seconds),
    }
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds / 2 or n < 5:
        km.provider.open_dek(wrapped, ctx)
        n += 1
    row["unwrap ms"] = (time.perf_counter() - start) / n * 1000
    return row


def raw_softhsm(settings: dict[str, Any], seconds: float) -> dict[str, Any]:
    """python-pkcs11 straight onto SoftHSM: AES-GCM on a sensitive session key."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism
    from pkcs11.mechanisms import GCMParams

    pin = Path(settings["pin_file"]).read_text()
    session = (
        pkcs11.lib(settings["library"]).get_token(token_label="bench").open(user_pin=pin, rw=True)
    )
    key = session.generate_key(
        KeyType.AES, 256, template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False}
    )
    nonce = os.urandom(12)
    ct = key.encrypt(
        PAYLOAD, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, AAD, 128)
    )
    return {
        "provider": "SoftHSM AES-GCM, raw python-pkcs11",
        "encrypt/s": rate(
            lambda: key.encrypt(
                PAYLOAD, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, AAD, 128)
            ),
            seconds,
        ),
        "decrypt/s": rate(
            lambda: key.decrypt(
                ct, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, AAD, 128)
            ),
            seconds,
        ),
        "unwrap ms": None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args(argv)
    from nebula_credential.providers.local import LocalKeyProvider

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        local = LocalKeyProvider.create(Path(tmp) / "master.key")
        rows.append(bench_manager("local (key file)", _km_for(local), args.seconds))
        with softhsm(Path(tmp)) as hsm, moto() as kms:
            for name, settings in (
                ("pkcs11 wrap (SoftHSM)", {**hsm, "key_label": "w", "mode": "wrap"}),
                ("aws-kms (moto_server)", kms),
                ("pkcs11 direct (SoftHSM)", {**hsm, "key_label": "d", "mode": "direct"}),
            ):
                km = key_manager(settings)
                rows.append(bench_manager(name, km, args.seconds))
                km.provider.close()
            rows.append(raw_softhsm(hsm, args.seconds))
    print(f"payload {len(PAYLOAD)} B, aad {len(AAD)} B, {args.seconds:.1f}s per figure\n")
    print("| provider | encrypt ops/s | decrypt ops/s | one unwrap (ms) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        unwrap = "-" if r["unwrap ms"] is None else f"{r['unwrap ms']:.2f}"
        print(f"| {r['provider']} | {r['encrypt/s']:,.0f} | {r['decrypt/s']:,.0f} | {unwrap} |")
    return 0


def _km_for(provider: Any) -> Any:
    from nebula_credential.keys import KeyManager
    from nebula_credential.store import open_store

    km = KeyManager(open_store("sqlite:///:memory:"), provider)
    km.initialize()
    return km


if __name__ == "__main__":
    raise SystemExit(main())
