"""secretstores.local.encrypted and ``pillion secrets``: the file is never plaintext, a wrong key
or a tampered file stops start-up with one clear line, and key rotation is crash-safe."""

from __future__ import annotations

import base64
import json
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from components.secretstores.local_encrypted import key_text, new_key, write_store
from tests.secrets_support import SecretRef, component, error_line, secrets_cli, sidecar_to_exit
from tests.support import ROOT, start_sidecar

PASSWORD = "s3cret-redis-password-4e1b"
TOKEN = "api-token-from-stdin-88d0"


def _key(tmp_path: Path, name: str = "key") -> Path:
    path = tmp_path / name
    result = secrets_cli("keygen", "--key-file", path)
    assert result.returncode == 0, result.stderr
    return path


def _store(tmp_path: Path, key_file: Path) -> Path:
    store = tmp_path / "secrets.enc"
    for args, stdin in [
        (["set", "redis", PASSWORD, "--field", "password"], None),
        (["set", "redis", "default", "--field", "user"], None),
        (["set", "api"], TOKEN + "\n"),
    ]:
        result = secrets_cli(*args, "--file", store, "--key-file", key_file, stdin=stdin)
        assert result.returncode == 0, result.stderr
    return store


def _store_in_process(tmp_path: Path, key_name: str = "key") -> tuple[Path, Path]:
    """The same file the CLI writes, made without a CLI process (for tests about reading it)."""
    key = new_key()
    key_file = tmp_path / key_name
    key_file.write_text(key_text(key) + "\n")
    key_file.chmod(0o600)
    store = tmp_path / "secrets.enc"
    write_store(store, {"redis": {"password": PASSWORD, "user": "default"}, "api": {"api": TOKEN}}, key)
    return store, key_file


def test_cli_keeps_secrets_encrypted_on_disk(tmp_path: Path) -> None:
    key_file = _key(tmp_path)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key_file.read_text().strip())) == 32
    again = secrets_cli("keygen", "--key-file", key_file)
    assert again.returncode == 1 and "already exists" in again.stderr

    store = _store(tmp_path, key_file)
    raw = store.read_bytes()
    assert PASSWORD.encode() not in raw and TOKEN.encode() not in raw and b"redis" not in raw
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    document = json.loads(raw)
    assert document["format"] == "pillion-encrypted-secrets"
    assert (document["version"], document["cipher"]) == (1, "AES-256-GCM")
    assert len(base64.b64decode(document["nonce"])) == 12

    keyed = ["--file", str(store), "--key-file", str(key_file)]
    assert secrets_cli("list", *keyed).stdout == "api\nredis\n"
    assert json.loads(secrets_cli("get", "redis", *keyed).stdout) == {"password": PASSWORD, "user": "default"}
    assert json.loads(secrets_cli("get", "api", *keyed).stdout) == {"api": TOKEN}

    assert secrets_cli("delete", "redis", "--field", "user", *keyed).returncode == 0
    assert json.loads(secrets_cli("get", "redis", *keyed).stdout) == {"password": PASSWORD}
    assert secrets_cli("delete", "api", *keyed).returncode == 0
    assert secrets_cli("list", *keyed).stdout == "redis\n"
    missing = secrets_cli("get", "api", *keyed)
    assert missing.returncode == 1 and "no secret 'api'" in missing.stderr

    from_env = secrets_cli("list", "--file", store, env={"PILLION_SECRETS_KEY": key_file.read_text()})
    assert from_env.stdout == "redis\n"


def test_sidecar_serves_the_encrypted_store_with_a_key_file_or_variable(tmp_path: Path) -> None:
    store, key_file = _store_in_process(tmp_path)
    key = key_file.read_text().strip()
    resources = {
        "file.yaml": component(
            "enc", "secretstores.local.encrypted", {"secretsFile": str(store), "keyFile": str(key_file)}
        ),
        "env.yaml": component(
            "encenv", "secretstores.local.encrypted", {"secretsFile": str(store), "keyEnv": "MY_SECRETS_KEY"}
        ),
        "default.yaml": component("encdefault", "secretstores.local.encrypted", {"secretsFile": str(store)}),
        # A component reading its settings from the encrypted store.
        "state.yaml": component(
            "statestore", "state.in-memory", {"keyPrefix": SecretRef("api")}, secret_store="enc"
        ),
    }
    env = {"MY_SECRETS_KEY": key, "PILLION_SECRETS_KEY": key}
    sidecar = start_sidecar(tmp_path, resources=resources, env=env)
    try:
        with sidecar.client() as client:
            for name in ("enc", "encenv", "encdefault"):
                assert client.get(f"/v1.0/secrets/{name}/redis").json() == {
                    "password": PASSWORD,
                    "user": "default",
                }
            assert client.get("/v1.0/secrets/enc/bulk").json() == {
                "api": {"api": TOKEN},
                "redis": {"password": PASSWORD, "user": "default"},
            }
            assert client.get("/v1.0/secrets/enc/nope").json()["errorCode"] == "ERR_SECRET_GET"
            components = {c["name"]: c for c in client.get("/v1.0/metadata").json()["components"]}
            assert components["enc"]["capabilities"] == ["MULTIPLE_KEY_VALUES_PER_SECRET"]
            assert client.post("/v1.0/state/statestore", json=[{"key": "k", "value": 1}]).status_code == 204
    finally:
        sidecar.stop()


def _tamper_ciphertext(document: dict[str, object]) -> None:
    sealed = bytearray(base64.b64decode(str(document["ciphertext"])))
    sealed[5] ^= 0x01
    document["ciphertext"] = base64.b64encode(bytes(sealed)).decode()


def _tamper_nonce(document: dict[str, object]) -> None:
    document["nonce"] = base64.b64encode(b"\0" * 12).decode()


def _tamper_version(document: dict[str, object]) -> None:
    document["version"] = 2


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (_tamper_ciphertext, "is damaged or was tampered with: its content fails authentication"),
        (_tamper_nonce, "is damaged or was tampered with"),
        (_tamper_version, "unsupported version 2"),
    ],
)
def test_a_tampered_file_is_a_start_up_error(tmp_path: Path, tamper: object, problem: str) -> None:
    store, key_file = _store_in_process(tmp_path)
    document = json.loads(store.read_text())
    tamper(document)  # type: ignore[operator]
    store.write_text(json.dumps(document))
    resources = {
        "enc.yaml": component(
            "enc", "secretstores.local.encrypted", {"secretsFile": str(store), "keyFile": str(key_file)}
        )
    }
    line = error_line(sidecar_to_exit(tmp_path, resources))
    assert "enc.yaml: component 'enc': init failed: " in line and problem in line
    cli = secrets_cli("list", "--file", store, "--key-file", key_file)
    assert cli.returncode == 1 and problem in cli.stderr and "Traceback" not in cli.stderr


def test_a_truncated_file_is_a_start_up_error(tmp_path: Path) -> None:
    store, key_file = _store_in_process(tmp_path)
    store.write_bytes(store.read_bytes()[:40])
    resources = {
        "enc.yaml": component(
            "enc", "secretstores.local.encrypted", {"secretsFile": str(store), "keyFile": str(key_file)}
        )
    }
    line = error_line(sidecar_to_exit(tmp_path, resources))
    assert f"{store} is not a readable encrypted secrets file" in line


@pytest.mark.parametrize(
    ("metadata", "env", "problem"),
    [
        ({"keyFile": "other-key"}, {}, "was encrypted with another key (key id "),
        ({}, {"PILLION_SECRETS_KEY": ""}, "environment variable PILLION_SECRETS_KEY is not set"),
        (
            {"keyEnv": "MY_KEY"},
            {"MY_KEY": "zz-not-a-key"},
            "the key in environment variable MY_KEY is not 64 hex",
        ),
        ({"keyFile": "missing-key"}, {}, "cannot read key file"),
        (
            {"keyFile": "key", "keyEnv": "MY_KEY"},
            {},
            "metadata field 'keyFile': give keyFile or keyEnv, not both",
        ),
    ],
)
def test_key_problems_are_one_clear_line(
    tmp_path: Path, metadata: dict[str, str], env: dict[str, str], problem: str
) -> None:
    _store_in_process(tmp_path, "other-key")
    store, key_file = _store_in_process(tmp_path)
    resources = {
        "enc.yaml": component(
            "enc",
            "secretstores.local.encrypted",
            {
                "secretsFile": str(store),
                **{k: str(tmp_path / v) if k == "keyFile" else v for k, v in metadata.items()},
            },
        )
    }
    result = sidecar_to_exit(tmp_path, resources, env=env)
    line = error_line(result)
    assert problem in line
    assert key_file.read_text().strip() not in result.stderr


def test_rotate_key_re_encrypts_under_the_new_key(tmp_path: Path) -> None:
    old_key = _key(tmp_path, "old-key")
    store = _store(tmp_path, old_key)
    new_key = tmp_path / "new-key"
    rotated = secrets_cli("rotate-key", "--file", store, "--key-file", old_key, "--new-key-file", new_key)
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted" in rotated.stdout
    assert stat.S_IMODE(new_key.stat().st_mode) == 0o600
    stale = secrets_cli("list", "--file", store, "--key-file", old_key)
    assert stale.returncode == 1 and "encrypted with another key" in stale.stderr
    new = ["--file", str(store), "--key-file", str(new_key)]
    assert json.loads(secrets_cli("get", "redis", *new).stdout) == {"password": PASSWORD, "user": "default"}

    same = secrets_cli("rotate-key", *new, "--new-key-env", "SAME", env={"SAME": new_key.read_text()})
    assert same.returncode == 1 and "already encrypted with" in same.stderr
    third = secrets_cli("keygen").stdout.strip()
    by_env = secrets_cli("rotate-key", *new, "--new-key-env", "THIRD", env={"THIRD": third})
    assert by_env.returncode == 0, by_env.stderr
    resources = {
        "enc.yaml": component(
            "enc", "secretstores.local.encrypted", {"secretsFile": str(store), "keyEnv": "ROTATED_KEY"}
        )
    }
    sidecar = start_sidecar(tmp_path, resources=resources, env={"ROTATED_KEY": third})
    try:
        with sidecar.client() as client:
            assert client.get("/v1.0/secrets/enc/api").json() == {"api": TOKEN}
    finally:
        sidecar.stop()


def _crash_when_a_file_grows_past_4k() -> None:
    # The kernel sends SIGXFSZ on a write past the limit; with its default action (the CLI below
    # restores it: Python ignores it) the process dies on the spot, mid-write, like a power cut.
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def test_a_crash_during_rotation_leaves_the_old_file_intact(tmp_path: Path) -> None:
    old_key = _key(tmp_path, "old-key")
    store = _store(tmp_path, old_key)
    big = secrets_cli("set", "big", "--file", store, "--key-file", old_key, stdin="x" * 20_000)
    assert big.returncode == 0
    before = store.read_bytes()
    new_key = tmp_path / "new-key"
    crash = subprocess.run(
        [
            sys.executable,
            "-c",
            "import signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
            "from runtime.cli.main import main; sys.exit(main(sys.argv[1:]))",
            *("secrets", "rotate-key", "--file", str(store), "--key-file", str(old_key)),
            *("--new-key-file", str(new_key)),
        ],
        capture_output=True,
        check=False,
        cwd=ROOT,
        env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"},
        preexec_fn=_crash_when_a_file_grows_past_4k,
        timeout=20,
    )
    assert crash.returncode == -signal.SIGXFSZ, crash.stderr
    assert store.read_bytes() == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers, "the crash should have happened while the new file was being written"
    # The old key still opens the file; the interrupted rotation can simply be run again.
    assert secrets_cli("list", "--file", store, "--key-file", old_key).stdout == "api\nbig\nredis\n"
    again = secrets_cli("rotate-key", "--file", store, "--key-file", old_key, "--new-key-file", new_key)
    assert again.returncode == 0, again.stderr
    assert secrets_cli("list", "--file", store, "--key-file", new_key).stdout == "api\nbig\nredis\n"
