"""Generated documentation stays in step with the code."""

from __future__ import annotations

from runtime import docgen


def test_component_reference_is_current() -> None:
    assert docgen.TARGET.read_text() == docgen.render(), (
        "docs/components.md is out of date: run `python -m runtime.docgen`"
    )
