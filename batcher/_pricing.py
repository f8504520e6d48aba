"""What a record costs: the explicit cost, the estimator, the record's own method,
or the default, with the names that error messages use for each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._protocols import CostEstimatorFn
from ._settings import check_int

__all__ = ("Pricing",)


class Pricing:
    """Prices records for one batcher.

    :param estimator: the estimator's parameter name, and the estimator
        (``record -> int``) or ``None``
    :param default: the default's parameter name, and the cost of a record that
        nothing else prices
    :param methods: methods a record may have to give its own cost, in order of
        precedence
    """

    __slots__ = ("_default", "_default_name", "_estimator", "_estimator_label", "_method_of", "_methods")

    def __init__(
        self, estimator: tuple[str, CostEstimatorFn[Any] | None], default: tuple[str, int], methods: tuple[str, ...]
    ) -> None:
        estimator_name, function = estimator
        if function is not None and not callable(function):
            raise TypeError(f"{estimator_name} must be callable or None, got {type(function).__name__}")
        self._estimator = function
        self._estimator_label = f"the cost from {estimator_name}"
        self._default_name, default_cost = default
        self._default = check_int(self._default_name, default_cost, 0)
        self._methods = methods
        # record type -> the method that gives its cost (or None), and its name for errors
        self._method_of: dict[type, tuple[str | None, str]] = {}

    def price(self, record: Any, cost: Any, name: str) -> int:
        """Return the record's cost: ``cost`` if given (``name`` is its parameter),
        else the estimator's, the record method's or the default.

        :raises TypeError: if the cost is not an ``int``
        :raises ValueError: if the cost is negative
        """
        if cost is None:
            if self._estimator is not None:
                cost, name = self._estimator(record), self._estimator_label
            else:
                kind = type(record)
                method, name = self._method_of.get(kind) or self._learn(kind)
                cost = self._default if method is None else getattr(record, method)()
        if type(cost) is not int or cost < 0:
            check_int(name, cost, 0)  # raises, naming where the cost came from
        return cost  # type: ignore[no-any-return]

    def check_all(self, costs: object, count: int, name: str) -> list[int]:
        """Return ``costs``, the explicit costs of ``count`` records given as the
        parameter ``name``, as a list, once every one is checked."""
        if isinstance(costs, (str, bytes)) or not isinstance(costs, Sequence):
            raise TypeError(f"{name} must be a sequence of ints or None, got {type(costs).__name__}")
        if len(costs) != count:
            raise ValueError(f"{name} has {len(costs)} items but records has {count}")
        for index, cost in enumerate(costs):
            if type(cost) is not int or cost < 0:
                check_int(f"{name}[{index}]", cost, 0)  # raises, naming the item
        return list(costs)

    def _learn(self, kind: type) -> tuple[str | None, str]:
        # Which method prices records of this type, and its name for errors; once per type.
        method = next((m for m in self._methods if callable(getattr(kind, m, None))), None)
        label = f"the cost from {kind.__name__}.{method}()" if method else self._default_name
        self._method_of[kind] = method, label
        return method, label
