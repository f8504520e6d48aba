"""Token estimators backed by Hugging Face tokenizers.

Count with the tokenizer the model runs with, configured alike: a ``tokenizer.json``
may truncate to a different length than the model's inference code does (pass
``max_length`` to :func:`hf_token_estimator` to cap counts where the model truncates).
If the inference function tokenizes in a worker thread, give the estimator its own
instance: a ``transformers`` tokenizer reconfigures padding and truncation on every
call.

Results are memoised per text in a least-recently-used cache, so pricing a text that
was seen recently costs a dictionary lookup instead of a tokenizer run (texts up to
``CACHED_CHARS``, 16,384 characters: longer ones are counted afresh, so the cache holds
at most ``cache_size`` times that). The tokenizer is called from whichever thread calls
the estimator: the event loop thread, for :meth:`~batcher.TokenBatcher.submit`. A
tokenizer run blocks the event loop for some tens of microseconds for a 30-token text,
and about a microsecond a character for long ones (all-MiniLM-L6-v2's: 8 ms for 16,384
characters, 54 ms for 100,000); a cache hit costs about a tenth of a microsecond. With
``max_length``, a text over twice ``HEAD_CHARS_PER_TOKEN * max_length`` characters is
first counted by its head alone, cut at a space, and only if that does not pass the cap
by ``HEAD_SLACK`` tokens is the whole text read: a long document costs what its head
does (see ``_capped`` for the tokenizers this holds for).

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
import sys
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from os import PathLike
from typing import Any

from ._settings import check_int

__all__ = ("CACHED_CHARS", "hf_token_estimator")

#: The longest text the cache remembers: a longer one is counted afresh each time
#: (the cache would keep it alive: 8,192 texts of 1 MB hold 8 GB).
CACHED_CHARS = 16_384

#: With ``max_length``: how many characters a token is given in the head of a long
#: text counted first (most text takes 3-5 a token), and how many tokens past the cap
#: that head must count for the text to be taken as over it.
HEAD_CHARS_PER_TOKEN = 8
HEAD_SLACK = 8


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
    :param cache_size: how many distinct texts (of up to ``CACHED_CHARS`` characters)
        to remember; ``0`` disables the cache
    :param max_length: if given, cap every count at this many tokens, matching a model
        that truncates its input to ``max_length``
    :return: a function from a record to its token count
    :raises TypeError: if ``tokenizer`` has neither API or is a name, a path or a
        class, or if ``cache_size`` or ``max_length`` is not an :class:`int`
    :raises ValueError: if ``cache_size`` is negative or over ``sys.maxsize``, or
        ``max_length`` is below 1

    The function raises :exc:`TypeError` where the tokenizer gives no ids for a text
    (a mapping without ``"input_ids"``; floats, as a model's ``encode`` gives).

    Example::

        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file("tokenizer.json")
        batcher = TokenBatcher(embed, token_estimator=hf_token_estimator(tokenizer))
    """
    if check_int("cache_size", cache_size, 0) > sys.maxsize:
        raise ValueError(f"cache_size must be at most sys.maxsize ({sys.maxsize}), got {cache_size}")
    if max_length is not None:
        check_int("max_length", max_length, 1)

    count: Callable[[str], int] = _token_counter(tokenizer)
    if max_length is not None:
        count = _capped(count, max_length)
    if cache_size:
        count = _cached(count, cache_size)
    return _of_text(count)


def _cached(count: Callable[[str], int], size: int) -> Callable[[str], int]:
    """``count`` with its recent texts remembered, those up to ``CACHED_CHARS`` long."""
    remembered = functools.lru_cache(maxsize=size)(count)

    def count_cached(text: str) -> int:
        if len(text) > CACHED_CHARS:
            return count(text)
        return remembered(text if type(text) is str else str.__str__(text))  # a subclass may not hash

    return count_cached


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
        if mask is not None:
            return int(sum(_row(mask)))
        if "input_ids" not in encoded:
            raise TypeError(f"the tokenizer returned a mapping with no 'input_ids': {sorted(map(str, encoded))[:8]}")
        return len(_ids(encoded["input_ids"]))
    if type(encoded) is list and len(encoded) == 1 and hasattr(encoded[0], "ids"):
        encoded = encoded[0]  # encode_batch([text]): one Encoding
    mask = getattr(encoded, "attention_mask", None)
    if mask is not None:
        return int(sum(_row(mask)))  # a mask of floats too
    return len(_ids(getattr(encoded, "ids", encoded)))


def _ids(values: Any) -> list[Any]:
    """One text's ids (or its tokens as strings), refusing floats: a model's ``encode``
    gives a vector of them."""
    row = _row(values)
    if row and isinstance(row[0], Real) and not isinstance(row[0], Integral):
        raise TypeError(
            f"the tokenizer gave {len(row)} values of type {type(row[0]).__name__} for one text, not token ids; "
            "pass the model's tokenizer (for a SentenceTransformer, model.tokenizer), not the model"
        )
    return row


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
    """``count`` capped at ``limit``. A text far longer than ``limit`` tokens need is
    first counted by its head, cut at a space: if that alone passes the cap (by
    ``HEAD_SLACK``), so does the text, and the rest is never tokenized. Only at a
    space: a word cut short may count more tokens than the whole word (WordPiece
    reads a word over 100 characters as one ``[UNK]``), and a head with none is not
    used. This holds for tokenizers that split words at spaces (BERT's, GPT-2's byte
    level, SentencePiece's ``▁``)."""
    head = HEAD_CHARS_PER_TOKEN * limit

    def count_capped(text: str) -> int:
        if len(text) > 2 * head:
            cut = text.rfind(" ", head // 2, head)
            if cut > 0 and count(text[:cut]) >= limit + HEAD_SLACK:
                return limit
        return min(count(text), limit)

    return count_capped


def _token_counter(tokenizer: object) -> Callable[[str], int]:
    if isinstance(tokenizer, (str, bytes, PathLike)):
        # str has an encode() method too; a name or a path is a likely slip.
        raise TypeError(
            "tokenizer must be a loaded tokenizer, not a name or path; "
            "load it first, e.g. tokenizers.Tokenizer.from_pretrained(name)"
        )
    if isinstance(tokenizer, type):
        raise TypeError(
            f"tokenizer must be a loaded tokenizer, not the class {tokenizer.__name__}; "
            f"load one first, e.g. {tokenizer.__name__}.from_pretrained(name)"
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
