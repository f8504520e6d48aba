from collections.abc import Iterator

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every async test under asyncio and under trio."""
    return str(request.param)


@pytest.fixture(scope="session")
def cluster() -> Iterator[None]:
    """A local Ray cluster shared by the whole session (started once, in about 3 s;
    shut down at the end). Tests that need it say ``usefixtures("cluster")``."""
    ray = pytest.importorskip("ray", reason="needs the 'ray' extra")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
