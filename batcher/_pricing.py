"""What a record costs: the explicit cost, the estimator, the record's own method,
or the default, with the names that error messages use for each; and ``Prompt``,
a text that knows its own token count."""

from __future__ import annotations

import inspect
import logging
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Set, Sized
from dataclasses import dataclass
from types import MemberDescriptorType
from typing import Any, SupportsIndex

from ._model import is_async
from ._protocols import CostEstimatorFn

__all__ = ("Pricing", "Prompt", "check_cost", "check_estimator", "text_tokens")

logger = logging.getLogger("batcher")


def check_cost(name: str, cost: object) -> int:
    """Return ``cost`` as a plain ``int``: an ``int``, or an integer in all but type
    (anything with ``__index__``, such as ``numpy.int64``), but not a ``bool``.

    :raises TypeError: if ``cost`` is not an integer
    :raises ValueError: if ``cost`` is negative, or past ``MAX_COST``
    """
    if type(cost) is not int:
        if isinstance(cost, bool) or not isinstance(cost, SupportsIndex):
            if inspect.iscoroutine(cost):
                cost.close()  # never awaited: no warning of it
                raise TypeError(f"{name} must be an int, got a coroutine (from an async function: use a plain one)")
            raise TypeError(f"{name} must be an int, got {type(cost).__name__}")
        try:
            cost = operator.index(cost)
        except TypeError:  # a type whose __index__ refuses this value (a numpy array of 1 or more dimensions)
            raise TypeError(f"{name} must be an int, got {type(cost).__name__}") from None
    if not 0 <= cost <= MAX_COST:
        raise ValueError(f"{name} must be >= 0, got {cost}" if cost < 0 else f"{name} must be at most 2**63 - 1")
    return cost


#: The largest cost a record may have: past it, sums and averages of costs overflow floats.
MAX_COST = 2**63 - 1


class Pricing:
    """Prices records for one batcher.

    :param estimator: the estimator's parameter name, and the estimator
        (``record -> int``) or ``None``
    :param default: the default's parameter name, and the cost of a record that
        nothing else prices
    :param methods: methods a record may have to give its own cost, in order of
        precedence
    :param by_type: how to price records of a type that has none of ``methods``
        (``TokenBatcher`` counts a ``str``'s tokens)
    :param warn_default: log a warning, once per record type, for a type that
        falls back to the default
    """

    __slots__ = (
        "_by_type",
        "_default",
        "_default_name",
        "_estimator",
        "_estimator_label",
        "_estimator_name",
        "_method_of",
        "_methods",
        "_warn_default",
        "_warned",
    )

    def __init__(
        self,
        estimator: tuple[str, CostEstimatorFn[Any] | None],
        default: tuple[str, int],
        methods: tuple[str, ...],
        *,
        by_type: Mapping[type, Callable[[Any], int]] | None = None,
        warn_default: bool = False,
    ) -> None:
        self._estimator_name, function = estimator
        self._estimator = check_estimator(self._estimator_name, function)
        self._estimator_label = f"the cost from {self._estimator_name}"
        self._default_name, default_cost = default
        self._default = check_cost(self._default_name, default_cost)  # a cost: numpy.int64 too
        self._methods = methods
        self._by_type = dict(by_type or {})
        self._warn_default = warn_default
        self._warned: set[type] = set()  # the record types whose fallback to the default was logged
        # record type -> what gives its cost (None: the default), and its name for errors
        self._method_of: dict[type, tuple[Callable[[Any], Any] | None, str]] = {}

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
                cost = self._default if method is None else method(record)
        if type(cost) is not int or not 0 <= cost <= MAX_COST:
            cost = check_cost(name, cost)  # converts an integer in all but type, or raises
        return cost  # type: ignore[no-any-return]

    def priced(self, records: list[Any], costs: object | None, name: str, chunk: int) -> Iterator[list[int]]:
        """The costs of ``records``, ``chunk`` at a time: those given in ``costs``, all
        checked before the first chunk, or else each record priced as :meth:`price` does."""
        checked = None if costs is None else self.check_all(costs, len(records), name)
        for start in range(0, len(records), chunk):
            if checked is not None:
                yield checked[start : start + chunk]
            else:
                yield [self.price(record, None, name) for record in records[start : start + chunk]]

    def check_all(self, costs: object, count: int, name: str) -> list[int]:
        """Return ``costs``, the explicit costs of ``count`` records given as the
        parameter ``name`` (a sequence, or any sized iterable such as a numpy
        array), as a list of plain ``int``, once every one is checked."""
        if isinstance(costs, (str, bytes, Mapping, Set)) or not (
            isinstance(costs, Sized) and isinstance(costs, Iterable)
        ):
            raise TypeError(f"{name} must be a sequence of ints or None, got {type(costs).__name__}")
        if len(costs) != count:
            raise ValueError(f"{name} has {len(costs)} items but records has {count}")
        return [
            cost if type(cost) is int and 0 <= cost <= MAX_COST else check_cost(f"{name}[{index}]", cost)
            for index, cost in enumerate(costs)
        ]

    def _learn(self, kind: type) -> tuple[Callable[[Any], Any] | None, str]:
        # What prices records of this type, and its name for errors; once per type.
        entry: tuple[Callable[[Any], Any] | None, str]
        method = self._method_of_class(kind)
        fallback = next((fn for base, fn in self._by_type.items() if issubclass(kind, base)), None)
        if method is not None:
            entry = operator.methodcaller(method), f"the cost from {kind.__name__}.{method}()"
        elif fallback is not None:
            entry = fallback, f"the cost of a {kind.__name__}"
        elif self._may_carry_own(kind):
            methods = " or ".join(f"{m}()" for m in self._methods)
            entry = self._own_or_default, f"the cost from {kind.__name__}'s {methods}"
        else:
            entry = None, self._default_name
            self._warn(kind)
        self._method_of[kind] = entry
        return entry

    def _method_of_class(self, kind: type) -> str | None:
        """The first of the cost methods that ``kind`` defines, if any.

        :raises TypeError: if it is an ``async def`` (nothing is learnt: every submit is refused alike)
        """
        method = next((m for m in self._methods if _class_method(kind, m)), None)
        if method is not None and is_async(getattr(kind, method)):
            raise TypeError(f"{kind.__name__}.{method}() must be a plain method returning an int, not an async one")
        return method

    def _may_carry_own(self, kind: type) -> bool:
        """Whether records of ``kind``, whose class has none of the cost methods, may
        carry one of their own: in their ``__dict__``, in a slot, or from ``__getattr__``
        (not where the class gives the name to something else, a property say)."""
        found = [inspect.getattr_static(kind, name, None) for name in self._methods]
        if any(value is not None and not isinstance(value, MemberDescriptorType) for value in found):
            return False
        return bool(kind.__dictoffset__) or hasattr(kind, "__getattr__") or any(found)

    def _own_or_default(self, record: Any) -> Any:
        # Looked up on each record. A lookup that fails in any way finds nothing: a
        # record's __getattr__ may raise KeyError (a dict with attribute access).
        for name in self._methods:
            try:
                method = getattr(record, name, None)
            except Exception:
                method = None
            if callable(method):
                return check_cost(f"the cost from {type(record).__name__}.{name}()", method())
        self._warn(type(record))
        return self._default

    def _warn(self, kind: type) -> None:
        # Once per record type that falls back to the default, if asked to.
        if self._warn_default and kind not in self._warned:
            self._warned.add(kind)
            logger.warning(
                "%s records have no cost of their own (no %s, no %s method); each counts as %s=%d",
                kind.__name__,
                self._estimator_name,
                " or ".join(f"{m}()" for m in self._methods),
                self._default_name,
                self._default,
            )


def check_estimator(name: str, function: CostEstimatorFn[Any] | None) -> CostEstimatorFn[Any] | None:
    """``function``, a cost estimator (``record -> int``) or ``None``, checked."""
    if function is not None and not callable(function):
        raise TypeError(f"{name} must be callable or None, got {type(function).__name__}")
    if function is not None and is_async(function):
        raise TypeError(f"{name} must be a plain function returning an int, not an async one")
    return function


def _class_method(kind: type, name: str) -> bool:
    # Whether the class itself (its MRO, not its metaclass's __getattr__) has a method of that name.
    if inspect.getattr_static(kind, name, None) is None:
        return False
    try:
        return callable(getattr(kind, name))
    except Exception:  # a descriptor that fails on the class
        return False


@dataclass(slots=True)
class Prompt:
    """A text prompt that estimates its own token count (about 4 characters a token)."""

    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Prompt text must be a str, got {type(self.text).__name__}")

    def estimate_tokens(self) -> int:
        return text_tokens(self.text)


def text_tokens(text: str) -> int:
    """About how many tokens a text has: 4 characters a token (how ``TokenBatcher``
    prices a ``str`` record and a :class:`Prompt`)."""
    return len(text) // 4 + 1
