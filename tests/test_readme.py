"""The README's quickstarts are code: they run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def quickstart(title: str) -> str:
    section = README.read_text().split(f"## {title}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"no python block under {title!r}"
    return match.group(1)


@pytest.mark.parametrize("title", ["Quickstart (asyncio)", "Quickstart (trio)"])
def test_quickstart_runs(title: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(quickstart(title), f"README {title}", "exec"), {"__name__": "__main__"})
    output = capsys.readouterr().out
    assert "14" in output
    assert "24" in output
