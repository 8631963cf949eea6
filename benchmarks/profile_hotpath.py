"""Where the time of ``KeyManager.encrypt``/``decrypt`` goes, step by step.

Each step of the hot path is timed on its own (median of interleaved
repetitions, nanoseconds per call), beside the whole call and the bare
AESGCM call, so a gap to the bare call can be attributed to a line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import nebula_credential as nc
from nebula_credential import _nonce

from ._timing import interleaved_medians
from .hotpath import AAD, SECRET


@dataclass(slots=True)
class Step:
    direction: str
    step: str
    ns: float


def run(n: int = 100_000, reps: int = 7) -> list[Step]:
    km = nc.KeyManager.ephemeral()
    blob = km.encrypt(SECRET, AAD)
    key = km.current_key()
    aead = key._aead
    prefix = key._prefix
    nonce = os.urandom(12)
    header = prefix + nonce
    ct = aead.encrypt(nonce, SECRET, header + AAD)
    decrypts = km._decrypts
    bare = AESGCM(AESGCM.generate_key(256))
    bare_blob = nonce + bare.encrypt(nonce, SECRET, AAD)

    def bare_encrypt(data: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + bare.encrypt(nonce, data, aad)

    def bare_decrypt(b: bytes, aad: bytes) -> bytes:
        return bare.decrypt(b[:12], b[12:], aad)

    def counter_check() -> bool:
        return next(key._count) >= key._limit

    def prefix_check() -> bool:
        return len(blob) < 36 or blob[:4] != b"NC\x01\x01"

    steps: list[tuple[str, str, Callable[..., Any], tuple[Any, ...]]] = [
        ("encrypt", "whole KeyManager.encrypt", km.encrypt, (SECRET, AAD)),
        ("encrypt", "whole bare AESGCM (+ nonce prepend)", bare_encrypt, (SECRET, AAD)),
        ("encrypt", "time.monotonic() (refresh check)", time.monotonic, ()),
        ("encrypt", "next(counter) >= limit (usage count)", counter_check, ()),
        ("encrypt", "os.urandom(12) (what a nonce cost before)", os.urandom, (12,)),
        ("encrypt", "_nonce.nonce() (buffered CSPRNG, used now)", _nonce.nonce, ()),
        ("encrypt", "prefix + nonce (header)", bytes.__add__, (prefix, nonce)),
        ("encrypt", "header + aad", bytes.__add__, (header, AAD)),
        ("encrypt", "AESGCM.encrypt (256 B)", aead.encrypt, (nonce, SECRET, header + AAD)),
        ("encrypt", "header + ciphertext", bytes.__add__, (header, ct)),
        ("decrypt", "whole KeyManager.decrypt", km.decrypt, (blob, AAD)),
        ("decrypt", "whole bare AESGCM (+ nonce split)", bare_decrypt, (bare_blob, AAD)),
        ("decrypt", "time.monotonic() (refresh check)", time.monotonic, ()),
        ("decrypt", "decrypts[blob[:8]] (key lookup)", lambda: decrypts[blob[:8]], ()),
        ("decrypt", "length + magic check", prefix_check, ()),
        (
            "decrypt",
            "AESGCM.decrypt (256 B)",
            aead.decrypt,
            (blob[8:20], blob[20:], blob[:20] + AAD),
        ),
        (
            "decrypt",
            "slices blob[8:20], blob[20:], blob[:20] + aad",
            lambda: (blob[8:20], blob[20:], blob[:20] + AAD),
            (),
        ),
        ("decrypt", "empty Python call (loop + call overhead)", lambda: None, ()),
    ]
    medians = interleaved_medians([(call, args, n) for _, _, call, args in steps], reps)
    return [Step(d, name, 1e9 / ops) for (d, name, _, _), ops in zip(steps, medians)]
