"""Tokenizers: ``bytes`` (UTF-8 bytes) and ``gpt2`` (GPT-2's byte-level BPE via ``tokenizers``).

Every tokenizer has a ``sha256`` that identifies it in reports and cache keys:

- ``bytes``: the hash of :data:`BYTES_DESCRIPTION` (the tokenizer *is* that description);
- ``gpt2``: the hash of its vocabulary and merges in canonical JSON, so the same tokenizer hashes the
  same whichever copy of ``tokenizer.json`` it was read from.

Documents are separated by an end-of-text id: 0 (the NUL byte) for ``bytes``, ``<|endoftext|>`` (50256)
for ``gpt2``.

Where the GPT-2 tokenizer comes from, first hit wins:

1. ``$SPECROUTE_GPT2_TOKENIZER``: a ``tokenizer.json`` file, or a folder holding one;
2. ``<cache>/tokenizers/gpt2/tokenizer.json`` (see :func:`specroute.store.cache_dir`);
3. the Hugging Face hub cache (``openai-community/gpt2`` or ``gpt2``), if a copy is there;
4. a download from the hub into (2), when the hub is reachable.

Offline with none of these, :func:`load_tokenizer` fails at once with a message naming the alternatives.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from specroute.store import UserError, atomic_write_bytes, cache_dir, sha256_bytes, sha256_json

BYTES_DESCRIPTION = "specroute tokenizer 'bytes' v1: token id = UTF-8 byte value (0-255); document separator 0"
GPT2_REPOS = ("openai-community/gpt2", "gpt2")
GPT2_EOT = "<|endoftext|>"
#: Most token ids a tokenizer may have: the shards store ids as uint16 (:mod:`specroute.data.shards`).
MAX_VOCAB_IDS = 1 << 16


class DataUnavailable(UserError):
    """The data or tokenizer a spec asks for cannot be had here (e.g. offline); the message says what
    to use instead."""


ALTERNATIVES = (
    "Alternatives that need no network:\n"
    "  - data.kind: embedded   (the embedded corpus, tokenizer bytes; what the smoke profile uses)\n"
    "  - data.kind: local      (your own jsonl / parquet / csv files with a text column, "
    "data.paths: [...]; tokenizer bytes needs nothing, tokenizer gpt2 needs a tokenizer.json)\n"
    "  - SPECROUTE_GPT2_TOKENIZER=/path/to/tokenizer.json   (a local copy of GPT-2's tokenizer)"
)


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot: int
    sha256: str

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...

    def decode(self, ids: list[int]) -> str:
        """Token ids back to text (invalid UTF-8 replaced)."""


class BytesTokenizer:
    """UTF-8 bytes as token ids; vocabulary 256, separator 0."""

    name = "bytes"
    vocab_size = 256
    eot = 0
    sha256 = sha256_bytes(BYTES_DESCRIPTION.encode())

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint16) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class Gpt2Tokenizer:
    """GPT-2's byte-level BPE (50257 ids) from a ``tokenizer.json`` (name ``gpt2``), or a pretrained
    checkpoint's ``tokenizer.json`` (name ``pretrained``; its end-of-text token ``eot_token``)."""

    name = "gpt2"

    def __init__(self, path: Path, name: str = "gpt2", eot_token: str = GPT2_EOT):
        from tokenizers import Tokenizer as HFTokenizer

        self.path = path
        self.name = name
        self._tok = HFTokenizer.from_file(str(path))
        eot = self._tok.token_to_id(eot_token)
        if eot is None:
            raise DataUnavailable(f"{path} has no end-of-text token {eot_token} to separate documents")
        self.eot = eot
        self.vocab_size = self._tok.get_vocab_size()
        model = json.loads(self._tok.to_str())["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        self.sha256 = sha256_json({"vocab": model.get("vocab"), "merges": merges})

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.uint16) for e in self._tok.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


def load_tokenizer(name: str, cache: str | Path | None = None, pretrained: Path | None = None) -> Tokenizer:
    """The tokenizer called ``name`` (``bytes``, ``gpt2`` or ``pretrained``: the ``tokenizer.json`` at
    ``pretrained``, a checkpoint's). Raises DataUnavailable if gpt2 cannot be found locally and the hub is
    unreachable, or for ``pretrained`` without its file."""
    if name == "bytes":
        return BytesTokenizer()
    if name == "pretrained":
        if pretrained is None:
            raise DataUnavailable("data.tokenizer: pretrained needs the checkpoint of backbone.pretrained")
        tok = Gpt2Tokenizer(pretrained, "pretrained")
        if tok.vocab_size > MAX_VOCAB_IDS:
            raise DataUnavailable(f"{pretrained}: a vocabulary of {tok.vocab_size:,} ids; token shards store ids as "
                                  f"uint16, at most {MAX_VOCAB_IDS:,} ids")
        return tok
    if name != "gpt2":
        raise ValueError(f"unknown tokenizer {name!r}")
    return Gpt2Tokenizer(find_gpt2_tokenizer(cache))


def find_gpt2_tokenizer(cache: str | Path | None = None) -> Path:
    """Path of a local GPT-2 ``tokenizer.json`` (see the module docstring for the search order)."""
    env = os.environ.get("SPECROUTE_GPT2_TOKENIZER")
    if env:
        p = Path(env).expanduser()
        p = p / "tokenizer.json" if p.is_dir() else p
        if not p.is_file():
            raise DataUnavailable(f"SPECROUTE_GPT2_TOKENIZER={env} is not a tokenizer.json (or a folder "
                                  "holding one)")
        return p
    local = cache_dir(cache) / "tokenizers" / "gpt2" / "tokenizer.json"
    if local.is_file():
        return local
    try:
        from huggingface_hub import try_to_load_from_cache

        for repo in GPT2_REPOS:
            hit = try_to_load_from_cache(repo, "tokenizer.json", cache_dir=hub_cache_dir())
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
    except ImportError:  # pragma: no cover - huggingface_hub comes with datasets
        pass
    ok, why = hub_reachable()
    if not ok:
        raise DataUnavailable(
            f"the GPT-2 tokenizer is not on this machine and the Hugging Face hub is unreachable ({why}).\n"
            f"Looked at: $SPECROUTE_GPT2_TOKENIZER (unset), {local}, the hub cache ({', '.join(GPT2_REPOS)}).\n"
            + ALTERNATIVES
        )
    from huggingface_hub import hf_hub_download

    try:
        got = hf_hub_download(GPT2_REPOS[0], "tokenizer.json", cache_dir=hub_cache_dir())
    except Exception as e:  # noqa: BLE001 - any download failure is the same user-facing problem
        raise DataUnavailable(f"downloading GPT-2's tokenizer failed: {e}\n" + ALTERNATIVES) from None
    atomic_write_bytes(local, Path(got).read_bytes())
    return local


def hub_cache_dir() -> str | None:
    """The Hugging Face hub cache as the environment says now (``HF_HUB_CACHE``, ``HF_HOME``), or None
    for huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def hub_reachable(timeout_s: float = 5.0) -> tuple[bool, str]:
    """Whether the Hugging Face hub answers a TCP connection within ``timeout_s`` (DNS included).

    Honours ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` (offline without trying) and ``HF_ENDPOINT``.
    Returns (ok, reason).
    """
    import socket
    import threading
    from urllib.parse import urlparse

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return False, f"{var} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[str] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            result.append("")
        except OSError as e:
            result.append(f"{host}:{port}: {e}")

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s)
    if not result:
        return False, f"{host}:{port}: no answer within {timeout_s:g} s"
    return (not result[0]), result[0] or "reachable"
