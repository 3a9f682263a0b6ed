"""Write the blocking client (pillion_client/client.py) from the asyncio one (pillion_client/aio.py).

The two clients make the same calls, so only aio.py is edited by hand; run this afterwards:

    python clients/python/generate_sync.py           # rewrite client.py
    python clients/python/generate_sync.py --check   # exit 1 if client.py is not current

tests/test_client_python.py runs the check. The rewrite is by tokens (``async def`` -> ``def``,
``await`` dropped, ``httpx.AsyncClient`` -> ``httpx.Client`` ...) plus the few sentences that
differ, listed in ``_TEXT``; a source line the rules leave unconverted stops the generation.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent / "pillion_client"
SOURCE = PACKAGE / "aio.py"
TARGET = PACKAGE / "client.py"

HEADER = "# Generated from aio.py by clients/python/generate_sync.py: edit aio.py, then run it.\n"
# Whole sentences that say something different in the blocking client.
_TEXT: list[tuple[str, str]] = [
    (
        '"""The asyncio client: the same calls as :class:`pillion_client.DaprClient`, awaited."""',
        '"""The blocking client."""',
    ),
    (
        '    """:class:`pillion_client.DaprClient` for asyncio: every call is a coroutine."""',
        '    """Calls one sidecar over the Dapr HTTP API. Without arguments it reads DAPR_HTTP_ENDPOINT or\n'
        "    DAPR_HTTP_PORT (default 3500) and DAPR_API_TOKEN. "
        'A non-2xx answer raises :class:`DaprError`."""',
    ),
    ('        """Wait until the sidecar', '        """Block until the sidecar'),
    ("    # The same signature as the blocking client's, rather than leaving the bound to the caller.\n", ""),
    ("  # noqa: ASYNC109", ""),
    ("import asyncio\n", ""),
]
# Token rules, applied in order.
_TOKENS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\basync def\b"), "def"),
    (re.compile(r"\bawait "), ""),
    (re.compile(r"\basyncio\.sleep\("), "time.sleep("),
    (re.compile(r"\bhttpx\.AsyncClient\b"), "httpx.Client"),
    (re.compile(r"\bAsyncDaprClient\b"), "DaprClient"),
    (re.compile(r"\b__aenter__\b"), "__enter__"),
    (re.compile(r"\b__aexit__\b"), "__exit__"),
    (re.compile(r"\baclose\b"), "close"),
]
_LEFT_OVER = re.compile(r"\b(async|await|asyncio|AsyncClient|aclose|__aenter__|__aexit__)\b")


def generate(source: str) -> str:
    for old, new in _TEXT:
        if old not in source:
            raise ValueError(f"aio.py no longer contains {old!r}: update _TEXT in generate_sync.py")
        source = source.replace(old, new)
    for pattern, replacement in _TOKENS:
        source = pattern.sub(replacement, source)
    left = [line for line in source.splitlines() if _LEFT_OVER.search(line)]
    if left:
        raise ValueError("lines the rules do not convert:\n" + "\n".join(left))
    return HEADER + source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if client.py is not current")
    args = parser.parse_args(argv)
    wanted = generate(SOURCE.read_text())
    if args.check:
        if TARGET.read_text() != wanted:
            print(f"{TARGET} is not current: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
