"""Issue 13 section 5: input never becomes markup, code or a crash."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential import logredact
from nebula_credential.names import check_credential_id, check_keyring, check_scope, printable

from .helpers import cli_env, dump, run_cli, store_runner

ROOT = Path(__file__).resolve().parents[1]
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    return store_runner(tmp_path)


def _one_error(res, field: str, code: int = 1) -> None:  # type: ignore[no-untyped-def]
    assert res.returncode == code, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ") and field in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


# ---- markup is printed literally ------------------------------------------------------
def test_ids_that_look_like_markup_are_stored_and_printed_literally(store) -> None:  # type: ignore[no-untyped-def]
    for cid in ("[/]", "[red]x[/red]", "[bold]"):
        assert store("put", cid, input="1").stdout == f"stored {cid} (scope default, revision 1)\n"
    listed = [line.split("\t")[0] for line in store("list").stdout.splitlines()]
    assert listed == ["[/]", "[bold]", "[red]x[/red]"]
    assert json.loads(store("--json", "get", "[/]").stdout)["id"] == "[/]"
    store("delete", "[red]x[/red]")
    store("keys", "list")
    store("status")


def test_stored_text_written_before_validation_is_escaped_on_output() -> None:
    assert printable("a\x1b[2Jb\nc") == "a\\x1b[2Jb\\nc"
    assert printable("plain [/] text") == "plain [/] text"


# ---- names from a safe set, ids printable and bounded --------------------------------------
@pytest.mark.parametrize(("args", "field"), [
    (("put", "a\x07b"), "id"),
    (("put", "a\u202eb"), "id"),
    (("put", "x" * 1025), "id"),
    (("put", "ok", "--scope", "prod uction"), "scope"),
    (("put", "ok", "--scope", "[red]"), "scope"),
    (("--keyring", "../etc", "put", "ok"), "--keyring"),
    (("--keyring", "a" * 65, "keys", "list"), "--keyring"),
])
def test_bad_ids_scopes_and_keyrings_are_one_error_line_and_write_nothing(store, tmp_path: Path, args, field) -> None:  # type: ignore[no-untyped-def]
    rows = dump(tmp_path / "c.db")
    _one_error(store(*args, input="1", ok=False), field)
    assert dump(tmp_path / "c.db") == rows


def test_the_validation_module_is_what_the_library_uses(tmp_path: Path, key_file: Path) -> None:
    with nc.open(f"sqlite:///{tmp_path / 'l.db'}", create=True) as v:
        with pytest.raises(nc.InvalidInputError, match="id"):
            v.put("a\x00b", 1)
        with pytest.raises(nc.InvalidInputError, match="scope"):
            v.put("a", 1, scope="a/b")
        with pytest.raises(ValueError, match="keyring"):  # InvalidInputError is a ValueError too
            v.keyring("bad name").keys.initialize()  # a new keyring; names already stored are read as they are
        with pytest.raises(nc.InvalidInputError):
            v.put_many([(7, 1, "default", None)])  # type: ignore[list-item]
    assert check_credential_id("github/acme:prod [x]") and check_scope("prod-eu_1.a") and check_keyring("t1")


@pytest.mark.parametrize("name", ["transit/app", "transit/app#2", "team/transit/a.b-c", "t" * 64])
def test_engine_keyrings_are_names_too(name: str) -> None:
    """A Transit key's keyring (MOUNT/NAME, #N after a re-create) passes the one keyring rule."""
    assert check_keyring(name) == name


@pytest.mark.parametrize("name", ["../etc", "a" * 65, "transit/", "/x", "x/../y", "transit//a", "transit/app#0",
                                  "transit/app#", "t1\n", "transit/app\n", "a b"])
def test_keyring_rule_refuses(name: str) -> None:
    with pytest.raises(nc.InvalidInputError, match="keyring"):
        check_keyring(name)


# ---- every bad value is one error line naming the field -------------------------------------------
@pytest.mark.parametrize(("toml", "field"), [
    ('[rotation]\ninterval = "99999999999d"\n', "rotation.interval"),
    ('[rotation]\ninterval = "inf"\n', "rotation.interval"),
    ("[keys]\ngrace_period = nan\n", "keys.grace_period"),
    ("[keys]\ngrace_period = inf\n", "keys.grace_period"),
    ("[keys]\nmax_key_age = 99999999999999999\n", "keys.max_key_age"),
    ("[reencryption]\nrate_limit = nan\n", "reencryption.rate_limit"),
    ("[alerts]\naccess_error_ratio = inf\n", "alerts.access_error_ratio"),
    ("[reencryption]\nbatch_size = 99999999999999999999\n", "reencryption.batch_size"),
    ('[provider]\ntype = "local"\nkey_fiel = "x.key"\n', "provider.key_fiel"),
    ('[provider]\ntype = "aws-kms"\nendpoint = "http://x"\n', "provider.endpoint"),
])
def test_bad_config_values_name_the_field(store, tmp_path: Path, toml: str, field: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "bad.toml").write_text(toml)
    _one_error(store("--config", "bad.toml", "status", ok=False), field)


@pytest.mark.parametrize(("args", "field", "code"), [
    (("daemon", "--interval", "99999999999d"), "--interval", 1),
    (("daemon", "--interval", "inf"), "--interval", 1),
    (("audit", "list", "--since", "99999999999d"), "--since", 1),
    (("list", "--key-version", str(2**70)), "--key-version", 2),
    (("keys", "show", str(2**70)), "VERSION", 2),
])
def test_bad_flags_name_the_flag(store, args, field: str, code: int) -> None:  # type: ignore[no-untyped-def]
    _one_error(store(*args, ok=False), field, code)


def test_deeply_nested_json_is_refused_on_stdin_metadata_and_import(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _one_error(store("put", "a", input=DEEP, ok=False), "value")
    _one_error(store("put", "a", "--metadata", "[" * 100_000, input="1", ok=False), "--metadata")
    (tmp_path / "deep.jsonl").write_text('{"id": "a", "value": 1}\n' + '{"id": "b", "value": ' + DEEP + "}\n")
    _one_error(store("import", "deep.jsonl", ok=False), "deep.jsonl:2")
    assert store("list").stdout == ""


def test_nan_is_refused_in_values(store) -> None:  # type: ignore[no-untyped-def]
    _one_error(store("put", "a", input='{"rate": NaN}', ok=False), "NaN")
    _one_error(store("put", "a", input='{"rate": Infinity}', ok=False), "Infinity")


# ---- import: validate first, typed fields, resumable from stdin ------------------------------------------
@pytest.mark.parametrize(("line", "field"), [
    ({"id": 12, "value": 1}, "id"),
    ({"id": "a", "scope": 3, "value": 1}, "scope"),
    ({"id": "a", "value": 1, "metadata": ["x"]}, "metadata"),
    ({"id": "a", "value": 1, "metadata": "team"}, "metadata"),
])
def test_import_refuses_untyped_fields_before_writing_anything(store, tmp_path: Path, line, field) -> None:  # type: ignore[no-untyped-def]
    good = "".join(json.dumps({"id": f"g{i}", "value": i}) + "\n" for i in range(1500))
    (tmp_path / "in.jsonl").write_text(good + json.dumps(line) + "\n")
    rows = dump(tmp_path / "c.db")
    _one_error(store("import", "in.jsonl", ok=False), f"in.jsonl:1501: {field}")
    assert dump(tmp_path / "c.db") == rows


def test_import_refuses_an_id_twice_in_the_file(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "in.jsonl").write_text('{"id": "a", "value": 1}\n{"id": "a", "value": 2}\n')
    _one_error(store("import", "in.jsonl", ok=False), "in.jsonl:2")
    assert store("list").stdout == ""


def test_import_from_stdin_reports_committed_rows_and_resumes(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lines = [json.dumps({"id": f"r{i:03d}", "value": i}) for i in range(25)]
    lines[17] = '{"id": "r017", "value": NaN}'
    res = store("import", "-", "--batch-size", "5", input="\n".join(lines) + "\n", ok=False)
    _one_error(res, "-:18")
    assert "15 row(s) committed" in res.stderr and "--start-line 16" in res.stderr
    assert len(store("list").stdout.splitlines()) == 15
    lines[17] = '{"id": "r017", "value": 17}'
    resumed = json.loads(store("--json", "import", "-", "--start-line", "16", input="\n".join(lines) + "\n").stdout)
    assert resumed["created"] == 10 and len(store("list").stdout.splitlines()) == 25


# ---- init is all-or-nothing ---------------------------------------------------------------------
def test_a_failed_init_leaves_no_half_made_store(tmp_path: Path) -> None:
    res = run_cli("init", "--provider", "vault-transit", "--db", f"sqlite:///{tmp_path / 'n.db'}",
                  cwd=tmp_path, env=cli_env())
    _one_error(res, "provider")
    assert list(tmp_path.iterdir()) == []


# ---- log redaction covers handlers added later and child loggers -----------------------------------
def test_redaction_covers_handlers_added_after_install_and_child_loggers() -> None:
    logredact.install()
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Collect()
    for name in ("botocore.endpoint", "some.other.library"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        try:
            logger.debug("response: %s", '{"Plaintext": "c2VjcmV0LWtleS1tYXRlcmlhbA==", "KeyId": "k"}')
            logger.debug('header X-Vault-Token: "hvs.SECRETTOKEN123"')
        finally:
            logger.removeHandler(handler)
    assert len(records) == 4
    joined = "\n".join(records)
    assert "c2VjcmV0" not in joined and "hvs.SECRET" not in joined
    assert records[2].count("<redacted>") == 1 and records[3].count("<redacted>") == 1  # a logger nobody filters


# ---- small ones ---------------------------------------------------------------------------------
def test_dek_cache_ttl_zero_means_no_cache(tmp_path: Path, key_file: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    nc.open(url, create=True).close()
    cfg = nc.KeyManagementConfig.from_dict({"keys": {"dek_cache_ttl": "0s"}})
    with nc.open(url, config=cfg) as v:
        v.put("a", 1)
        before = v.provider.calls.get("unwrap", 0)
        for _ in range(3):
            assert v.get("a") == 1
        assert v.provider.calls["unwrap"] - before >= 3
    with nc.open(url) as v:  # default: one unwrap, then the cache
        v.get("a")
        before = v.provider.calls.get("unwrap", 0)
        for _ in range(3):
            v.get("a")
        assert v.provider.calls.get("unwrap", 0) == before


def test_readme_tour_never_puts_a_secret_on_the_command_line() -> None:
    text = (ROOT / "README.md").read_text()
    commands = [line for line in text.splitlines() if re.match(r"\s*(\$ )?nebula-credential .*\bput\b", line)]
    assert commands and not [c for c in commands if "--value" in c]
    assert "process list" in text  # --value is documented as visible to other users


def test_the_provider_settings_table_covers_what_each_provider_reads() -> None:
    """Unknown [provider] keys are refused, so the table must list every key a backend reads."""
    from nebula_credential.config import PROVIDER_SETTINGS
    from nebula_credential.providers import PROVIDERS

    for ptype, target in PROVIDERS.items():
        module = target.partition(":")[0].rsplit(".", 1)[1]
        source = (ROOT / "src" / "nebula_credential" / "providers" / f"{module}.py").read_text()
        read = set(re.findall(r'settings(?:\.get\(|\[|, )"([a-z_]+)"', source))
        secrets = {name for name in read if f"{name}_file" in PROVIDER_SETTINGS[ptype]}  # via secret_from
        assert read - secrets <= set(PROVIDER_SETTINGS[ptype]), ptype


def test_ids_no_store_can_hold_are_typed_errors_on_read_and_delete(vault: nc.Vault) -> None:
    """A lone surrogate or a non-string id used to reach the driver (UnicodeEncodeError, untyped);
    reads stay lenient otherwise: a row written before validation existed is still found."""
    import asyncio

    from nebula_credential.exceptions import InvalidInputError

    vault.put("ok", [1])
    for bad in ("\ud800", "a\udfffb", 42):
        with pytest.raises(InvalidInputError, match="credential id"):
            vault.get(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="credential id"):
            vault.delete(bad)  # type: ignore[arg-type]

    async def through_the_async_api() -> list[object]:
        async with await nc.aopen(vault.store.url) as av:
            return await asyncio.gather(av.get("\ud800"), av.get("ok"), return_exceptions=True)

    bad_one, good = asyncio.run(through_the_async_api())
    assert isinstance(bad_one, InvalidInputError) and good == [1]


# ---- every name rule lives in names.py and is a fullmatch -------------------------------------------
def test_mount_rule_is_a_fullmatch() -> None:
    """A ``[server]`` mount with a trailing newline was accepted by ``match`` with ``$``."""
    for key in ("kv_mounts", "transit_mounts"):
        value: object = {"abc\n": "default"} if key == "kv_mounts" else ["abc\n"]
        with pytest.raises(nc.ConfigError, match=f"server.{key}"):
            nc.KeyManagementConfig.from_dict({"server": {key: value}})
    assert nc.KeyManagementConfig.from_dict({"server": {"transit_mounts": ["t-1"]}}).server.transit_mounts == ("t-1",)


@pytest.mark.parametrize("name", ["app\n", "", "-a", "a" * 129, "a/b"])
def test_transit_key_names_follow_names_py(name: str) -> None:
    from nebula_credential.names import is_transit_key_name
    from nebula_credential.transit import Transit, TransitInputError

    assert not is_transit_key_name(name)
    with pytest.raises(TransitInputError, match="invalid key name"):
        Transit.check_name(None, name)  # type: ignore[arg-type]
    assert is_transit_key_name("a" * 128)


def test_keyring_length_bound_is_a_typed_error() -> None:
    """The third keyring rule (the bound on names a KeyManager opens) raises the typed error."""
    for bad in ("", "k" * 201):
        with pytest.raises(nc.InvalidInputError, match="keyring"):
            nc.KeyManager.ephemeral(keyring=bad)
