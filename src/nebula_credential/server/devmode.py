"""``serve --dev``: a throwaway server for trying the API in one command, as ``bao server -dev``.

Everything lives in a fresh temp folder (mode 0700): a SQLite store, its
local key file and a config naming both, so nothing the user has configured
(another store, another root of trust) is read or touched.  The folder is
removed when the server stops.  The server is the ordinary one: plain HTTP
on loopback, KV v2 at ``secret/`` and Transit at ``transit/`` (the default
mounts), and a root token created as ``token create --policy root`` does.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEV_LISTEN = "127.0.0.1:8200"
#: The local provider's key file variable (providers.local.KEY_FILE_ENV): it would win over the
#: dev config's key_file, so it is pointed at the dev key while the server runs.
_KEY_FILE_ENV = "NEBULA_CREDENTIAL_MASTER_KEY_FILE"


@dataclass(frozen=True)
class DevStore:
    folder: Path
    url: str
    config_path: Path


@contextmanager
def dev_store() -> Iterator[DevStore]:
    """A temp folder with a config for a new SQLite store and local key file; removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="nebula-credential-dev-"))
    saved = os.environ.get(_KEY_FILE_ENV)
    try:
        key = folder / "master.key"
        url = f"sqlite:///{folder / 'dev.db'}"
        config = folder / "config.toml"
        # JSON strings are valid TOML basic strings: paths with quotes or backslashes stay intact
        config.write_text(f"[store]\nurl = {json.dumps(url)}\n\n[provider]\ntype = \"local\"\n"
                          f"key_file = {json.dumps(str(key))}\n", encoding="utf-8")
        os.environ[_KEY_FILE_ENV] = str(key)
        yield DevStore(folder, url, config)
    finally:
        if saved is None:
            os.environ.pop(_KEY_FILE_ENV, None)
        else:
            os.environ[_KEY_FILE_ENV] = saved
        shutil.rmtree(folder, ignore_errors=True)


def banner(listen: str, root_token: str, folder: Path) -> str:
    """What ``bao server -dev`` prints, in our words: where to point clients, the root token."""
    return (
        "WARNING! dev mode is enabled! The store is a throwaway SQLite file in\n"
        f"{folder}, removed when the server stops, and the API is plain HTTP.\n\n"
        "You may need to set the following environment variables:\n\n"
        f"    $ export VAULT_ADDR='http://{listen}'\n\n"
        "The root token is displayed below; use it to authenticate (VAULT_TOKEN):\n\n"
        f"Root Token: {root_token}\n\n"
        "KV v2 is mounted at secret/, Transit at transit/.\n\n"
        "Development mode should NOT be used in production installations!\n"
    )
