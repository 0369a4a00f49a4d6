"""Small file and value helpers every stage uses: atomic writes, content digests, JSON-safe values.

One implementation of each, so a fix (an fsync, a digest format) lands everywhere at once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_CHUNK = 8 << 20


def resolve(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """``path`` as given when absolute (``~`` expanded), else relative to the project ``root``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(root) / p


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part.

    The text goes to a temporary file in the same folder (same file system), is flushed to disk,
    gets the mode ``open()`` would give a new file (``0o666`` less the umask), then ``os.replace``
    swaps it in; on any error the temporary file is removed and the target is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())  # the bytes are on disk before the name points at them
        os.chmod(tmp, _new_file_mode())  # mkstemp makes it private; a shared cache must stay readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@functools.cache
def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process umask (read once)."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of one file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Iterable[str | os.PathLike[str]]) -> str:
    """Hex sha256 over several files: each file's name and bytes, in the order given."""
    digest = hashlib.sha256()
    for p in paths:
        p = Path(p)
        digest.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def sha256_listing(named_digests: Mapping[str, str]) -> str:
    """Hex sha256 of a ``sha256sum``-style listing: ``"<digest>  <name>\\n"`` per entry, sorted by name.

    The same files give the same digest wherever they live (only names and contents count), and
    ``sha256sum`` output of a folder, sorted, reproduces it.

    Args:
        named_digests: file name -> hex sha256 of its bytes.
    """
    listing = "".join(f"{digest}  {name}\n" for name, digest in sorted(named_digests.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of ``obj`` as sorted-key JSON: equal values, equal digests, whatever the key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def jsonable(x: Any) -> Any:
    """Plain JSON types: numpy -> Python, tuples/sets -> lists, non-finite floats -> None, paths -> str."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, frozenset, set)):
        return [jsonable(v) for v in x]
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    tolist = getattr(x, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return jsonable(tolist())
    return str(x)
