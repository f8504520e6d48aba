"""The README's quickstarts are code: they run as written."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def quickstart(title: str) -> str:
    section = README.read_text().split(f"## {title}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"no python block under {title!r}"
    return match.group(1)


def run_quickstart(title: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the quickstart under ``title`` as a script; return what it printed."""
    exec(compile(quickstart(title), f"README {title}", "exec"), {"__name__": "__main__"})
    return capsys.readouterr().out


def test_asyncio_quickstart_prints_what_its_comment_says(capsys: pytest.CaptureFixture[str]) -> None:
    # The results, in the order of the texts, and the number of batches: one.
    assert run_quickstart("Quickstart (asyncio)", capsys) == "[14, 24, 2] 1\n"


def test_trio_quickstart_prints_each_texts_length(capsys: pytest.CaptureFixture[str]) -> None:
    output = run_quickstart("Quickstart (trio)", capsys)
    # One line: a dict filled as the calls return, so its order is not fixed.
    assert output.endswith("\n")
    assert output.count("\n") == 1
    assert ast.literal_eval(output) == {"a short prompt": 14, "a somewhat longer prompt": 24, "hi": 2}


def test_synchronous_code_prints_what_its_comments_say(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_quickstart("Synchronous code", capsys) == "5\n[14, 24, 2]\n5\n[14, 24, 2]\n8\n"
