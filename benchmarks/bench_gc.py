"""A model's heap and the cyclic GC: what a full collection costs a batcher's pass
once torch and a model are loaded, with and without ``gc.freeze()`` (issue 15).

Loading torch, transformers and a 6 x 384 BERT encoder (random weights, on the CPU:
only its Python objects matter here) leaves a few hundred thousand objects that
every full collection walks. Each pass sends 4,096 texts (all at once) through a
``TokenBatcher`` with ``cost_model="measured"`` and a model that sleeps 4 ms a batch
and returns a tensor per record; the results that stay alive until they are awaited
are what, pass after pass, make the GC run a full collection. The report prints
each pass's time and the GC's time in it, in a fresh process per setting::

    python -m benchmarks.bench_gc
    python -m benchmarks.bench_gc --quick     # a check that it runs (CI)
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio

PASSES = 10
BATCH_S = 4e-3


def _passes(freeze: bool, texts: int, passes: int) -> list[str]:
    import torch

    from batcher import TokenBatcher
    from benchmarks.bench_gpu import Encoder, corpus_lengths, one_pass

    lengths = corpus_lengths(texts)
    encoder = Encoder((6, 384, 12), "cpu", lengths)  # as workload G builds it
    if freeze:
        gc.collect()
        gc.freeze()
    spent = {"gc": 0.0, "full": 0.0, "fulls": 0.0}
    began = [0.0]

    def timing(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
            return
        seconds = time.perf_counter() - began[0]
        spent["gc"] += seconds
        if info["generation"] == 2:
            spent["full"] += seconds
            spent["fulls"] += 1

    def model(batch: list[int]) -> list[Any]:
        time.sleep(BATCH_S)
        return [torch.zeros(8) for _ in batch]

    async def run() -> list[str]:
        cells = []
        async with TokenBatcher(model, target_batch_tokens=16_384, max_queue_size=texts, cost_model="measured") as b:
            for _ in range(passes):
                spent.update(gc=0.0, full=0.0, fulls=0.0)
                started = time.perf_counter()
                await one_pass(b, lengths, closed=False)
                elapsed = time.perf_counter() - started
                cells.append(
                    f"{elapsed * 1e3:4.0f} ms (gc {spent['gc'] * 1e3:5.1f}, full {spent['fulls']:.0f}: "
                    f"{spent['full'] * 1e3:5.1f})"
                )
        return cells

    gc.callbacks.append(timing)
    tracked = len(gc.get_objects())
    cells = anyio.run(run)
    del encoder
    return [f"objects the GC walks (not frozen): {tracked}", *cells]


def run(quick: bool = False) -> str:
    """The report: for each setting, a fresh process's passes."""
    texts, passes = (512, 2) if quick else (4096, PASSES)
    lines = [
        f"GC  torch + a 6 x 384 BERT loaded; {texts} texts a pass, all at once, measured mode, "
        f"a model of {BATCH_S * 1e3:g} ms a batch; each pass: time (GC time, full collections: their time)"
    ]
    for freeze in (False, True):
        argv = [sys.executable, "-m", "benchmarks.bench_gc", "--child", str(texts), str(passes)]
        out = subprocess.run([*argv, "--freeze"] if freeze else argv, capture_output=True, text=True, check=True)
        cells = out.stdout.splitlines()
        lines.append(f"   {'gc.freeze() after loading' if freeze else 'no gc.freeze()':<26} {cells[0]}")
        lines += [f"      pass {number}: {cell}" for number, cell in enumerate(cells[1:], 1)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_gc", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 texts, 2 passes: checks the code")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--freeze", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("\n".join(_passes(args.freeze, *args.child)))
    else:
        print(run(quick=args.quick))


if __name__ == "__main__":
    main()
