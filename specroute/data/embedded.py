"""The embedded corpus: real documentation prose that ships with Python, so no network is needed.

Two sources, both part of every CPython installation:

1. ``pydoc_data.topics``: the Python Language Reference's topic pages as plain text (what ``help()``
   shows for keywords and topics), one document per topic.
2. The docstrings of a fixed list of standard-library modules: the module docstring and the docstrings of
   its public classes, methods and functions, in sorted name order, one document per module.

The text is extracted at run time, so it is the same across runs on the same Python version and may
differ between versions (the report records its sha256 either way). Modules that cannot be imported on a
platform (e.g. ``fcntl`` on Windows) are skipped, and the skip shows in the hash. Python run with ``-OO``
strips docstrings; then only the topics remain and :func:`embedded_documents` says so in its warning.

Tokenizer: ``bytes`` (UTF-8 bytes, vocabulary 256), as the spec declares for ``data.kind: embedded``.
"""

from __future__ import annotations

import importlib
import inspect
import warnings

#: Standard-library modules whose docstrings form part of the corpus (fixed order; a change here
#: changes the corpus hash).
MODULES: tuple[str, ...] = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bdb", "binascii", "bisect", "builtins",
    "bz2", "calendar", "cmath", "cmd", "code", "codecs", "codeop", "collections", "colorsys",
    "compileall", "concurrent.futures", "configparser", "contextlib", "contextvars", "copy", "copyreg",
    "csv", "ctypes", "dataclasses", "datetime", "dbm", "decimal", "difflib", "dis", "doctest", "email",
    "email.message", "email.utils", "enum", "filecmp", "fileinput", "fnmatch", "fractions", "ftplib",
    "functools", "gc", "getopt", "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac",
    "html", "html.parser", "http.client", "http.cookiejar", "http.server", "imaplib", "importlib",
    "importlib.metadata", "importlib.resources", "inspect", "io", "ipaddress", "itertools", "json",
    "keyword", "linecache", "locale", "logging", "logging.handlers", "lzma", "mailbox", "marshal",
    "math", "mimetypes", "mmap", "modulefinder", "multiprocessing", "netrc", "ntpath", "numbers",
    "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform",
    "plistlib", "poplib", "posixpath", "pprint", "profile", "pstats", "py_compile", "pyclbr", "pydoc",
    "queue", "quopri", "random", "re", "reprlib", "runpy", "sched", "secrets", "selectors", "shelve",
    "shlex", "shutil", "signal", "site", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "stat",
    "statistics", "string", "stringprep", "struct", "subprocess", "symtable", "sys", "sysconfig",
    "tabnanny", "tarfile", "tempfile", "textwrap", "threading", "time", "timeit", "token", "tokenize",
    "tomllib", "trace", "traceback", "tracemalloc", "types", "typing", "unicodedata", "unittest",
    "unittest.mock", "urllib.parse", "urllib.request", "uuid", "venv", "warnings", "wave", "weakref",
    "webbrowser", "wsgiref", "xml.dom.minidom", "xml.etree.ElementTree", "xml.sax", "xmlrpc.client",
    "zipapp", "zipfile", "zipimport", "zlib", "zoneinfo",
)

#: Below this many characters the corpus is too small for the smoke backbone to learn rather than
#: memorise (about one epoch of the smoke profile's backbone stage).
MIN_CHARS = 500_000


def _doc(obj: object) -> str:
    """The object's own docstring, cleaned (no inheritance from base classes, unlike inspect.getdoc)."""
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else ""


def _module_text(name: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = importlib.import_module(name)
    parts = [_doc(mod)]
    for attr, obj in sorted(vars(mod).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        parts.append(_doc(obj))
        if inspect.isclass(obj):
            for member_name, member in sorted(vars(obj).items()):
                if not member_name.startswith("_"):
                    parts.append(_doc(member))
    seen: set[str] = set()
    unique = []
    for p in parts:
        if p and p not in seen:
            seen.add(p)
            unique.append(p)
    return "\n\n".join(unique)


def embedded_documents() -> list[tuple[str, str]]:
    """The corpus as (title, text) documents: the reference topics, then one per module.

    Deterministic for a given Python version and platform. Warns if the corpus is smaller than
    :data:`MIN_CHARS` (e.g. under ``python -OO``).
    """
    from pydoc_data.topics import topics

    docs = [(f"topic:{key}", text.strip()) for key, text in sorted(topics.items()) if text.strip()]
    for name in MODULES:
        try:
            text = _module_text(name)
        except Exception:  # noqa: BLE001 - a module missing on this platform is skipped
            continue
        if text:
            docs.append((f"module:{name}", text))
    total = sum(len(t) for _, t in docs)
    if total < MIN_CHARS:
        warnings.warn(f"the embedded corpus has only {total:,} characters (docstrings stripped by -OO?); "
                      "the smoke backbone may memorise it", stacklevel=2)
    return docs
