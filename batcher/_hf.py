"""Token estimators backed by Hugging Face tokenizers.

Count with the tokenizer the model runs with, configured alike: a ``tokenizer.json``
may truncate to a different length than the model's inference code does (pass
``max_length`` to :func:`hf_token_estimator` to cap counts where the model truncates).
If the inference function tokenizes in a worker thread, give the estimator its own
instance: a ``transformers`` tokenizer reconfigures padding and truncation on every
call.

Results are memoised per text in a least-recently-used cache, so pricing a text that
was seen recently costs a dictionary lookup instead of a tokenizer run. The tokenizer
is called from whichever thread calls the estimator: the event loop thread, for
:meth:`~batcher.TokenBatcher.submit`. A tokenizer run blocks the event loop for some
tens of microseconds for a 30-token text; a cache hit costs about a tenth of a
microsecond.

Two tokenizer shapes are accepted, recognised by their methods rather than by
their types, so neither ``tokenizers`` nor ``transformers`` is imported here:

* a :class:`tokenizers.Tokenizer`, whose ``encode(text)`` returns an encoding with
  ``ids`` and ``attention_mask``. Padding configured on the tokenizer (many
  ``tokenizer.json`` files pad every text to a fixed length) is not counted;
  truncation configured on it is respected.
* a ``transformers`` tokenizer, whose ``encode(text)`` returns a list of ids, or
  any callable whose result maps ``"input_ids"`` to the ids (and maybe
  ``"attention_mask"`` to the real tokens): lists, arrays or tensors
  (``return_tensors=``), a batch of one row unwrapped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from os import PathLike
from typing import Any

from ._settings import check_int

__all__ = ("hf_token_estimator",)


def hf_token_estimator(
    tokenizer: object,
    *,
    cache_size: int = 8192,
    max_length: int | None = None,
) -> Callable[[object], int]:
    """Make a token estimator that counts tokens with a Hugging Face tokenizer.

    The returned function takes a record that is a :class:`str` or has a ``text``
    attribute holding a :class:`str` (such as :class:`~batcher.Prompt`) and returns the
    number of tokens the tokenizer produces for that text, special tokens (``[CLS]``,
    ``[SEP]``, BOS/EOS) included (for any other record it raises :exc:`TypeError`).
    Pass it as ``token_estimator`` to :class:`~batcher.TokenBatcher`.

    See the module's documentation for the tokenizers it takes, their configuration
    and the cache.

    :param tokenizer: a :class:`tokenizers.Tokenizer` or a ``transformers`` tokenizer
    :param cache_size: how many distinct texts to remember; ``0`` disables the cache
    :param max_length: if given, cap every count at this many tokens, matching a model
        that truncates its input to ``max_length``
    :return: a function from a record to its token count
    :raises TypeError: if ``tokenizer`` has neither API or is a name or a path, or if
        ``cache_size`` or ``max_length`` is not an :class:`int`
    :raises ValueError: if ``cache_size`` is negative or ``max_length`` is below 1

    Example::

        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file("tokenizer.json")
        batcher = TokenBatcher(embed, token_estimator=hf_token_estimator(tokenizer))
    """
    check_int("cache_size", cache_size, 0)
    if max_length is not None:
        check_int("max_length", max_length, 1)

    count: Callable[[str], int] = _token_counter(tokenizer)
    if max_length is not None:
        count = _capped(count, max_length)
    if cache_size:
        count = functools.lru_cache(maxsize=cache_size)(count)
    return _of_text(count)


def _of_text(count: Callable[[str], int]) -> Callable[[object], int]:
    # Counts the text of a record: a str, or its str ``text`` attribute.
    def estimate(record: object) -> int:
        if isinstance(record, str):
            return count(record)
        text = getattr(record, "text", None)
        if isinstance(text, str):
            return count(text)
        raise TypeError(f"record must be a str or have a str 'text' attribute, got {type(record).__name__}")

    return estimate


def _real_tokens(encoded: Any) -> int:
    """The real tokens in what a tokenizer made of one text: a ``tokenizers.Encoding``
    (``ids``, ``attention_mask``), a mapping (``"input_ids"``, maybe ``"attention_mask"``)
    or the ids themselves. Padding, which the attention mask marks, is not counted."""
    if isinstance(encoded, Mapping):
        mask = encoded.get("attention_mask")
        return int(sum(_row(mask))) if mask is not None else len(_row(encoded["input_ids"]))
    mask = getattr(encoded, "attention_mask", None)
    if mask is not None:
        return int(sum(_row(mask)))  # a mask of floats too
    return len(_row(getattr(encoded, "ids", encoded)))


def _row(values: Any, unwrap: bool = True) -> list[Any]:
    """One text's ids (or mask) as a flat list: an array or a tensor
    (``return_tensors=``) is read with ``tolist()``, and a batch of one row (a list
    or an array of them) unwrapped."""
    row: list[Any] = values if type(values) is list else values.tolist() if hasattr(values, "tolist") else list(values)
    first: Any = row[0] if row else None
    if unwrap and (isinstance(first, (list, tuple)) or getattr(first, "ndim", 0) > 0):
        if len(row) != 1:
            raise TypeError(f"the tokenizer made {len(row)} rows of ids of one text; expected one")
        row = _row(row[0], unwrap=False)
    return row


def _capped(count: Callable[[str], int], limit: int) -> Callable[[str], int]:
    def count_capped(text: str) -> int:
        return min(count(text), limit)

    return count_capped


def _token_counter(tokenizer: object) -> Callable[[str], int]:
    if isinstance(tokenizer, (str, bytes, PathLike)):
        # str has an encode() method too; a name or a path is a likely slip.
        raise TypeError(
            "tokenizer must be a loaded tokenizer, not a name or path; "
            "load it first, e.g. tokenizers.Tokenizer.from_pretrained(name)"
        )
    encode: Any = getattr(tokenizer, "encode", None)
    if callable(encode):
        return lambda text: _real_tokens(encode(text))
    if callable(tokenizer):
        call: Any = tokenizer
        return lambda text: _real_tokens(call(text))

    raise TypeError(
        "tokenizer must be a tokenizers.Tokenizer or a transformers tokenizer "
        f"(an object with an encode() method), got {type(tokenizer).__name__}"
    )
