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


def _garbage(n: int = 4096) -> bytes:
    return bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8))


def _parquet_file(path: Path, column) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": column}), path)
    return path.read_bytes()


#: Bad local data files: (file name, contents or a writer, words the message must hold). Every one is a
#: DataUnavailable (exit 2 through the CLI) that names the file, and the line or row where one is known.
BAD_DATA = [
    ("random.jsonl", _garbage(), ["random.jsonl:1: not UTF-8 text", "is this really a .jsonl file?"]),
    ("latin1.jsonl", '{"text": "ok"}\n{"text": "caf\xe9"}\n'.encode("latin-1"), ["latin1.jsonl:2: not UTF-8"]),
    ("number.jsonl", b'{"text": "fine"}\n{"text": 5}\n', ["number.jsonl:2: 'text' is a number, not a string"]),
    ("null.jsonl", b'{"text": null}\n', ["null.jsonl:1: 'text' is null, not a string"]),
    ("list.jsonl", b'{"text": ["a", "b"]}\n', ["list.jsonl:1: 'text' is a list, not a string"]),
    ("dict.jsonl", b'{"text": {"a": 1}}\n', ["dict.jsonl:1: 'text' is an object, not a string"]),
    ("bare.jsonl", b'{"text": "fine"}\n["text", "a"]\n', ["bare.jsonl:2: the line is a list, not a JSON object"]),
    ("string.jsonl", b'"just text"\n', ["string.jsonl:1: the line is a string, not a JSON object"]),
    ("broken.jsonl", b'{"text": "a"\n', ["broken.jsonl:1: not valid JSON"]),
    ("deep.jsonl", b"[" * 100_000 + b"\n", ["deep.jsonl:1: not valid JSON"]),
    ("garbage.parquet", _garbage(), ["garbage.parquet: not a readable parquet file"]),
    ("ints.parquet", lambda p: _parquet_file(p, [1, 2, 3]), ["ints.parquet: column 'text' has type int64, not string"]),
    ("lists.parquet", lambda p: _parquet_file(p, [["a"], ["b"]]), ["column 'text' has type list<"]),
    ("nulls.parquet", lambda p: _parquet_file(p, ["a", None, "b"]), ["nulls.parquet: row 2: 'text' is null"]),
    ("latin1.csv", "text\nfine\ncaf\xe9\n".encode("latin-1"), ["latin1.csv:3: not UTF-8 text", "a .csv file?"]),
    ("multiline.csv", 'text\n"one\ntwo"\n"three\n'.encode(), ["multiline.csv:", "malformed csv", "unexpected end"]),
    ("short.csv", b"id,text\n1,fine\n2\n", ["short.csv:3: the row has no 'text' field"]),
]


@pytest.mark.parametrize(("name", "contents", "words"), BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_bad_data_file_is_a_clean_error(tmp_path, name, contents, words):
    path = tmp_path / name
    contents(path) if callable(contents) else path.write_bytes(contents)
    before = path.read_bytes()
    with pytest.raises(DataUnavailable) as info:
        prepare_data(LocalData(paths=[name]), spec_dir=tmp_path, cache=tmp_path / "cache")
    message = str(info.value)
    assert str(path) in message
    for w in words:
        assert w in message
    assert path.read_bytes() == before
    tokens = tmp_path / "cache" / "tokens"
    assert not tokens.exists() or list(tokens.iterdir()) == []  # no half-written shards or temporary folder


def test_empty_texts_are_skipped_and_a_bom_is_accepted(tmp_path):
    (tmp_path / "docs.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(
        json.dumps({"text": t}) + "\n" for t in ["", "first document", "", "second document"] * 5).encode())
    data = prepare_data(LocalData(paths=["docs.jsonl"], heldout_fraction=0.2), spec_dir=tmp_path,
                        cache=tmp_path / "cache")
    assert data.meta["documents"] == 10


def test_unreadable_data_file_is_a_clean_error(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    write_jsonl(tmp_path / "docs.jsonl", ["a b c"] * 3).chmod(0)
    with pytest.raises(DataUnavailable, match="docs.jsonl"):
        prepare_data(LocalData(paths=["docs.jsonl"]), spec_dir=tmp_path, cache=tmp_path / "cache")


def test_fineweb_rows_must_hold_string_texts(monkeypatch):
    import datasets

    from specroute.data import sources

    monkeypatch.setattr(sources, "hub_reachable", lambda: (True, ""))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [{"text": "a"}, {"text": "b"}, {"text": None}])
    docs = sources.fineweb_documents("HuggingFaceFW/fineweb-edu", "sample-10BT")
    assert [next(docs), next(docs)] == ["a", "b"]
    with pytest.raises(DataUnavailable, match=r"config sample-10BT\) row 3: 'text' is null, not a string"):
        next(docs)


def test_a_folder_given_as_a_data_file_is_named_so(tmp_path):
    from specroute.data.sources import local_documents

    with pytest.raises(DataUnavailable, match=f"data file {tmp_path} is a folder: list its files in data.paths"):
        list(local_documents([tmp_path]))
