"""The embedded corpus: real documentation prose that ships with Python, so no network is needed.

Two sources, both part of every CPython installation:

1. ``pydoc_data.topics``: the Python Language Reference's topic pages as plain text (what ``help()``
   shows for keywords and topics), one document per topic.
2. The docstrings in the source files of a fixed list of standard-library modules: the module docstring
   and the docstrings of its public top-level classes and functions and of those classes' public
   methods, in source order, one document per module.

Docstrings are read from the ``.py`` files with :mod:`ast` (nothing is imported), so the corpus depends
only on the Python installation, not on what a process has imported or patched: it is the same across
runs on the same Python version and may differ between versions (the report records its sha256 either
way). A module whose source file is absent is skipped, and the skip shows in the hash.

Tokenizer: ``bytes`` (UTF-8 bytes, vocabulary 256), as the spec declares for ``data.kind: embedded``.
"""

from __future__ import annotations

import ast
import functools
import json
import sys
import sysconfig
import warnings
from pathlib import Path

from specroute.store import atomic_write_text, sha256_json

#: Standard-library modules (pure Python: their docstrings are read from source) that form part of the
#: corpus, in a fixed order; a change here changes the corpus hash.
MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "asyncio.base_events", "asyncio.events", "asyncio.locks", "asyncio.queues",
    "asyncio.streams", "asyncio.subprocess", "asyncio.tasks", "base64", "bdb", "bisect", "bz2",
    "calendar", "cmd", "code", "codecs", "codeop", "collections", "collections.abc", "colorsys",
    "compileall", "concurrent.futures._base", "configparser", "contextlib", "copy", "copyreg", "csv",
    "ctypes", "dataclasses", "datetime", "dbm", "decimal", "difflib", "dis", "doctest", "email",
    "email.header", "email.message", "email.parser", "email.policy", "email.utils", "enum", "filecmp",
    "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "graphlib",
    "gzip", "hashlib", "heapq", "hmac", "html", "html.parser", "http.client", "http.cookiejar",
    "http.cookies", "http.server", "imaplib", "importlib", "importlib.abc", "importlib.metadata",
    "importlib.resources", "importlib.util", "inspect", "io", "ipaddress", "json", "json.decoder",
    "json.encoder", "keyword", "linecache", "locale", "logging", "logging.config", "logging.handlers",
    "lzma", "mailbox", "mimetypes", "modulefinder", "multiprocessing.context", "multiprocessing.managers",
    "multiprocessing.pool", "multiprocessing.queues", "netrc", "ntpath", "numbers", "operator", "optparse",
    "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform", "plistlib", "poplib",
    "posixpath", "pprint", "profile", "pstats", "py_compile", "pyclbr", "pydoc", "queue", "quopri",
    "random", "re", "reprlib", "runpy", "sched", "secrets", "selectors", "shelve", "shlex", "shutil",
    "signal", "site", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "stat", "statistics",
    "string", "stringprep", "struct", "subprocess", "symtable", "sysconfig", "tabnanny", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "token", "tokenize", "tomllib", "trace", "traceback",
    "tracemalloc", "types", "typing", "unittest.case", "unittest.loader", "unittest.mock",
    "unittest.runner", "unittest.suite", "urllib.error", "urllib.parse", "urllib.request",
    "urllib.robotparser", "uuid", "venv", "warnings", "wave", "weakref", "webbrowser", "wsgiref",
    "xml.dom.minidom", "xml.dom.pulldom", "xml.etree.ElementTree", "xml.sax", "xml.sax.handler",
    "xmlrpc.client", "zipapp", "zipfile", "zipimport", "zoneinfo",
)

#: Below this many characters the corpus is too small for the smoke backbone to learn rather than
#: memorise (about one epoch of the smoke profile's backbone stage).
MIN_CHARS = 500_000


def source_file(module: str) -> Path | None:
    """The ``.py`` file of a standard-library module (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``)."""
    base = Path(sysconfig.get_paths()["stdlib"]).joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_docstrings(path: Path) -> str:
    """The docstrings of a source file (see the module docstring), cleaned, duplicates dropped."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = [ast.get_docstring(tree)]
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for node in tree.body:
        if isinstance(node, defs) and not node.name.startswith("_"):
            parts.append(ast.get_docstring(node))
            if isinstance(node, ast.ClassDef):
                parts += [ast.get_docstring(sub) for sub in node.body
                          if isinstance(sub, defs) and not sub.name.startswith("_")]
    seen: set[str] = set()
    unique = []
    for p in parts:
        if p and p.strip() and p not in seen:
            seen.add(p)
            unique.append(p.strip())
    return "\n\n".join(unique)


@functools.lru_cache(maxsize=1)
def embedded_documents() -> list[tuple[str, str]]:
    """The corpus as (title, text) documents: the reference topics, then one per module.

    Deterministic for a given Python installation. Warns if the corpus is smaller than
    :data:`MIN_CHARS` (an installation without the standard library's ``.py`` sources).
    """
    from pydoc_data.topics import topics

    docs = [(f"topic:{key}", text.strip()) for key, text in sorted(topics.items()) if text.strip()]
    for name in MODULES:
        path = source_file(name)
        text = module_docstrings(path) if path else ""
        if text:
            docs.append((f"module:{name}", text))
    total = sum(len(t) for _, t in docs)
    if total < MIN_CHARS:
        warnings.warn(f"the embedded corpus has only {total:,} characters (standard-library sources "
                      "missing?); "
                      "the smoke backbone may memorise it", stacklevel=2)
    return docs


def cached_embedded_documents(cache: Path) -> list[tuple[str, str]]:
    """:func:`embedded_documents`, kept in ``<cache>/embedded/`` keyed by the Python version and the
    size and modification time of every source file (extraction parses ~180 files: seconds)."""
    files = [source_file(m) for m in ("pydoc_data.topics", *MODULES)]
    key = sha256_json({"python": sys.version, "modules": MODULES,
                       "files": [[str(f), f.stat().st_size, f.stat().st_mtime_ns] if f else None for f in files]})
    path = cache / "embedded" / f"{key[:20]}.json"
    if path.is_file():
        return [tuple(d) for d in json.loads(path.read_text(encoding="utf-8"))]  # type: ignore[misc]
    docs = embedded_documents()
    atomic_write_text(path, json.dumps(docs, ensure_ascii=False))
    return docs
