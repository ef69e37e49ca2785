"""Token shards on disk: tokenise a source once, cache it, load it memory-mapped.

One code path for every source (embedded, local files, fineweb-edu): documents -> tokenizer -> ids
(uint16, each document followed by the tokenizer's end-of-text id) -> a train and a held-out split ->
``.bin`` shards of at most :data:`SHARD_TOKENS` tokens plus ``meta.json``, in
``<cache>/tokens/<key>/``. The key hashes everything that determines the shards (the source, the
tokenizer's hash, ``max_tokens``, ``heldout_fraction``, :data:`FORMAT`), so a change of any of them makes
new shards and nothing is overwritten.

Held-out split, by document: a document goes to held-out while the held-out share of the tokens so far is
below ``heldout_fraction`` (greedy, in stream order), so the share tracks the fraction closely and the
split does not depend on how much of a stream was read.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specroute.data.embedded import cached_embedded_documents
from specroute.data.sources import fineweb_documents, local_documents
from specroute.data.tokenizer import DataUnavailable, Tokenizer, load_tokenizer
from specroute.spec.models import EmbeddedData, FinewebEduData, LocalData
from specroute.store import (atomic_write_json, cache_dir, publish_dir, sha256_file, sha256_json, temp_dir_beside,
                             writing)
from specroute.text import plural

#: Version of the shard layout; part of every cache key.
FORMAT = 1
#: Tokens per shard file (128 MiB of uint16).
SHARD_TOKENS = 1 << 26
#: Documents tokenised per batch (the GPT-2 tokenizer encodes a batch in parallel).
DOCS_PER_BATCH = 256

Progress = Callable[[int, int | None], None]


@dataclass
class TokenData:
    """A tokenised corpus: memory-mapped train and held-out shards plus what identifies them.

    ``meta`` has the summary's ``data`` keys (kind, corpus_sha256, tokenizer, tokenizer_sha256,
    train_tokens, heldout_tokens, unigram_entropy_nats) and provenance (source, documents, cache_key).
    """

    train: list[np.ndarray]
    heldout: list[np.ndarray]
    meta: dict[str, Any]
    path: Path | None = None
    vocab_size: int = field(default=0)

    def summary(self) -> dict[str, Any]:
        keys = ("kind", "corpus_sha256", "tokenizer", "tokenizer_sha256", "train_tokens", "heldout_tokens",
                "unigram_entropy_nats")
        return {k: self.meta[k] for k in keys}


def prepare_data(
    data: EmbeddedData | LocalData | FinewebEduData,
    spec_dir: Path | None = None,
    cache: str | Path | None = None,
    progress: Progress | None = None,
    tokenizer_file: Path | None = None,
) -> TokenData:
    """Tokenise the spec's data into cached shards (or reuse them) and load them.

    Args:
        data: the spec's ``data`` section.
        spec_dir: folder that relative ``data.paths`` are resolved against (the spec file's folder).
        cache: cache root override (see :func:`specroute.store.cache_dir`).
        progress: called with (tokens so far, target or None) while tokenising.
        tokenizer_file: the ``tokenizer.json`` of ``data.tokenizer: pretrained`` (the checkpoint's).
    Raises:
        DataUnavailable: offline without a cached copy, missing files or columns, a corpus too small.
        UserError: the cache cannot be written (disk full, read-only, no permission), naming it; the
            half-written shards are removed.
    """
    tokenizer = load_tokenizer(data.tokenizer, cache, tokenizer_file)
    docs: Iterable[str]
    max_tokens: int | None = getattr(data, "max_tokens", None)
    if isinstance(data, EmbeddedData):
        texts = [t for _, t in cached_embedded_documents(cache_dir(cache))]
        source = {"kind": "embedded", "corpus_sha256": corpus_hash(texts)}
        docs = texts
    elif isinstance(data, LocalData):
        paths = [_resolve(p, spec_dir) for p in data.paths]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DataUnavailable(f"{'data file' if len(missing) == 1 else 'data files'} not found: {missing} (data.paths are relative to the "
                                  f"spec file's folder {spec_dir})")
        source = {"kind": "local", "files": [[p.name, sha256_file(p)] for p in paths],
                  "text_column": data.text_column}
        docs = local_documents(paths, data.text_column)
    else:
        source = {"kind": "fineweb_edu", "dataset": data.dataset, "config": data.config}
        docs = _lazy(lambda: fineweb_documents(data.dataset, data.config))
    key = sha256_json({"format": FORMAT, "source": source, "tokenizer": tokenizer.sha256,
                       "max_tokens": max_tokens, "heldout_fraction": data.heldout_fraction})[:20]
    target = cache_dir(cache) / "tokens" / key
    if not (target / "meta.json").is_file():
        tmp = temp_dir_beside(target)
        try:
            meta = write_shards(docs, tokenizer, tmp, data.heldout_fraction, max_tokens, progress)
            meta.update(kind=data.kind, source=source, cache_key=key)
            atomic_write_json(tmp / "meta.json", meta)
            publish_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return load_shards(target, tokenizer.vocab_size)


def _lazy(make: Callable[[], Iterator[str]]) -> Iterator[str]:
    yield from make()


def _resolve(p: str, spec_dir: Path | None) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() or spec_dir is None else (spec_dir / path)


def corpus_hash(texts: Iterable[str]) -> str:
    """sha256 of the documents' UTF-8 text, each followed by a NUL byte."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


class _ShardWriter:
    """Appends token ids and writes them as shard files of SHARD_TOKENS tokens (the last one shorter)."""

    def __init__(self, folder: Path, prefix: str):
        self.folder, self.prefix = folder, prefix
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.total = 0
        self.files: list[list[Any]] = []

    def add(self, ids: np.ndarray) -> None:
        self.buffer.append(ids)
        self.buffered += len(ids)
        self.total += len(ids)
        while self.buffered >= SHARD_TOKENS:
            data = np.concatenate(self.buffer)
            self._write(data[:SHARD_TOKENS])
            rest = data[SHARD_TOKENS:]
            self.buffer, self.buffered = [rest], len(rest)

    def close(self) -> None:
        if self.buffered:
            self._write(np.concatenate(self.buffer))
        self.buffer, self.buffered = [], 0

    def _write(self, chunk: np.ndarray) -> None:
        name = f"{self.prefix}_{len(self.files):04d}.bin"
        # not ndarray.tofile: its error on a full disk has no errno
        with writing(self.folder.parent, "write the token cache in"), open(self.folder / name, "wb") as f:
            f.write(memoryview(chunk.astype(np.uint16)))
        self.files.append([name, int(len(chunk))])


def write_shards(
    docs: Iterable[str],
    tokenizer: Tokenizer,
    folder: Path,
    heldout_fraction: float,
    max_tokens: int | None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Tokenise ``docs`` into ``folder``; return the meta (without kind/source/cache_key).

    Raises DataUnavailable when the corpus yields no tokens or no held-out document.
    """
    train, heldout = _ShardWriter(folder, "train"), _ShardWriter(folder, "heldout")
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    h = hashlib.sha256()
    n_docs = 0
    done = False
    batch: list[str] = []

    def consume(batch: list[str]) -> bool:
        train_ids: list[np.ndarray] = []
        try:
            return consume_docs(batch, train_ids)
        finally:  # one bincount per batch, not per document (the vocabulary can be 50k wide)
            if train_ids:
                counts[:] += np.bincount(np.concatenate(train_ids), minlength=tokenizer.vocab_size)

    def consume_docs(batch: list[str], train_ids: list[np.ndarray]) -> bool:
        nonlocal n_docs
        for text, ids in zip(batch, tokenizer.encode_batch(batch)):
            h.update(text.encode("utf-8"))
            h.update(b"\x00")
            n_docs += 1
            ids = np.append(ids, np.uint16(tokenizer.eot))
            total = train.total + heldout.total
            if max_tokens is not None and total + len(ids) >= max_tokens:
                ids = ids[: max_tokens - total]
            if heldout.total < heldout_fraction * total:
                heldout.add(ids)
            else:
                train.add(ids)
                train_ids.append(ids)
            if progress is not None:
                progress(train.total + heldout.total, max_tokens)
            if max_tokens is not None and train.total + heldout.total >= max_tokens:
                return True
        return False

    for text in docs:
        batch.append(text)
        if len(batch) >= DOCS_PER_BATCH:
            done = consume(batch)
            batch = []
            if done:
                break
    if batch and not done:
        consume(batch)
    train.close()
    heldout.close()
    if train.total == 0 or heldout.total == 0:
        raise DataUnavailable(f"the corpus gave {train.total} train and {heldout.total} held-out tokens "
                              f"from {plural(n_docs, 'document')}; it needs at least two documents")
    return {
        "corpus_sha256": h.hexdigest(),
        "tokenizer": tokenizer.name,
        "tokenizer_sha256": tokenizer.sha256,
        "vocab_size": tokenizer.vocab_size,
        "documents": n_docs,
        "train_tokens": int(train.total),
        "heldout_tokens": int(heldout.total),
        "unigram_entropy_nats": entropy_nats(counts),
        "train_shards": train.files,
        "heldout_shards": heldout.files,
        "heldout_fraction": heldout_fraction,
        "max_tokens": max_tokens,
    }


def load_shards(folder: Path, vocab_size: int = 0) -> TokenData:
    """Memory-map the shards of a prepared corpus folder."""
    meta = json.loads((folder / "meta.json").read_text())

    def maps(files: list[list[Any]]) -> list[np.ndarray]:
        return [np.memmap(folder / name, dtype=np.uint16, mode="r", shape=(n,)) for name, n in files]

    return TokenData(maps(meta["train_shards"]), maps(meta["heldout_shards"]), meta, folder,
                     vocab_size or meta["vocab_size"])


def entropy_nats(counts: np.ndarray) -> float:
    """Entropy (nats) of the distribution given by ``counts``."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum()) if len(p) else math.nan
