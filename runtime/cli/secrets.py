"""``pillion secrets``: manage a ``secretstores.local.encrypted`` file.

Every change rewrites the whole file through a temporary file and an atomic rename, under an
exclusive lock on the file's folder, so a crash or a second ``pillion secrets`` never leaves a
half-written or mixed file behind.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from components.secretstores.local_encrypted import (
    DEFAULT_KEY_ENV,
    EncryptedFileError,
    key_id,
    key_text,
    new_key,
    read_key_env,
    read_key_file,
    read_store,
    write_atomically,
    write_store,
)


class CommandError(Exception):
    """A problem the user can fix; printed as one line."""


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", type=Path, required=True, help="the encrypted secrets file")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--key-file", type=Path, help="file holding the key (64 hex digits)")
    group.add_argument(
        "--key-env", default=DEFAULT_KEY_ENV, help=f"variable holding the key ({DEFAULT_KEY_ENV})"
    )


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("secrets", help="manage a secretstores.local.encrypted file")
    actions = parser.add_subparsers(dest="action", required=True)

    keygen = actions.add_parser("keygen", help="make a new random key")
    keygen.add_argument("--key-file", type=Path, help="write the key here (mode 600) instead of printing it")

    field_help = "the key inside the secret (secretKeyRef.key); default: the secret's own name"
    set_ = actions.add_parser("set", help="add or change a secret; creates the file if needed")
    set_.add_argument("name")
    set_.add_argument("value", nargs="?", help="the value; leave out (or give -) to read it from stdin")
    set_.add_argument("--field", help=field_help)
    _add_key_options(set_)

    get = actions.add_parser("get", help="print one secret as JSON")
    get.add_argument("name")
    _add_key_options(get)

    list_ = actions.add_parser("list", help="print the secret names (not the values)")
    _add_key_options(list_)

    delete = actions.add_parser("delete", help="remove a secret, or one key of it with --field")
    delete.add_argument("name")
    delete.add_argument("--field", help="remove only this key of the secret")
    _add_key_options(delete)

    rotate = actions.add_parser("rotate-key", help="re-encrypt the file under a new key")
    _add_key_options(rotate)
    new = rotate.add_mutually_exclusive_group(required=True)
    new.add_argument(
        "--new-key-file",
        type=Path,
        help="the new key; a file that does not exist yet is created with a new key",
    )
    new.add_argument("--new-key-env", help="variable holding the new key")


def _key(args: argparse.Namespace) -> bytes:
    return read_key_file(args.key_file) if args.key_file else read_key_env(args.key_env)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_value(args: argparse.Namespace) -> str:
    if args.value is not None and args.value != "-":
        return str(args.value)
    if sys.stdin.isatty():
        return getpass.getpass(f"value for {args.name}: ")
    text = sys.stdin.read()
    return text.removesuffix("\n").removesuffix("\r")


def _write_key_file(path: Path, key: bytes) -> None:
    if path.exists():
        raise CommandError(f"{path} already exists; not overwriting a key")
    write_atomically(path, (key_text(key) + "\n").encode())


def _keygen(args: argparse.Namespace) -> int:
    key = new_key()
    if args.key_file is None:
        print(key_text(key))
        return 0
    _write_key_file(args.key_file, key)
    print(f"wrote a new key to {args.key_file} (key id {key_id(key)})")
    return 0


def _set(args: argparse.Namespace) -> int:
    key = _key(args)
    value = _read_value(args)
    path: Path = args.file
    with _locked(path.parent):
        secrets = read_store(path, key) if path.exists() else {}
        secrets.setdefault(args.name, {})[args.field or args.name] = value
        write_store(path, secrets, key)
    return 0


def _get(args: argparse.Namespace) -> int:
    secrets = read_store(args.file, _key(args))
    if args.name not in secrets:
        raise CommandError(f"no secret {args.name!r} in {args.file}")
    print(json.dumps(secrets[args.name], indent=2, sort_keys=True))
    return 0


def _list(args: argparse.Namespace) -> int:
    for name in sorted(read_store(args.file, _key(args))):
        print(name)
    return 0


def _delete(args: argparse.Namespace) -> int:
    key = _key(args)
    path: Path = args.file
    with _locked(path.parent):
        secrets = read_store(path, key)
        secret = secrets.get(args.name)
        if secret is None:
            raise CommandError(f"no secret {args.name!r} in {path}")
        if args.field is None:
            del secrets[args.name]
        elif args.field in secret:
            del secret[args.field]
            if not secret:
                del secrets[args.name]
        else:
            raise CommandError(f"secret {args.name!r} has no key {args.field!r}")
        write_store(path, secrets, key)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    old = _key(args)
    path: Path = args.file
    with _locked(path.parent):
        secrets = read_store(path, old)
        if args.new_key_env:
            new = read_key_env(args.new_key_env)
        elif args.new_key_file.exists():
            new = read_key_file(args.new_key_file)
        else:
            new = new_key()
            # The new key is on disk before any data depends on it.
            _write_key_file(args.new_key_file, new)
        if new == old:
            raise CommandError("the new key is the key the file is already encrypted with")
        write_store(path, secrets, new)
    print(
        f"re-encrypted {path} under key id {key_id(new)}; point the component's keyFile or keyEnv "
        "at the new key and restart the sidecar"
    )
    return 0


_ACTIONS = {
    "keygen": _keygen,
    "set": _set,
    "get": _get,
    "list": _list,
    "delete": _delete,
    "rotate-key": _rotate,
}


def run(args: argparse.Namespace) -> int:
    try:
        return _ACTIONS[args.action](args)
    except (CommandError, EncryptedFileError) as exc:
        print(f"pillion secrets: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"pillion secrets: {exc.strerror or exc}{where}", file=sys.stderr)
    return 1
