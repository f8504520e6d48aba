"""Benchmark harness for batcher (issue 4): ``python -m benchmarks``.

It measures this library under asyncio and under trio against flyte's
``DynamicBatcher`` and against a minimal hand-written asyncio batcher (the
floor), on five synthetic workloads:

* A, closed loop: throughput with 100 producers awaiting one record each;
* B, open loop: throughput of ``submit_batch`` with every record at once;
* C, lone request: latency of one record through an idle batcher;
* D, simulated LLM: throughput, latency and batch fill under Poisson load;
* E, memory: bytes per queued record.

F, a real embedding model, lives in :mod:`benchmarks.bench_embed` and runs
only with ``--with-model`` or ``--only F``. See :mod:`benchmarks.workloads`
for what each workload does and :mod:`benchmarks.report` for the targets.
"""
