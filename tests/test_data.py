"""Data: the embedded corpus, local files (jsonl / parquet / csv), the GPT-2 tokenizer, the shard cache,
the batch sampler, and the offline failure of fineweb-edu."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from specroute.data import DataUnavailable, WindowSampler, load_tokenizer, prepare_data
from specroute.data.embedded import embedded_documents
from specroute.data.shards import corpus_hash
from specroute.data.tokenizer import BytesTokenizer
from specroute.spec.models import EmbeddedData, FinewebEduData, LocalData


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    return prepare_data(EmbeddedData(), cache=tmp_path_factory.mktemp("cache"))


def test_embedded_corpus_is_real_deterministic_prose(embedded, monkeypatch):
    # read from source files, not live objects: what a process patches does not change the corpus
    monkeypatch.setattr(json, "loads", lambda *args, **kwargs: None)
    monkeypatch.setattr("sys.excepthook", lambda *args: None)
    docs = embedded_documents.__wrapped__()  # extracted again, not the in-process memo
    assert corpus_hash(t for _, t in docs) == embedded.meta["corpus_sha256"]
    assert sum(len(t) for _, t in docs) >= 1_000_000
    titles = [t for t, _ in docs]
    assert "topic:assert" in titles and "module:json" in titles
    assert "JSON" in dict(docs)["module:json"]


def test_embedded_shards_meta_and_split(embedded):
    meta = embedded.meta
    assert meta["kind"] == "embedded" and meta["tokenizer"] == "bytes"
    assert meta["tokenizer_sha256"] == BytesTokenizer.sha256
    assert len(meta["corpus_sha256"]) == 64
    total = meta["train_tokens"] + meta["heldout_tokens"]
    assert abs(meta["heldout_tokens"] / total - 0.1) < 0.01
    assert 0 < meta["unigram_entropy_nats"] < math.log(256)
    assert sum(len(s) for s in embedded.train) == meta["train_tokens"]
    # every document ends with the separator 0; the text decodes as UTF-8
    assert int((np.concatenate(embedded.train) == 0).sum()) + int((np.concatenate(embedded.heldout) == 0).sum()) \
        == meta["documents"]
    text = bytes(np.asarray(embedded.train[0][:2000], dtype=np.uint8)).decode("utf-8", errors="strict")
    assert len(text.split()) > 100


def test_shard_cache_is_reused(embedded):
    again = prepare_data(EmbeddedData(), cache=embedded.path.parent.parent)
    assert again.path == embedded.path
    assert again.meta == embedded.meta


def test_sampler_windows_are_reproducible(embedded):
    s = WindowSampler(embedded.train, 32)
    x1, y1 = s.sample(4, torch.Generator().manual_seed(3))
    x2, y2 = s.sample(4, torch.Generator().manual_seed(3))
    assert x1.shape == (4, 32) and y1.shape == (4, 32)
    torch.testing.assert_close(x1, x2)
    torch.testing.assert_close(x1[:, 1:], y1[:, :-1])  # targets are the next tokens
    (a, _), = WindowSampler(embedded.heldout, 32).fixed(1, 4)
    (b, _), = WindowSampler(embedded.heldout, 32).fixed(1, 4)
    torch.testing.assert_close(a, b)


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def test_local_jsonl_bytes(tmp_path):
    texts = [f"Document number {i}: the quick brown fox jumps over the lazy dog. " * 5 for i in range(20)]
    write_jsonl(tmp_path / "docs.jsonl", texts)
    data = prepare_data(LocalData(paths=["docs.jsonl"], heldout_fraction=0.2), spec_dir=tmp_path,
                        cache=tmp_path / "cache")
    ids = np.concatenate([*data.train, *data.heldout])
    assert len(ids) == sum(len(t.encode()) + 1 for t in texts)
    assert data.meta["corpus_sha256"] == corpus_hash(texts)
    assert data.meta["documents"] == 20 and data.meta["heldout_tokens"] > 0
    first = bytes(np.asarray(data.train[0][: len(texts[0])], dtype=np.uint8)).decode()
    assert first == texts[0]


def test_local_file_errors(tmp_path):
    write_jsonl(tmp_path / "docs.jsonl", ["a b c"] * 3)
    with pytest.raises(DataUnavailable, match="no column 'body'"):
        prepare_data(LocalData(paths=["docs.jsonl"], text_column="body"), spec_dir=tmp_path, cache=tmp_path)
    with pytest.raises(DataUnavailable, match="not found"):
        prepare_data(LocalData(paths=["missing.jsonl"]), spec_dir=tmp_path, cache=tmp_path)


@pytest.fixture
def gpt2_env(shared_data, monkeypatch):
    monkeypatch.setenv("SPECROUTE_GPT2_TOKENIZER", str(shared_data / "gpt2" / "tokenizer.json"))
    return shared_data


def test_gpt2_tokenizer_from_shared_file(gpt2_env):
    tok = load_tokenizer("gpt2")
    assert tok.vocab_size == 50257 and tok.eot == 50256
    assert tok.encode_batch(["Hello world"])[0].tolist() == [15496, 995]
    assert len(tok.sha256) == 64


def test_local_parquet_and_csv_gpt2(gpt2_env, tmp_path):
    parquet = gpt2_env / "fineweb" / "batch_000001.parquet"
    csv_file = gpt2_env / "fineweb_edu" / "training_data.csv"
    data = prepare_data(LocalData(paths=[str(parquet), str(csv_file)], tokenizer="gpt2", heldout_fraction=0.05),
                        cache=tmp_path)
    meta = data.meta
    assert meta["tokenizer"] == "gpt2" and meta["documents"] == 100 + 150
    total = meta["train_tokens"] + meta["heldout_tokens"]
    assert 100_000 < total < 400_000  # ~89k GPT-2 tokens in the csv alone
    ids = np.concatenate([*data.train, *data.heldout])
    assert int((ids == 50256).sum()) == 250 and int(ids.max()) < 50257
    assert 0 < meta["unigram_entropy_nats"] < math.log(50257)


def test_local_csv_bytes_max_tokens(shared_data, tmp_path):
    csv_file = shared_data / "fineweb_edu" / "training_data.csv"
    data = prepare_data(LocalData(paths=[str(csv_file)], max_tokens=50_000), cache=tmp_path)
    assert data.meta["train_tokens"] + data.meta["heldout_tokens"] == 50_000


ALTERNATIVES = ("data.kind: embedded", "data.kind: local")


@pytest.mark.parametrize("offline", ["refused", "env"])
def test_fineweb_offline_fails_fast(gpt2_env, tmp_path, monkeypatch, offline):
    if offline == "refused":  # a hub endpoint that refuses connections: the real probe runs and fails
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(DataUnavailable) as err:
        prepare_data(FinewebEduData(max_tokens=10_000), cache=tmp_path)
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "HuggingFaceFW/fineweb-edu" in msg and all(a in msg for a in ALTERNATIVES)
    assert not (tmp_path / "tokens").exists() or not any((tmp_path / "tokens").iterdir())


def test_gpt2_tokenizer_missing_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("SPECROUTE_GPT2_TOKENIZER", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataUnavailable) as err:
        load_tokenizer("gpt2", cache=tmp_path)
    msg = str(err.value)
    assert "SPECROUTE_GPT2_TOKENIZER" in msg and all(a in msg for a in ALTERNATIVES)
