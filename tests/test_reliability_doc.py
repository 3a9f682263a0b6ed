"""docs/reliability.md names the tests that prove each guarantee: every one of them must exist."""

from __future__ import annotations

import ast
import re

from tests.support import ROOT

DOC = ROOT / "docs" / "reliability.md"
CITATION = re.compile(r"`(tests/test_\w+\.py)(?:::(\w+))?`")


def test_every_cited_test_exists() -> None:
    citations = CITATION.findall(DOC.read_text())
    assert len(citations) > 50, "the page cites its tests as `tests/test_x.py::test_name`"
    missing: list[str] = []
    for module, name in citations:
        path = ROOT / module
        if not path.exists():
            missing.append(module)
            continue
        if name:
            tree = ast.parse(path.read_text())
            defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
            if name not in defined:
                missing.append(f"{module}::{name}")
    assert missing == []
