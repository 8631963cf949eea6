"""Encrypt/decrypt of one 256-byte secret: ours beside the alternatives.

Every contender gets the same plaintext and, where it has one, the same
context (AAD / encryption context).  The bare AESGCM side does what any
stored ciphertext needs: prepends its random 12-byte nonce on encrypt and
splits it off on decrypt.  A contender whose library is missing is
reported as skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import nebula_credential as nc
from nebula_credential.envelope import credential_context
from nebula_credential.providers.local import LocalKeyProvider

from ._timing import Call, calibrate, interleaved_samples

SECRET = os.urandom(256)
KEYRING, CRED_ID, SCOPE = "default", "db/orders/primary", "production"
AAD = credential_context(KEYRING, CRED_ID, SCOPE)
ENC_CONTEXT = {"keyring": KEYRING, "id": CRED_ID, "scope": SCOPE}
BARE = "cryptography AESGCM (bare)"


@dataclass(slots=True)
class Contender:
    name: str
    encrypt: Call
    enc_args: tuple[Any, ...]
    decrypt: Call
    dec_args: tuple[Any, ...]
    note: str = ""


@dataclass(slots=True)
class Row:
    name: str
    direction: str  # "encrypt" | "decrypt"
    ops: float | None  # None: skipped
    ratio: float | None = None
    n: int = 0
    note: str = ""
    best: float | None = None  # fastest repetition: the least disturbed by other load
    best_ratio: float | None = None


Factory = Callable[[ExitStack, str], Contender]


def ours(stack: ExitStack, tmp: str) -> Contender:
    km = nc.KeyManager.ephemeral()
    blob = km.encrypt(SECRET, AAD)
    return Contender(
        "nebula-credential KeyManager",
        km.encrypt,
        (SECRET, AAD),
        km.decrypt,
        (blob, AAD),
        "AES-256-GCM, envelope v1, context AAD",
    )


def bare(stack: ExitStack, tmp: str) -> Contender:
    aead = AESGCM(AESGCM.generate_key(256))

    def encrypt(data: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + aead.encrypt(nonce, data, aad)

    def decrypt(blob: bytes, aad: bytes) -> bytes:
        return aead.decrypt(blob[:12], blob[12:], aad)

    return Contender(
        BARE,
        encrypt,
        (SECRET, AAD),
        decrypt,
        (encrypt(SECRET, AAD), AAD),
        "nonce prepended / split off",
    )


def tink_aead(stack: ExitStack, tmp: str) -> Contender:
    import tink
    from tink import aead

    aead.register()
    primitive = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM).primitive(aead.Aead)
    blob = primitive.encrypt(SECRET, AAD)
    return Contender(
        "Google Tink AEAD AES256_GCM",
        primitive.encrypt,
        (SECRET, AAD),
        primitive.decrypt,
        (blob, AAD),
        "same AAD",
    )


def asherah_session(stack: ExitStack, tmp: str) -> Contender:
    import asherah

    factory = asherah.SessionFactory(
        {
            "ServiceName": "bench",
            "ProductID": "bench",
            "Metastore": "memory",
            "KMS": "static",
            "StaticMasterKeyHex": os.urandom(32).hex(),
            "EnableSessionCaching": True,
        }
    )
    stack.callback(factory.close)
    session = factory.get_session(CRED_ID)
    stack.callback(session.close)
    blob = session.encrypt_bytes(SECRET)
    return Contender(
        "Asherah (memory metastore, static KMS)",
        session.encrypt_bytes,
        (SECRET,),
        session.decrypt_bytes,
        (blob,),
        "no AAD; partition = credential id",
    )


def multifernet(stack: ExitStack, tmp: str) -> Contender:
    mf = MultiFernet([Fernet(Fernet.generate_key()), Fernet(Fernet.generate_key())])
    return Contender(
        "cryptography MultiFernet (2 keys)",
        mf.encrypt,
        (SECRET,),
        mf.decrypt,
        (mf.encrypt(SECRET),),
        "AES-128-CBC + HMAC, no AAD",
    )


def _esdk(cached: bool) -> Factory:
    def build(stack: ExitStack, tmp: str) -> Contender:
        import aws_encryption_sdk
        from aws_encryption_sdk.identifiers import (
            Algorithm,
            CommitmentPolicy,
            EncryptionKeyType,
            WrappingAlgorithm,
        )
        from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
        from aws_encryption_sdk.key_providers.raw import RawMasterKey

        key = RawMasterKey(
            provider_id="bench",
            key_id=b"wrapping-key",
            wrapping_key=WrappingKey(
                wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
                wrapping_key=os.urandom(32),
                wrapping_key_type=EncryptionKeyType.SYMMETRIC,
            ),
        )
        client = aws_encryption_sdk.EncryptionSDKClient(
            commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
        )
        source: dict[str, Any] = {"key_provider": key}
        if cached:
            source = {
                "materials_manager": aws_encryption_sdk.CachingCryptoMaterialsManager(
                    master_key_provider=key,
                    cache=aws_encryption_sdk.LocalCryptoMaterialsCache(100),
                    max_age=600.0,
                    max_messages_encrypted=2**32,
                )
            }
        alg = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY

        def encrypt(data: bytes) -> bytes:
            ct, _ = client.encrypt(
                source=data, encryption_context=ENC_CONTEXT, algorithm=alg, **source
            )
            return bytes(ct)

        def decrypt(blob: bytes) -> bytes:
            pt, _ = client.decrypt(source=blob, **source)
            return bytes(pt)

        name = "AWS Encryption SDK (raw AES key" + (", caching CMM)" if cached else ")")
        return Contender(
            name,
            encrypt,
            (SECRET,),
            decrypt,
            (encrypt(SECRET),),
            "committing suite, unsigned; encryption context",
        )

    return build


def vault_sqlite(stack: ExitStack, tmp: str) -> Contender:
    vault = nc.open(
        f"sqlite:///{os.path.join(tmp, 'hot.db')}",
        create=True,
        provider=LocalKeyProvider.ephemeral(),
    )
    stack.callback(vault.close)
    value = SECRET.hex()[:250]
    vault.put(CRED_ID, value, scope=SCOPE)
    return Contender(
        "nebula-credential vault.put / vault.get (SQLite)",
        vault.put,
        (CRED_ID, value),
        vault.get,
        (CRED_ID,),
        "one transaction per call, WAL, synchronous=NORMAL",
    )


#: (name shown if skipped, factory, pip distribution it needs or None)
CONTENDERS: list[tuple[str, Factory, str | None]] = [
    ("nebula-credential KeyManager", ours, None),
    (BARE, bare, None),
    ("Google Tink AEAD AES256_GCM", tink_aead, "tink"),
    ("Asherah (memory metastore, static KMS)", asherah_session, "asherah"),
    ("cryptography MultiFernet (2 keys)", multifernet, None),
    ("AWS Encryption SDK (raw AES key)", _esdk(False), "aws-encryption-sdk"),
    ("AWS Encryption SDK (raw AES key, caching CMM)", _esdk(True), "aws-encryption-sdk"),
    ("nebula-credential vault.put / vault.get (SQLite)", vault_sqlite, None),
]


@contextmanager
def contenders() -> Iterator[tuple[list[Contender], list[Row]]]:
    """Build every contender; the ones whose library is missing come back as skipped rows."""
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="nc-bench-") as tmp:
        built: list[Contender] = []
        skipped: list[Row] = []
        for name, factory, dist in CONTENDERS:
            try:
                built.append(factory(stack, tmp))
            except ImportError as exc:
                reason = f"skipped: {dist} not installed ({exc}); `pip install .[bench]`"
                skipped += [Row(name, d, None, note=reason) for d in ("encrypt", "decrypt")]
        yield built, skipped


def run(reps: int = 7, target_seconds: float = 0.2, n_max: int = 200_000) -> list[Row]:
    """Median ops/s per contender and direction, with ratios to the bare AESGCM call."""
    with contenders() as (built, skipped):
        cases: list[tuple[Call, tuple[Any, ...], int]] = []
        labels: list[tuple[Contender, str]] = []
        for c in built:
            for direction, call, args in (
                ("encrypt", c.encrypt, c.enc_args),
                ("decrypt", c.decrypt, c.dec_args),
            ):
                call(*args)  # warm caches (key loading, session, materials)
                cases.append((call, args, calibrate(call, args, target_seconds, n_max)))
                labels.append((c, direction))
        samples = interleaved_samples(cases, reps)
    rows = [
        Row(c.name, d, statistics.median(s), n=case[2], note=c.note, best=max(s))
        for (c, d), s, case in zip(labels, samples, cases)
    ]
    base = {r.direction: r for r in rows if r.name == BARE}
    for r in rows:
        b = base.get(r.direction)
        if b is not None and r.ops and b.ops and r.best and b.best:
            r.ratio, r.best_ratio = r.ops / b.ops, r.best / b.best
    return rows + skipped
