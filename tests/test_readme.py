"""The README's quickstarts are code: they run as written."""

from __future__ import annotations

import ast
import re
import threading
from pathlib import Path

import anyio
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


async def test_gpu_warm_up_runs_every_shape_once_on_the_workers_thread(capsys: pytest.CaptureFixture[str]) -> None:
    # The snippet without its last line, which runs main() under asyncio: here main()
    # runs under the backend of the test.
    code = quickstart("Running on a GPU")
    assert code.endswith("\nanyio.run(main)\n")
    namespace: dict[str, object] = {"__name__": "readme_gpu"}
    exec(compile(code.removesuffix("anyio.run(main)\n"), "README Running on a GPU", "exec"), namespace)
    main = namespace["main"]
    assert callable(main)
    with anyio.fail_after(10):
        await main()
    assert capsys.readouterr().out == "65\n128.0\n"
    runs = namespace["runs"]
    assert isinstance(runs, list)
    threads = {thread for thread, _, _ in runs}
    # Every run, warm-up and batches alike, on the worker's own thread, none on the loop's.
    assert threads == {"batcher process_fn"}
    assert threading.current_thread().name not in threads
    shapes = [(rows, width) for _, rows, width in runs[:64]]
    assert sorted(shapes) == [(rows, width) for rows in range(1, 9) for width in range(64, 513, 64)]
    # The batches that followed ran shapes the warm-up had run, and warmed nothing again.
    assert runs[64:] == [("batcher process_fn", 1, 64), ("batcher process_fn", 1, 128)]
