"""What the aggregator does next (``_decide.py``): plain rules, no event loop."""

import pytest

from batcher._decide import Action, Step, next_step


class TestNextStep:
    """What the aggregator does next: plain rules, no event loop."""

    def step(self, **overrides: object) -> Step:
        settings: dict[str, object] = {
            "queued": 3,
            "full": False,
            "ended": False,
            "worker_free": True,
            "eager": True,
            "min_batch_size": 1,
            "waited_s": 0.0,
            "batch_timeout_s": 0.05,
            "yielded": False,
            "waited_for_worker": False,
        }
        settings.update(overrides)
        return next_step(**settings)  # type: ignore[arg-type]

    def test_eager_with_free_worker_yields_once_then_closes(self) -> None:
        assert self.step() == Step(Action.YIELD)
        assert self.step(yielded=True) == Step(Action.CLOSE)

    def test_batch_that_waited_for_a_worker_closes_without_yielding(self) -> None:
        assert self.step(waited_for_worker=True) == Step(Action.CLOSE)

    def test_a_backlog_is_taken_in_before_a_batch_closes(self) -> None:
        assert self.step(backlog=True) == Step(Action.PULL)
        assert self.step(backlog=True, worker_free=False) == Step(Action.PULL)
        assert self.step(backlog=True, full=True) == Step(Action.CLOSE)  # a full batch goes first
        assert self.step(backlog=True, queued=0) == Step(Action.WAIT, None)

    def test_busy_workers_let_the_batch_grow(self) -> None:
        assert self.step(worker_free=False) == Step(Action.WAIT, None)

    def test_full_batch_closes_even_while_workers_are_busy(self) -> None:
        assert self.step(worker_free=False, full=True) == Step(Action.CLOSE)

    def test_end_of_input_flushes(self) -> None:
        assert self.step(worker_free=False, ended=True, min_batch_size=10) == Step(Action.CLOSE)

    def test_nothing_queued_waits_without_deadline_until_input_ends(self) -> None:
        assert self.step(queued=0) == Step(Action.WAIT, None)
        assert self.step(queued=0, worker_free=False) == Step(Action.WAIT, None)
        assert self.step(queued=0, ended=True) == Step(Action.FINISH)

    def test_min_batch_size_waits_at_most_the_timeout(self) -> None:
        step = self.step(min_batch_size=5, waited_s=0.01)
        assert step.action is Action.WAIT
        assert step.delay == pytest.approx(0.04)
        assert self.step(min_batch_size=5, waited_s=0.2) == Step(Action.YIELD)
        assert self.step(min_batch_size=5, waited_s=0.2, yielded=True) == Step(Action.CLOSE)
        assert self.step(min_batch_size=3) == Step(Action.YIELD)

    def test_without_eager_the_window_applies_and_closes_without_yielding(self) -> None:
        step = self.step(eager=False, waited_s=0.03)
        assert step.action is Action.WAIT
        assert step.delay == pytest.approx(0.02)
        assert self.step(eager=False, waited_s=0.06) == Step(Action.CLOSE)
