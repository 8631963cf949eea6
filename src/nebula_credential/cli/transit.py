"""transit rewrap-file: move a file of stored Transit ciphertexts to the key's latest version."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from ..exceptions import ConfigError, NebulaCredentialError
from ..transit import DEFAULT_MOUNT, SUPPORTED_TYPES, Transit, b64decode
from ..transit.asym import SIGN_HASHES, SignOptions
from ..transit.requests import read_key
from ..transit.wire import version_of
from ._common import AppContext, emit, pass_app
from ._progress import PlainProgress


@click.group()
def transit() -> None:
    """Transit keys (encryption as a service) without the HTTP server."""


def _line_item(line: str, where: str) -> tuple[Any, str]:
    """A line is a JSON string (the ciphertext) or an object with a ``ciphertext`` field."""
    try:
        item = json.loads(line)
    except ValueError:
        raise ConfigError(where, "not valid JSON") from None
    if isinstance(item, str):
        return item, item
    if isinstance(item, dict) and isinstance(item.get("ciphertext"), str):
        return item, item["ciphertext"]
    raise ConfigError(where, 'expected a JSON string or an object with "ciphertext"')


@transit.command(name="rewrap-file")
@click.argument("src", metavar="IN", type=click.Path(dir_okay=False, exists=True))
@click.argument("dst", metavar="OUT", type=click.Path(dir_okay=False))
@click.option("--key", "key_name", required=True, help="Transit key name.")
@click.option("--mount", default=DEFAULT_MOUNT, show_default=True, help="Transit mount the key belongs to.")
@click.option("--context", help="Derivation context (base64) for every line without its own.")
@click.option("--associated-data", "associated_data", help="Associated data (base64) for every line without its own.")
@pass_app
def rewrap_file(app: AppContext, src: str, dst: str, key_name: str, mount: str, context: str | None,
                associated_data: str | None) -> None:
    """Rewrap every ciphertext in IN (JSON lines) under the key's active version into OUT.

    A line is a JSON string ``"vault:v1:..."`` or an object whose
    ``ciphertext`` is replaced (its ``context`` and ``associated_data``, base64,
    are used for that line).  Lines that fail are copied unchanged and named
    by number on stderr; the command then exits 1.  OUT is written to a
    temporary file beside it and renamed at the end, so it is never half-written.
    """
    transit_ = Transit(app.vault(), mount)
    default_ctx = b64decode(context, "--context")
    default_ad = b64decode(associated_data, "--associated-data")
    with open(src, encoding="utf-8") as fh:
        total = sum(1 for line in fh if line.strip())
    progress = PlainProgress(sys.stderr, {key_name: total}, interval=2.0)
    out_dir = Path(dst).resolve().parent
    done = changed = 0
    failed: list[int] = []
    fd, tmp = tempfile.mkstemp(prefix=".rewrap-", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out, open(src, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                item, ciphertext = _line_item(line, f"{src}:{n}")
                try:
                    ctx = b64decode(item.get("context"), "context") if isinstance(item, dict) else None
                    ad = b64decode(item.get("associated_data"), "associated_data") if isinstance(item, dict) else None
                    new = transit_.rewrap(key_name, ciphertext, context=ctx or default_ctx,
                                          associated_data=ad or default_ad)
                except NebulaCredentialError as exc:
                    failed.append(n)
                    click.echo(f"{src}:{n}: {exc}", err=True)
                    new = ciphertext
                changed += new != ciphertext
                if isinstance(item, dict):
                    item["ciphertext"] = new
                    out.write(json.dumps(item, separators=(",", ":")) + "\n")
                else:
                    out.write(json.dumps(new) + "\n")
                done += 1
                progress(key_name, 1)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    progress.finish(key_name)
    transit_.audit("transit.rewrap_file", transit_.keyring_of(key_name), None,
                   lines=done, rewrapped=changed, failed=len(failed))
    emit(app, {"key": key_name, "lines": done, "rewrapped": changed, "failed": len(failed)},
         lambda: click.echo(f"rewrapped {changed} of {done} line(s) into {dst} ({len(failed)} failed)"))
    if failed:
        raise click.ClickException(
            f"{len(failed)} of {done} line(s) could not be rewrapped and were copied unchanged "
            f"(first: line {failed[0]})")


# ---- keys and signatures ---------------------------------------------------------------------------
@transit.group(name="keys")
def transit_keys() -> None:
    """Transit keys of a mount: create one of any Vault key type, show it."""


@transit_keys.command(name="create")
@click.argument("name")
@click.option("--type", "key_type", default="aes256-gcm96", show_default=True, type=click.Choice(SUPPORTED_TYPES),
              help="Vault's key type.")
@click.option("--mount", default=DEFAULT_MOUNT, show_default=True, help="Transit mount.")
@click.option("--derived", is_flag=True, help="Per-context keys (AEAD types and ed25519).")
@click.option("--exportable", is_flag=True, help="Allow export of the private key material (cannot be undone).")
@click.option("--allow-plaintext-backup", is_flag=True, help="Allow backup/:name (cannot be undone).")
@click.option("--key-size", type=int, default=0, help="hmac keys: the key length in bytes (32..512).")
@pass_app
def keys_create(app: AppContext, name: str, key_type: str, mount: str, derived: bool, exportable: bool,
                allow_plaintext_backup: bool, key_size: int) -> None:
    """Create Transit key NAME (an existing key is left as it is, as Vault does)."""
    t = Transit(app.vault(), mount)
    t.create_key(name, type=key_type, derived=derived, exportable=exportable,
                 allow_plaintext_backup=allow_plaintext_backup, key_size=key_size)
    _show(app, t, name)


@transit_keys.command(name="show")
@click.argument("name")
@click.option("--mount", default=DEFAULT_MOUNT, show_default=True, help="Transit mount.")
@pass_app
def keys_show(app: AppContext, name: str, mount: str) -> None:
    """Show Transit key NAME: its type, versions and, for signing keys, each version's public key."""
    _show(app, Transit(app.vault(), mount), name)


def _show(app: AppContext, t: Transit, name: str) -> None:
    data = read_key(t, name)

    def human() -> None:
        click.echo(f"{data['name']}: {data['type']}, latest version {data['latest_version']}, "
                   f"keyring {data['nebula']['keyring']}")
        for version, entry in sorted(data.get("keys", {}).items(), key=lambda kv: int(kv[0])):
            if isinstance(entry, dict):
                click.echo(f"v{version} public key ({entry['name']}):\n{entry['public_key'].rstrip()}")

    emit(app, data, human)


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def _sign_options(hash_algorithm: str, prehashed: bool, signature_algorithm: str, marshaling: str,
                  salt_length: str) -> SignOptions:
    salt: str | int = int(salt_length) if salt_length.isdigit() else salt_length
    return SignOptions(hash_algorithm, prehashed=prehashed, signature_algorithm=signature_algorithm,
                       marshaling=marshaling, salt_length=salt)


def _signing_options(fn: Any) -> Any:
    for option in reversed((
        click.option("--key", "key_name", required=True, help="Transit key name."),
        click.option("--mount", default=DEFAULT_MOUNT, show_default=True, help="Transit mount."),
        click.option("--hash-algorithm", default="sha2-256", show_default=True, type=click.Choice(list(SIGN_HASHES)),
                     help="Digest for ECDSA and RSA (ed25519 signs the message itself)."),
        click.option("--prehashed", is_flag=True, help="The input is already the digest."),
        click.option("--signature-algorithm", default="pss", show_default=True, type=click.Choice(["pss", "pkcs1v15"]),
                     help="RSA padding."),
        click.option("--marshaling-algorithm", "marshaling", default="asn1", show_default=True,
                     type=click.Choice(["asn1", "jws"]), help="ECDSA signature encoding."),
        click.option("--salt-length", default="auto", show_default=True, help="RSA-PSS: auto, hash or a number."),
        click.option("--context", help="Derivation context (base64) of a derived ed25519 key."),
    )):
        fn = option(fn)
    return fn


@transit.command(name="sign")
@click.argument("file", default="-", type=click.Path(dir_okay=False, allow_dash=True))
@_signing_options
@click.option("--key-version", type=int, default=0, help="Sign with this version (default: the active one).")
@pass_app
def sign_cmd(app: AppContext, file: str, key_name: str, mount: str, hash_algorithm: str, prehashed: bool,
             signature_algorithm: str, marshaling: str, salt_length: str, context: str | None,
             key_version: int) -> None:
    """Sign FILE (or stdin, ``-``) with Transit key --key; prints ``vault:v<N>:<signature>``."""
    t = Transit(app.vault(), mount)
    opts = _sign_options(hash_algorithm, prehashed, signature_algorithm, marshaling, salt_length)
    signature = t.sign(key_name, _read_input(file), opts, context=b64decode(context, "--context"),
                       key_version=key_version)
    t.audit("transit.sign", t.keyring_of(key_name), version_of(signature), source="cli")
    emit(app, {"key": key_name, "signature": signature, "key_version": version_of(signature)},
         lambda: click.echo(signature))


@transit.command(name="verify")
@click.argument("file", default="-", type=click.Path(dir_okay=False, allow_dash=True))
@_signing_options
@click.option("--signature", help="The ``vault:v<N>:...`` signature.")
@click.option("--signature-file", type=click.Path(dir_okay=False, exists=True), help="A file holding the signature.")
@pass_app
def verify_cmd(app: AppContext, file: str, key_name: str, mount: str, hash_algorithm: str, prehashed: bool,
               signature_algorithm: str, marshaling: str, salt_length: str, context: str | None,
               signature: str | None, signature_file: str | None) -> None:
    """Verify FILE (or stdin, ``-``) against a signature of Transit key --key; exits 1 when it is not valid."""
    if (signature is None) == (signature_file is None):
        raise click.UsageError("give one of --signature or --signature-file")
    text = signature if signature is not None else Path(str(signature_file)).read_text(encoding="utf-8").strip()
    t = Transit(app.vault(), mount)
    opts = _sign_options(hash_algorithm, prehashed, signature_algorithm, marshaling, salt_length)
    valid = t.verify(key_name, _read_input(file), text, opts, context=b64decode(context, "--context"))
    emit(app, {"key": key_name, "valid": valid}, lambda: click.echo("valid" if valid else "NOT valid"))
    if not valid:
        raise SystemExit(1)
