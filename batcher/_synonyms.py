"""TokenBatcher's synonyms: each token-named argument (``target_batch_tokens``,
``token_estimator``, ``default_token_estimate``, ``estimated_tokens``) and the
cost-named one it stands for. The token name takes precedence; a cost-named value it
shadows is still checked, so that a bad one is refused rather than ignored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ._pricing import Pricing, check_cost, check_estimator, text_tokens
from ._protocols import CostEstimatorFn, ProcessFn, RecordT, ResultT
from ._settings import check_callable, check_int

__all__ = ("check_target", "either", "parts")

T = TypeVar("T")
U = TypeVar("U")


def either(
    name: str, value: T | None, fallback_name: str, fallback: U, check: Callable[[str, Any], object] | None = None
) -> tuple[str, T | U]:
    """The token-named argument if it was given, else the cost-named one, with the
    name that messages use (the token name when neither was given). With ``check``, a
    cost-named value that the token-named one shadows is checked all the same."""
    if value is not None:
        if check is not None and fallback is not None:
            check(fallback_name, fallback)
        return name, value
    return (name if fallback is None else fallback_name), fallback


def check_target(name: str, value: object) -> None:
    check_int(name, value, 1)


def parts(
    inference_fn: ProcessFn[RecordT, ResultT] | None,
    process_fn: ProcessFn[RecordT, ResultT] | None,
    token_estimator: CostEstimatorFn[Any] | None,
    cost_estimator: CostEstimatorFn[Any] | None,
    default_token_estimate: int | None,
    default_cost: int | None,
) -> tuple[ProcessFn[RecordT, ResultT], Pricing]:
    """The inference function and the pricing, from TokenBatcher's arguments."""
    pricing = _token_pricing(token_estimator, cost_estimator, default_token_estimate, default_cost)
    return _inference_fn(inference_fn, process_fn), pricing


def _inference_fn(
    inference_fn: ProcessFn[RecordT, ResultT] | None, process_fn: ProcessFn[RecordT, ResultT] | None
) -> ProcessFn[RecordT, ResultT]:
    """The inference function by either of its names, checked."""
    name, function = either("inference_fn", inference_fn, "process_fn", process_fn, check_callable)
    if function is None:
        raise TypeError("TokenBatcher requires either inference_fn or process_fn")
    return check_callable(name, function)


def _token_pricing(
    token_estimator: CostEstimatorFn[Any] | None,
    cost_estimator: CostEstimatorFn[Any] | None,
    default_token_estimate: int | None,
    default_cost: int | None,
) -> Pricing:
    """TokenBatcher's pricing: the estimator and default by whichever name was given,
    then ``estimate_tokens()`` or ``estimate_cost()``; a ``str`` is priced by its text,
    and a record that falls back to the default (1 unless given) is warned about
    once per type, naming the setting by the name it was given (the token name if none)."""
    name, default = either("default_token_estimate", default_token_estimate, "default_cost", default_cost, check_cost)
    return Pricing(
        either("token_estimator", token_estimator, "cost_estimator", cost_estimator, check_estimator),
        (name, 1 if default is None else default),
        ("estimate_tokens", "estimate_cost"),
        by_type={str: text_tokens},
        warn_default=True,
    )
