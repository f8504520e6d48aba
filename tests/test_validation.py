"""Bad input gets a clear error naming the parameter, and changes nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import anyio
import numpy
import pytest

from batcher import DynamicBatcher, Prompt, TokenBatcher


async def echo(batch: list[Any]) -> list[Any]:
    return batch


class TestConstructor:
    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            ({"max_batch_size": 0}, ValueError, "max_batch_size must be >= 1"),
            ({"min_batch_size": 0}, ValueError, "min_batch_size must be >= 1"),
            ({"min_batch_size": 5, "max_batch_size": 4}, ValueError, "min_batch_size must be <= max_batch_size"),
            ({"target_batch_cost": 0}, ValueError, "target_batch_cost must be >= 1"),
            ({"target_batch_cost": 1.5}, TypeError, "target_batch_cost must be an int, got float"),
            ({"batch_timeout_s": -1}, ValueError, "batch_timeout_s must be finite and >= 0"),
            ({"batch_timeout_s": float("inf")}, ValueError, "batch_timeout_s must be finite"),
            ({"batch_timeout_s": float("nan")}, ValueError, "batch_timeout_s must be finite"),
            ({"batch_timeout_s": "1"}, TypeError, "batch_timeout_s must be a number, got str"),
            ({"max_queue_size": 0}, ValueError, "max_queue_size must be >= 1"),
            ({"prefetch_batches": -1}, ValueError, "prefetch_batches must be >= 0"),
            ({"max_concurrent_batches": 0}, ValueError, "max_concurrent_batches must be >= 1"),
            ({"default_cost": -1}, ValueError, "default_cost must be >= 0"),
            ({"max_batch_size": True}, TypeError, "max_batch_size must be an int, got bool"),
            ({"cost_model": "max"}, ValueError, "cost_model must be 'sum', 'padded' or 'measured'"),
            ({"process_timeout_s": 0}, ValueError, "process_timeout_s must be a finite number > 0"),
            ({"cost_estimator": 3}, TypeError, "cost_estimator must be callable"),
            ({"min_padding_efficiency": 0.9}, ValueError, "min_padding_efficiency needs cost_model='padded'"),
            (
                {"min_padding_efficiency": 0, "cost_model": "padded"},
                ValueError,
                "min_padding_efficiency must be > 0 and <= 1, got 0",
            ),
            (
                {"min_padding_efficiency": 1.5, "cost_model": "padded"},
                ValueError,
                "min_padding_efficiency must be > 0 and <= 1, got 1.5",
            ),
            (
                {"min_padding_efficiency": "0.9", "cost_model": "padded"},
                TypeError,
                "min_padding_efficiency must be a number or None, got str",
            ),
            ({"group_by_cost": "no"}, TypeError, "group_by_cost must be True or False, got str"),
            ({"eager_dispatch": None}, TypeError, "eager_dispatch must be True or False, got NoneType"),
            ({"eager_dispatch": 0}, TypeError, "eager_dispatch must be True or False, got int"),
            ({"observers": None}, TypeError, "observers must be a list of callables, got NoneType"),
            ({"observers": [5]}, TypeError, "observers: an observer must be callable, got int"),
        ],
    )
    def test_bad_settings(self, kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
        with pytest.raises(error, match=match):
            DynamicBatcher(echo, **kwargs)

    def test_process_fn_not_callable(self) -> None:
        with pytest.raises(TypeError, match="process_fn must be callable, got int"):
            DynamicBatcher(42)  # type: ignore[arg-type]

    def test_token_batcher_needs_a_function(self) -> None:
        with pytest.raises(TypeError, match="requires either"):
            TokenBatcher()

    def test_token_batcher_names_token_parameters(self) -> None:
        with pytest.raises(ValueError, match="target_batch_tokens must be >= 1"):
            TokenBatcher(echo, target_batch_tokens=0)
        with pytest.raises(ValueError, match="default_token_estimate must be >= 0"):
            TokenBatcher(echo, default_token_estimate=-3)
        with pytest.raises(ValueError, match=r"default_cost must be at most 2\*\*63 - 1"):
            DynamicBatcher(echo, default_cost=2**63)
        with pytest.raises(TypeError, match="token_estimator must be callable"):
            TokenBatcher(echo, token_estimator="len")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            ({"target_batch_tokens": 10, "target_batch_cost": -5}, ValueError, "^target_batch_cost must be >= 1"),
            ({"default_token_estimate": 3, "default_cost": "x"}, TypeError, "^default_cost must be an int, got str"),
            ({"token_estimator": len, "cost_estimator": 42}, TypeError, "^cost_estimator must be callable or None"),
            ({"inference_fn": echo, "process_fn": 42}, TypeError, "^process_fn must be callable, got int"),
        ],
    )
    def test_a_bad_value_its_token_name_shadows_is_refused(
        self, kwargs: dict[str, Any], error: type[Exception], match: str
    ) -> None:
        """The token name takes precedence, but the value it shadows is checked: it was ignored."""
        with pytest.raises(error, match=match):
            TokenBatcher(**({"inference_fn": echo} | kwargs))

    async def test_a_call_refuses_a_bad_cost_its_token_count_shadows(self) -> None:
        async with TokenBatcher(echo) as batcher:
            with pytest.raises(ValueError, match=r"^estimated_cost must be >= 0, got -1"):
                await batcher.call("x", estimated_tokens=3, estimated_cost=-1)
            assert await batcher.call("y", estimated_tokens=3, estimated_cost=4) == "y"
        assert batcher.stats.total_submitted == 1

    @pytest.mark.parametrize("order", ["tokens first", "cost first"])
    def test_configure_refuses_a_bad_value_its_token_name_shadows(self, order: str) -> None:
        batcher = TokenBatcher(echo, target_batch_tokens=10)
        pair = {"target_batch_tokens": 5, "target_batch_cost": 0}
        with pytest.raises(ValueError, match=r"^target_batch_cost must be >= 1, got 0"):
            batcher.configure(**(pair if order == "tokens first" else dict(reversed(pair.items()))))
        assert batcher._settings.target_batch_cost == 10  # nothing changed
        batcher.configure(target_batch_cost=7, target_batch_tokens=6)
        assert batcher._settings.target_batch_cost == 6
        batcher.configure(target_batch_tokens=5, target_batch_cost=None)  # None: as not given, as in the constructor
        assert batcher._settings.target_batch_cost == 5

    async def test_submit_batch_refuses_bad_costs_its_token_counts_shadow(self) -> None:
        async with TokenBatcher(echo) as batcher:
            with pytest.raises(TypeError, match=r"^estimated_cost must be a sequence of ints or None, got str"):
                await batcher.submit_batch(["x"], estimated_tokens=[1], estimated_cost="bad")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match=r"^estimated_cost\[0\] must be >= 0, got -1"):
                await batcher.submit_batch(iter(["x"]), estimated_tokens=[1], estimated_cost=[-1])
            futures = await batcher.submit_batch(iter(["y"]), estimated_tokens=[1], estimated_cost=[2])
            assert [await future for future in futures] == ["y"]
        assert batcher.stats.total_submitted == 1


class TestCosts:
    @pytest.mark.parametrize(
        ("cost", "error", "match"),
        [
            (1.0, TypeError, "estimated_cost must be an int, got float"),
            (True, TypeError, "estimated_cost must be an int, got bool"),
            ("3", TypeError, "estimated_cost must be an int, got str"),
            (-1, ValueError, "estimated_cost must be >= 0, got -1"),
            (10**400, ValueError, r"estimated_cost must be at most 2\*\*63 - 1"),  # its sums would overflow floats
        ],
    )
    async def test_bad_explicit_cost(self, cost: Any, error: type[Exception], match: str) -> None:
        with anyio.fail_after(5):
            async with DynamicBatcher(echo) as batcher:
                with pytest.raises(error, match=match):
                    await batcher.submit("x", estimated_cost=cost)
                with pytest.raises(error, match=match):
                    batcher.submit_nowait("x", estimated_cost=cost)
                assert batcher.stats.total_submitted == 0
                assert await batcher.call("still works") == "still works"

    @pytest.mark.parametrize(
        ("bad", "error", "match"),
        [
            (None, TypeError, "the cost from cost_estimator must be an int, got NoneType"),
            (2.5, TypeError, "the cost from cost_estimator must be an int, got float"),
            (-4, ValueError, "the cost from cost_estimator must be >= 0, got -4"),
        ],
    )
    async def test_bad_estimator_results(self, bad: Any, error: type[Exception], match: str) -> None:
        batcher = DynamicBatcher(echo, cost_estimator=lambda record: bad)
        with anyio.fail_after(5):
            async with batcher:
                with pytest.raises(error, match=match):
                    await batcher.submit("x")
        assert batcher.stats.total_submitted == 0

    async def test_estimator_exception_comes_out_of_submit(self) -> None:
        def estimator(record: str) -> int:
            raise LookupError("no tokenizer")

        with anyio.fail_after(5):
            async with DynamicBatcher(echo, cost_estimator=estimator) as batcher:
                with pytest.raises(LookupError, match="no tokenizer"):
                    await batcher.submit("x")
                assert batcher.stats.total_submitted == 0

    async def test_bad_protocol_cost(self) -> None:
        @dataclass
        class Weird:
            def estimate_cost(self) -> Any:
                return "lots"

        with anyio.fail_after(5):
            async with DynamicBatcher(echo) as batcher:
                with pytest.raises(TypeError, match=r"the cost from Weird.estimate_cost\(\) must be an int, got str"):
                    await batcher.submit(Weird())

    async def test_submit_batch_checks_every_cost_first(self) -> None:
        recorder_calls: list[list[Any]] = []

        async def fn(batch: list[Any]) -> list[Any]:
            recorder_calls.append(batch)
            return batch

        with anyio.fail_after(5):
            async with DynamicBatcher(fn) as batcher:
                with pytest.raises(ValueError, match="estimated_cost has 2 items but records has 3"):
                    await batcher.submit_batch(["a", "b", "c"], estimated_cost=[1, 2])
                with pytest.raises(TypeError, match=r"estimated_cost\[2\] must be an int, got NoneType"):
                    await batcher.submit_batch(["a", "b", "c"], estimated_cost=[1, 2, None])  # type: ignore[list-item]
                with pytest.raises(ValueError, match=r"estimated_cost\[0\] must be >= 0"):
                    await batcher.submit_batch(["a"], estimated_cost=[-1])
                with pytest.raises(TypeError, match="estimated_cost must be a sequence of ints"):
                    await batcher.submit_batch(["a"], estimated_cost=5)  # type: ignore[arg-type]
                assert batcher.stats.total_submitted == 0
            # Priced in chunks of 1,024 (a turn of the loop after each): a bad cost in the
            # second chunk queues none of the first.
            async with DynamicBatcher(fn, cost_estimator=lambda record: -1 if record == 1_500 else 1) as batcher:
                with pytest.raises(ValueError, match="the cost from cost_estimator must be >= 0"):
                    await batcher.submit_batch(range(2_000))
                assert batcher.stats.total_submitted == 0
        assert recorder_calls == []

    async def test_token_batcher_bad_tokens(self) -> None:
        with anyio.fail_after(5):
            async with TokenBatcher(echo) as batcher:
                with pytest.raises(TypeError, match="estimated_tokens must be an int, got float"):
                    await batcher.submit("x", estimated_tokens=1.5)  # type: ignore[arg-type]
                with pytest.raises(ValueError, match=r"estimated_tokens\[1\] must be >= 0"):
                    await batcher.submit_batch(["a", "b"], estimated_tokens=[1, -1])


class Both:
    def __init__(self, tokens: int, cost: int) -> None:
        self.tokens, self.cost = tokens, cost

    def estimate_tokens(self) -> int:
        return self.tokens

    def estimate_cost(self) -> int:
        return self.cost


class CostOnly:
    def estimate_cost(self) -> int:
        return 7


class TestCostPrecedence:
    async def costs_seen(self, batcher: DynamicBatcher[Any, Any], submit: Any) -> int:
        with anyio.fail_after(5):
            async with batcher:
                await submit(batcher)
        return batcher.stats.total_batch_cost

    async def test_dynamic_batcher_order(self) -> None:
        def dyn(**kwargs: Any) -> DynamicBatcher[Any, Any]:
            return DynamicBatcher(echo, default_cost=3, **kwargs)

        async def explicit(b: Any) -> None:
            await b.call(CostOnly(), estimated_cost=11)

        async def plain(b: Any) -> None:
            await b.call(CostOnly())

        async def nothing(b: Any) -> None:
            await b.call("text")

        assert await self.costs_seen(dyn(cost_estimator=lambda r: 5), explicit) == 11
        assert await self.costs_seen(dyn(cost_estimator=lambda r: 5), plain) == 5
        assert await self.costs_seen(dyn(), plain) == 7
        assert await self.costs_seen(dyn(), nothing) == 3

    async def test_token_batcher_order(self) -> None:
        def tok(**kwargs: Any) -> TokenBatcher[Any, Any]:
            return TokenBatcher(echo, default_token_estimate=3, **kwargs)

        async def both_explicit(b: Any) -> None:
            await b.call(Both(1, 2), estimated_tokens=13, estimated_cost=12)

        async def cost_explicit(b: Any) -> None:
            await b.call(Both(1, 2), estimated_cost=12)

        async def plain(b: Any) -> None:
            await b.call(Both(1, 2))

        async def cost_only(b: Any) -> None:
            await b.call(CostOnly())

        async def prompt(b: Any) -> None:
            await b.call(Prompt("x" * 40))

        assert await self.costs_seen(tok(token_estimator=lambda r: 5), both_explicit) == 13
        assert await self.costs_seen(tok(token_estimator=lambda r: 5), cost_explicit) == 12
        assert await self.costs_seen(tok(token_estimator=lambda r: 5), plain) == 5
        assert await self.costs_seen(tok(cost_estimator=lambda r: 6), plain) == 6
        assert await self.costs_seen(tok(), plain) == 1
        assert await self.costs_seen(tok(), cost_only) == 7
        assert await self.costs_seen(tok(), prompt) == 11
        assert await self.costs_seen(TokenBatcher(echo, default_cost=4), cost_only) == 7

    def test_prompt_estimate(self) -> None:
        assert Prompt("").estimate_tokens() == 1
        assert Prompt("abcdefgh").estimate_tokens() == 3
        with pytest.raises(TypeError, match="Prompt text must be a str, got NoneType"):
            Prompt(None)  # type: ignore[arg-type]

    async def test_a_cost_method_of_the_record_itself_prices_it(self) -> None:
        # Not of its class: an instance attribute, or a proxy's __getattr__.
        class Proxy:
            def __init__(self, prompt: Prompt) -> None:
                self._prompt = prompt

            def __getattr__(self, name: str) -> Any:
                return getattr(self._prompt, name)

        def call(record: Any) -> Any:
            return lambda batcher: batcher.call(record)

        own = SimpleNamespace(estimate_tokens=lambda: 101)
        assert await self.costs_seen(TokenBatcher(echo), call(own)) == 101
        assert await self.costs_seen(TokenBatcher(echo), call(Proxy(Prompt("x" * 40)))) == 11
        assert await self.costs_seen(TokenBatcher(echo, default_token_estimate=3), call(SimpleNamespace())) == 3
        # A default is a cost: an integer in all but type is taken, as for the others.
        by_default = DynamicBatcher(echo, default_cost=numpy.int64(5))  # type: ignore[arg-type]
        assert await self.costs_seen(by_default, call(SimpleNamespace())) == 5
        assert await self.costs_seen(DynamicBatcher(echo), call(SimpleNamespace(estimate_cost=lambda: 7))) == 7

    async def test_a_record_that_carries_no_cost_method_costs_the_default(self) -> None:
        # Whatever its lookup does: a __getattr__ raising KeyError, a property that raises.
        class AttrDict(dict[str, Any]):
            __getattr__ = dict.__getitem__

        class Named:
            @property
            def estimate_cost(self) -> Any:
                raise ValueError("not a cost method")

        class Slotted:  # a slot holds its own cost method
            __slots__ = ("estimate_cost",)

            def __init__(self) -> None:
                self.estimate_cost = lambda: 5

        def call(record: Any) -> Any:
            return lambda batcher: batcher.call(record)

        assert await self.costs_seen(DynamicBatcher(echo), call(AttrDict(text="hi"))) == 1
        assert await self.costs_seen(TokenBatcher(echo, default_token_estimate=3), call(AttrDict(text="hi"))) == 3
        assert await self.costs_seen(DynamicBatcher(echo), call(Named())) == 1
        assert await self.costs_seen(DynamicBatcher(echo), call(Slotted())) == 5
        # Nor a metaclass's __getattr__, which the class answers to but its instances do not.
        for answer in (KeyError, lambda name: lambda *args: 3):

            class Meta(type):
                def __getattr__(cls, name: str, answer: Any = answer) -> Any:
                    if isinstance(answer, type):
                        raise answer(name)
                    return answer(name)

            class Odd(metaclass=Meta):
                pass

            assert await self.costs_seen(DynamicBatcher(echo, default_cost=2), call(Odd())) == 2

    async def test_a_coroutine_for_a_cost_is_refused_and_closed(self) -> None:
        async def later() -> int:
            return 1

        class Returns:
            def estimate_cost(self) -> Any:
                return later()

        async with DynamicBatcher(echo, cost_estimator=lambda record: later()) as batcher:  # type: ignore[arg-type,return-value]
            with pytest.raises(TypeError, match="cost_estimator must be an int, got a coroutine"):
                await batcher.submit("x")
        async with DynamicBatcher(echo) as batcher:
            with pytest.raises(TypeError, match=r"Returns.estimate_cost\(\) must be an int, got a coroutine"):
                await batcher.submit(Returns())
            assert batcher.stats.total_submitted == 0  # and no "never awaited" warning (filterwarnings: error)

    async def test_an_async_estimator_or_cost_method_is_refused_by_name(self) -> None:
        async def estimate(record: Any) -> int:
            return 1

        with pytest.raises(TypeError, match="token_estimator must be a plain function returning an int, not an async"):
            TokenBatcher(echo, token_estimator=estimate)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="cost_estimator must be a plain function returning an int, not an async"):
            DynamicBatcher(echo, cost_estimator=estimate)  # type: ignore[arg-type]

        @dataclass
        class Slow:
            async def estimate_tokens(self) -> int:
                return 1

        async def estimate_later() -> int:
            return 1

        async with TokenBatcher(echo) as batcher:
            with pytest.raises(TypeError, match=r"Slow.estimate_tokens\(\) must be a plain method returning an int"):
                await batcher.submit(Slow())
            with pytest.raises(TypeError, match=r"SimpleNamespace.estimate_tokens\(\) must be an int, got a coroutine"):
                await batcher.submit(SimpleNamespace(estimate_tokens=estimate_later))
            assert batcher.stats.total_submitted == 0


async def test_bad_input_leaves_batcher_working() -> None:
    bad_costs: list[tuple[Any, type[Exception], str]] = [
        (-1, ValueError, r"estimated_cost\[0\] must be >= 0, got -1"),
        (1.0, TypeError, r"estimated_cost\[0\] must be an int, got float"),
        (None, TypeError, r"estimated_cost\[0\] must be an int, got NoneType"),
        (2**63, ValueError, r"estimated_cost\[0\] must be at most 2\*\*63 - 1"),
    ]
    with anyio.fail_after(5):
        async with DynamicBatcher(echo) as batcher:
            for bad, error, match in bad_costs:
                with pytest.raises(error, match=match):
                    await batcher.submit_batch(["a"], estimated_cost=[bad])
            assert await batcher.call("ok") == "ok"
    stats = batcher.stats
    assert (stats.total_submitted, stats.total_completed) == (1, 1)


class Index:
    """An integer in all but type."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


class TestIntegerCosts:
    """Costs that are integers in all but type count as plain ints; bool does not."""

    async def total_cost(self, batcher: DynamicBatcher[Any, Any], submit: Any) -> int:
        with anyio.fail_after(5):
            async with batcher:
                await submit(batcher)
        total = batcher.stats.total_batch_cost
        assert type(total) is int
        return total

    async def test_explicit_costs_with_index(self) -> None:
        numpy = pytest.importorskip("numpy")

        async def submit(b: DynamicBatcher[Any, Any]) -> None:
            await b.call("a", estimated_cost=numpy.int64(5))
            await b.call("b", estimated_cost=Index(7))  # type: ignore[arg-type]
            b.submit_nowait("c", estimated_cost=numpy.uint8(3))
            await b.call("d", estimated_cost=numpy.int32(0))

        assert await self.total_cost(DynamicBatcher(echo), submit) == 15

    async def test_submit_batch_takes_an_array_of_costs(self) -> None:
        numpy = pytest.importorskip("numpy")

        async def submit(b: TokenBatcher[Any, Any]) -> None:
            futures = await b.submit_batch(["a", "b", "c"], estimated_tokens=numpy.array([4, 5, 6]))
            assert [await f for f in futures] == ["a", "b", "c"]

        assert await self.total_cost(TokenBatcher(echo, max_batch_size=1), submit) == 15

    async def test_an_array_that_is_not_one_integer_is_refused_by_name(self) -> None:
        numpy = pytest.importorskip("numpy")
        with anyio.fail_after(5):
            async with TokenBatcher(echo) as b:
                with pytest.raises(TypeError, match="estimated_tokens must be an int, got ndarray"):
                    await b.submit("a", estimated_tokens=numpy.array([5]))
                with pytest.raises(TypeError, match=r"estimated_tokens\[0\] must be an int, got ndarray"):
                    await b.submit_batch(["a", "b"], estimated_tokens=numpy.array([[1], [2]]))
                assert b.stats.total_submitted == 0
                assert await b.call("c") == "c"

    async def test_estimator_returning_a_numpy_integer(self) -> None:
        numpy = pytest.importorskip("numpy")

        async def submit(b: DynamicBatcher[Any, Any]) -> None:
            await b.call("abcd")

        batcher = DynamicBatcher(echo, cost_estimator=lambda record: numpy.int64(len(record)))
        assert await self.total_cost(batcher, submit) == 4

    async def test_not_integers_are_still_refused_naming_where_they_came_from(self) -> None:
        numpy = pytest.importorskip("numpy")
        with anyio.fail_after(5):
            async with DynamicBatcher(echo, cost_estimator=lambda record: numpy.float64(2)) as batcher:
                with pytest.raises(TypeError, match=r"^the cost from cost_estimator must be an int, got float64$"):
                    await batcher.submit("x")
                with pytest.raises(TypeError, match=r"^estimated_cost must be an int, got bool$"):
                    await batcher.submit("x", estimated_cost=numpy.bool_(True))
                with pytest.raises(TypeError, match=r"^estimated_cost must be an int, got bool$"):
                    await batcher.submit("x", estimated_cost=True)
                with pytest.raises(ValueError, match=r"^estimated_cost\[1\] must be >= 0, got -2$"):
                    await batcher.submit_batch(["x", "y"], estimated_cost=numpy.array([1, -2]))
                with pytest.raises(TypeError, match=r"^estimated_cost\[0\] must be an int, got float64$"):
                    await batcher.submit_batch(["x"], estimated_cost=numpy.array([1.0]))
                with pytest.raises(TypeError, match=r"^estimated_cost must be a sequence of ints or None, got dict$"):
                    await batcher.submit_batch(["x"], estimated_cost={0: 1})
                assert batcher.stats.total_submitted == 0


class TestTokenBatcherPricing:
    async def test_a_str_is_priced_by_its_text(self) -> None:
        batcher = TokenBatcher(echo)
        with anyio.fail_after(5):
            async with batcher:
                assert await batcher.call("x" * 40) == "x" * 40
        assert batcher.stats.total_batch_cost == Prompt("x" * 40).estimate_tokens() == 11

    async def test_falling_back_to_the_default_warns_once_per_type(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger="batcher")

        class Unpriced:
            pass

        batcher = TokenBatcher(echo, default_token_estimate=2)
        with anyio.fail_after(5):
            async with batcher:
                await batcher.submit_batch([1, 2, 3])
                await batcher.submit_batch([Unpriced(), Unpriced()])
                await batcher.submit_batch(["priced", Prompt("priced")])
        messages = [r.getMessage() for r in caplog.records if r.name == "batcher"]
        assert messages == [
            f"{kind} records have no cost of their own (no token_estimator, no estimate_tokens() or "
            "estimate_cost() method); each counts as default_token_estimate=2"
            for kind in ("int", "Unpriced")
        ]
        assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "batcher")

    @pytest.mark.parametrize(
        ("given", "named"),
        [
            ({}, "default_token_estimate=1"),
            ({"default_cost": 3}, "default_cost=3"),
            ({"default_token_estimate": 2, "default_cost": 3}, "default_token_estimate=2"),
        ],
    )
    async def test_the_warning_names_the_default_as_it_was_given(
        self, caplog: pytest.LogCaptureFixture, given: dict[str, Any], named: str
    ) -> None:
        caplog.set_level(logging.WARNING, logger="batcher")
        async with TokenBatcher(echo, **given) as batcher:
            await batcher.call(object())
        (message,) = [r.getMessage() for r in caplog.records if r.name == "batcher"]
        assert message.endswith(f"each counts as {named}")
        assert batcher.stats.total_batch_cost == int(named.rpartition("=")[2])

    async def test_dynamic_batcher_counts_records_by_default_without_warning(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="batcher")
        batcher = DynamicBatcher(echo)
        with anyio.fail_after(5):
            async with batcher:
                await batcher.submit_batch([1, 2, 3])
        assert batcher.stats.total_batch_cost == 3
        assert [r for r in caplog.records if r.name == "batcher"] == []
