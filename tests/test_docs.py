"""Generated documentation stays in step with the code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from runtime.cli import docgen
from tests.support import ROOT


def test_component_reference_is_current() -> None:
    assert docgen.TARGET.read_text() == docgen.render(), (
        "docs/components.md is out of date: run `python -m runtime.cli.docgen`"
    )


# --- docs/architecture.md names only files that exist ---------------------------------------------

_TOP = ("runtime/", "components/", "clients/", "docs/", "tests/", "samples/", "deploy/", "scripts/", "bench/")
_CODE = re.compile(r"`([^`\s]+)`")
_BRACES = re.compile(r"\{([^{}]*)\}")


def _expand(name: str) -> list[str]:
    """``runtime/http/{state,secrets}.py`` -> the two paths."""
    match = _BRACES.search(name)
    if match is None:
        return [name]
    head, tail = name[: match.start()], name[match.end() :]
    return [path for part in match.group(1).split(",") for path in _expand(head + part + tail)]


def _exists(name: str) -> bool:
    if any(ROOT.glob(name)):
        return True
    # `runtime/http/state.get_state`: a function in a module.
    module, dot, _ = name.rpartition(".")
    return bool(dot) and (ROOT / f"{module}.py").is_file()


def test_the_architecture_map_names_files_that_exist() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = {
        n
        for token in _CODE.findall(text)
        if token.startswith(_TOP) and "<" not in token
        for n in _expand(token)
    }
    assert len(named) > 40
    assert sorted(n for n in named if not _exists(n)) == []


def test_the_architecture_map_shows_every_runtime_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = {n for token in _CODE.findall(text) for n in _expand(token)}
    modules = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "runtime").rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    }
    assert sorted(modules - named) == []


# --- nothing in the repository points outside it --------------------------------------------------

# A file beside the checkout, or the numbered sections of one, named as a source.
_OUTSIDE = re.compile(
    r"\.\./shared|/work/|\breference sections?\s+\d"
    r"|dapr-(?:http-api|grpc-api|invocation|more-blocks)\.md"
)
_TEXT_FILES = (".py", ".md", ".yaml", ".yml", ".toml", ".ts", ".mjs", ".js", ".go", ".sh")


def test_nothing_points_outside_the_repository() -> None:
    """Code and docs cite docs/ or public Dapr sources, never a file beside the checkout."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True)
    offenders: dict[str, list[str]] = {}
    for name in listed.stdout.splitlines():
        path = ROOT / name
        if path.suffix not in _TEXT_FILES or path == Path(__file__).resolve() or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if _OUTSIDE.search(line):
                offenders.setdefault(name, []).append(f"{number}: {line.strip()}")
    assert offenders == {}
