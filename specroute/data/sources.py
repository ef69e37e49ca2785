"""Document sources: each yields the documents' texts, in a fixed order, for the shard writer.

- :func:`fineweb_documents`: fineweb-edu streamed through ``datasets`` (a named sample config); fails
  fast, naming the alternatives, when the hub cannot be reached.
- :func:`local_documents`: jsonl / parquet / csv files with a text column.
- :func:`specroute.data.embedded.embedded_documents`: the embedded corpus (no network).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from specroute.data.tokenizer import ALTERNATIVES, DataUnavailable, hub_reachable

LOCAL_FORMATS = (".jsonl", ".parquet", ".csv")


def fineweb_documents(dataset: str, config: str) -> Iterator[str]:
    """Texts of ``dataset`` / ``config`` (split ``train``), streamed in the hub's order.

    Raises DataUnavailable at once (a short connection probe, not a long retry loop) when the hub is
    unreachable or ``datasets`` cannot open the stream.
    """
    ok, why = hub_reachable()
    if not ok:
        raise DataUnavailable(
            f"cannot stream {dataset} (config {config}): the Hugging Face hub is unreachable ({why}).\n"
            + ALTERNATIVES
        )
    try:
        from datasets import load_dataset

        stream = load_dataset(dataset, name=config, split="train", streaming=True)
        it = iter(stream)
        first = next(it)
    except Exception as e:  # noqa: BLE001 - every failure to open the stream is the same user problem
        raise DataUnavailable(f"cannot stream {dataset} (config {config}): {type(e).__name__}: {e}\n"
                              + ALTERNATIVES) from None
    yield first["text"]
    for row in it:
        yield row["text"]


def local_documents(paths: list[Path], text_column: str = "text") -> Iterator[str]:
    """Texts of local files, file by file in the given order, rows in file order.

    Formats by suffix: ``.jsonl`` (one JSON object per line), ``.parquet`` (read with pyarrow, column by
    column batches), ``.csv`` (header row; fields may span lines). Empty texts are skipped.
    Raises DataUnavailable for a missing file, an unknown suffix or a missing column.
    """
    for path in paths:
        if not path.is_file():
            raise DataUnavailable(f"data file not found: {path}")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            rows = _jsonl(path, text_column)
        elif suffix == ".parquet":
            rows = _parquet(path, text_column)
        elif suffix == ".csv":
            rows = _csv(path, text_column)
        else:
            raise DataUnavailable(f"{path}: unsupported file type {suffix!r}; use one of {LOCAL_FORMATS}")
        for text in rows:
            if text:
                yield text


def _missing(path: Path, column: str, have: list[str]) -> DataUnavailable:
    return DataUnavailable(f"{path}: no column {column!r} (columns: {have}); set data.text_column")


def _jsonl(path: Path, column: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataUnavailable(f"{path}:{lineno}: not valid JSON: {e}") from None
            if column not in row:
                raise _missing(path, column, sorted(row))
            yield str(row[column] or "")


def _parquet(path: Path, column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if column not in names:
        raise _missing(path, column, names)
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        for text in batch.column(0).to_pylist():
            yield text or ""


def _csv(path: Path, column: str) -> Iterator[str]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise _missing(path, column, list(reader.fieldnames or []))
        for row in reader:
            yield row[column] or ""
