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
from typing import Any

from specroute.data.tokenizer import ALTERNATIVES, DataUnavailable, hub_reachable

LOCAL_FORMATS = (".jsonl", ".parquet", ".csv")


def fineweb_documents(dataset: str, config: str) -> Iterator[str]:
    """Texts of ``dataset`` / ``config`` (split ``train``), streamed in the hub's order.

    Raises DataUnavailable at once (a short connection probe, not a long retry loop) when the hub is
    unreachable or ``datasets`` cannot open the stream, and for a row whose ``text`` is missing or not a
    string (naming the row, counted from 1).
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
    where = f"{dataset} (config {config})"
    yield _text(first.get("text"), f"{where} row 1", "text")
    for n, row in enumerate(it, 2):
        yield _text(row.get("text"), f"{where} row {n}", "text")


def local_documents(paths: list[Path], text_column: str = "text") -> Iterator[str]:
    """Texts of local files, file by file in the given order, rows in file order.

    Formats by suffix: ``.jsonl`` (one JSON object per line, UTF-8), ``.parquet`` (read with pyarrow, column
    by column batches; the column must be of string type), ``.csv`` (UTF-8, header row, strict quoting;
    fields may span lines). Every text must be a string: null, a number, a list or an object is refused, not converted.
    Empty texts are skipped.

    Raises:
        DataUnavailable: a missing or unreadable file, an unknown suffix, a missing column, a file that is
            not what its suffix says (bytes that are not UTF-8, a line that is not a JSON object, a corrupt
            parquet file, a malformed csv) or a text that is not a string; the message names the file and
            the line (jsonl, csv) or row (parquet, counted from 1) where known.
    """
    for path in paths:
        if path.is_dir():
            raise DataUnavailable(f"data file {path} is a folder: list its files in data.paths")
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
        try:
            for text in rows:
                if text:
                    yield text
        except OSError as e:
            raise DataUnavailable(f"cannot read data file {path}: {e.strerror or e}") from None


_JSON_TYPES = {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number",
               type(None): "null"}


def _text(value: object, where: str, column: str) -> str:
    """``value`` if it is a string; DataUnavailable naming ``where`` and what it holds otherwise."""
    if isinstance(value, str):
        return value
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    raise DataUnavailable(f"{where}: {column!r} is {kind}, not a string (every text must be a string; "
                          f"an empty string is skipped)")


def _missing(path: Path, column: str, have: list[str]) -> DataUnavailable:
    return DataUnavailable(f"{path}: no column {column!r} (columns: {have}); set data.text_column")


def _not_utf8(path: Path, lineno: int, e: UnicodeDecodeError) -> DataUnavailable:
    return DataUnavailable(f"{path}:{lineno}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start} "
                           f"of the line): is this really a {path.suffix} file?")


def _jsonl(path: Path, column: str) -> Iterator[str]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, lineno, e) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataUnavailable(f"{where}: not valid JSON: {e}") from None
            except RecursionError:
                raise DataUnavailable(f"{where}: not valid JSON: nested too deeply") from None
            if not isinstance(row, dict):
                raise DataUnavailable(f"{where}: the line is {_JSON_TYPES.get(type(row), 'a string')}, "
                                      f"not a JSON object with a {column!r} field")
            if column not in row:
                raise _missing(path, column, sorted(row))
            yield _text(row[column], where, column)


def _parquet(path: Path, column: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as e:
        raise DataUnavailable(f"{path}: not a readable parquet file: {e}") from None
    if column not in schema.names:
        raise _missing(path, column, schema.names)
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or getattr(pa.types, "is_string_view", lambda _: False)(kind)):
        raise DataUnavailable(f"{path}: column {column!r} has type {kind}, not string; every text must be a string")
    row = 0
    try:
        for batch in pf.iter_batches(columns=[column], batch_size=1024):
            for text in batch.column(0).to_pylist():
                row += 1
                yield _text(text, f"{path}: row {row}", column)
    except (pa.ArrowException, OSError) as e:
        raise DataUnavailable(f"{path}: corrupt parquet file after row {row}: {e}") from None


def _csv(path: Path, column: str) -> Iterator[str]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, "rb") as f:
        reader = csv.DictReader(_utf8_lines(path, f), strict=True)
        try:
            if reader.fieldnames is None or column not in reader.fieldnames:
                raise _missing(path, column, list(reader.fieldnames or []))
            for row in reader:
                value = row[column]
                if value is None:
                    raise DataUnavailable(f"{path}:{reader.line_num}: the row has no {column!r} field "
                                          f"(fewer fields than the header)")
                yield value
        except csv.Error as e:
            raise DataUnavailable(f"{path}:{reader.line_num}: malformed csv: {e}") from None


def _utf8_lines(path: Path, f: Any) -> Iterator[str]:
    """The lines of binary file ``f`` decoded as UTF-8 (line endings kept, as csv wants them); a line that
    is not UTF-8 is a DataUnavailable naming its number."""
    for lineno, raw in enumerate(f, 1):
        try:
            yield raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise _not_utf8(path, lineno, e) from None
