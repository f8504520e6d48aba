"""A batcher's settings, checked once: a clear error naming the parameter,
before anything changes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeVar

from ._protocols import CostModel

__all__ = ("Settings", "check_callable", "check_int", "check_options", "check_seconds", "check_timeout")

F = TypeVar("F")


def check_int(name: str, value: object, minimum: int) -> int:
    # A setting is stored as given: a plain int only (costs take integers in all but type).
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return float(value)


def check_optional_seconds(name: str, value: object) -> float | None:
    """Seconds: a finite number >= 0, or ``None`` for no limit."""
    return None if value is None else check_seconds(name, value)


def check_timeout(name: str, value: object) -> float | None:
    """A time limit in seconds: a number > 0, or ``None`` for none."""
    return None if value is None else check_positive(name, value, or_none=True)


def check_positive(name: str, value: object, *, or_none: bool = False) -> float:
    """Seconds: a finite number > 0 (``or_none``: the message says ``None`` is fine too)."""
    try:
        seconds = check_seconds(name, value)
    except ValueError:
        seconds = 0.0  # negative or not finite: refused below, in words that also rule out 0
    if seconds == 0:
        raise ValueError(f"{name} must be a finite number > 0{', or None' if or_none else ''}, got {value}")
    return seconds


def check_options(priority: object, max_queue_delay_s: object) -> None:
    """Check the options every way of submitting takes."""
    if type(priority) is not int:
        raise TypeError(f"priority must be an int, got {type(priority).__name__}")
    check_timeout("max_queue_delay_s", max_queue_delay_s)


def check_callable(name: str, value: F) -> F:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """How a batcher forms and runs batches (see :class:`DynamicBatcher` for each).

    ``target_name`` is the name error messages give ``target_batch_cost``
    (``TokenBatcher`` may call it ``target_batch_tokens``).
    """

    target_batch_cost: int
    max_batch_size: int
    min_batch_size: int
    batch_timeout_s: float
    max_queue_size: int
    prefetch_batches: int
    eager_dispatch: bool
    max_concurrent_batches: int
    cost_model: CostModel
    group_by_cost: bool
    process_timeout_s: float | None
    min_padding_efficiency: float | None = None
    max_queued_cost: int | None = None
    max_queue_delay_s: float | None = None
    priority_aging_s: float | None = 1.0
    stream_buffer: int = 64
    stream_stall_s: float = 1.0
    target_name: str = "target_batch_cost"

    def __post_init__(self) -> None:
        check_int(self.target_name, self.target_batch_cost, 1)
        check_int("max_batch_size", self.max_batch_size, 1)
        check_int("min_batch_size", self.min_batch_size, 1)
        if self.min_batch_size > self.max_batch_size:
            raise ValueError(
                f"min_batch_size must be <= max_batch_size, got {self.min_batch_size} > {self.max_batch_size}"
            )
        check_seconds("batch_timeout_s", self.batch_timeout_s)
        check_int("max_queue_size", self.max_queue_size, 1)
        check_int("prefetch_batches", self.prefetch_batches, 0)
        check_int("max_concurrent_batches", self.max_concurrent_batches, 1)
        for flag in ("eager_dispatch", "group_by_cost"):
            if type(value := getattr(self, flag)) is not bool:  # "no" or None would be taken as true or false
                raise TypeError(f"{flag} must be True or False, got {type(value).__name__}")
        if self.cost_model not in ("sum", "padded", "measured"):
            raise ValueError(f"cost_model must be 'sum', 'padded' or 'measured', got {self.cost_model!r}")
        check_timeout("process_timeout_s", self.process_timeout_s)
        if self.min_padding_efficiency is not None:
            self._check_efficiency(self.min_padding_efficiency)
        if self.max_queued_cost is not None:
            check_int("max_queued_cost", self.max_queued_cost, 1)
        check_timeout("max_queue_delay_s", self.max_queue_delay_s)
        if self.priority_aging_s is not None:
            check_seconds("priority_aging_s", self.priority_aging_s)
        check_int("stream_buffer", self.stream_buffer, 1)
        check_positive("stream_stall_s", self.stream_stall_s)

    @classmethod
    def named(cls, target: tuple[str, int], **settings: Any) -> Settings:
        """Settings whose ``target_batch_cost`` comes with the name messages give it,
        as ``("target_batch_tokens", 4096)``."""
        name, value = target
        return cls(target_batch_cost=value, target_name=name, **settings)

    def _check_efficiency(self, floor: object) -> None:
        if isinstance(floor, bool) or not isinstance(floor, (int, float)):
            raise TypeError(f"min_padding_efficiency must be a number or None, got {type(floor).__name__}")
        if not 0 < floor <= 1:
            raise ValueError(f"min_padding_efficiency must be > 0 and <= 1, got {floor}")
        if self.cost_model != "padded":
            raise ValueError(
                "min_padding_efficiency needs cost_model='padded' (with 'measured' the batcher chooses the "
                f"padding of each batch itself), got cost_model={self.cost_model!r}"
            )

    @property
    def grouping_window(self) -> int:
        """How deep the grouping pool gets before a batch closes without a free worker."""
        return max(self.max_queue_size, self.max_batch_size)
