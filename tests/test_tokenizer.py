"""Tokenizer: fixed special ids, context assembly and truncation, decoding back to normalised text."""

from __future__ import annotations

import pytest

from models.tokenizer import SPECIAL_TOKENS, DialogueTokenizer

TEXTS = [
    "hello , how are you ?",
    "i'm fine , thanks . and you ?",
    "what time is it now ?",
    "it's half past ten .",
] * 20


@pytest.fixture(scope="module")
def tok() -> DialogueTokenizer:
    return DialogueTokenizer.train(TEXTS, vocab_size=120, min_frequency=1)


def test_train_assigns_fixed_special_ids(tok: DialogueTokenizer) -> None:
    assert [tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.sep_id] == [0, 1, 2, 3, 4]
    assert SPECIAL_TOKENS == ["<pad>", "<s>", "</s>", "<unk>", "<sep>"]


def test_decode_round_trips_normalised_text(tok: DialogueTokenizer) -> None:
    ids = tok.encode_texts(["Hello, how are you?"])[0]
    assert tok.decode(ids) == "hello , how are you ?"
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == "hello , how are you ?"


def test_encode_contexts_joins_turns_with_sep(tok: DialogueTokenizer) -> None:
    a, b = tok.encode_texts(["hello", "it's half past ten ."])
    assert tok.encode_contexts([["hello", "it's half past ten ."]], max_len=100) == [
        [*a, tok.sep_id, *b]
    ]


def test_encode_contexts_keeps_the_most_recent_tokens(tok: DialogueTokenizer) -> None:
    full = tok.encode_contexts([["hello , how are you ?", "what time is it now ?"]], max_len=100)[0]
    cut = tok.encode_contexts([["hello , how are you ?", "what time is it now ?"]], max_len=5)[0]
    assert cut == full[-5:]


def test_encode_responses_leaves_room_for_eos(tok: DialogueTokenizer) -> None:
    ids = tok.encode_responses(["i'm fine , thanks . and you ?"], max_len=4)[0]
    assert len(ids) == 3


def test_decoder_io_shifts_by_one(tok: DialogueTokenizer) -> None:
    tgt_in, tgt_out = tok.decoder_io([[7, 8], [9]])
    assert tgt_in.tolist() == [[1, 7, 8], [1, 9, 0]]
    assert tgt_out.tolist() == [[7, 8, 2], [9, 2, 0]]


def test_serialisation_round_trip(tok: DialogueTokenizer) -> None:
    again = DialogueTokenizer.from_str(tok.to_str())
    assert again.encode_texts(TEXTS[:4]) == tok.encode_texts(TEXTS[:4])


def test_a_few_texts_encode_one_by_one_as_the_batch_path_does(tok: DialogueTokenizer) -> None:
    """A request's turns skip the thread pool (``SEQUENTIAL_TEXTS``); the ids are the same."""
    from models.tokenizer import SEQUENTIAL_TEXTS

    texts = [f"{t} number {i}" for i, t in enumerate(TEXTS[: SEQUENTIAL_TEXTS + 5])]
    batched = tok.encode_texts(texts)  # more than SEQUENTIAL_TEXTS: encode_batch
    one_by_one = [ids for t in texts for ids in tok.encode_texts([t])]
    few = tok.encode_texts(texts[:SEQUENTIAL_TEXTS])
    assert len(texts) > SEQUENTIAL_TEXTS
    assert one_by_one == batched and few == batched[:SEQUENTIAL_TEXTS]
