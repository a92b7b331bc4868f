"""File helpers: atomic, checksummed writes (a crash never leaves a half-written file behind) and safe
output file names."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

#: Compression and structure-file suffixes dropped from a file name to make output names.
_DROPPED_SUFFIXES = (".gz", ".bz2", ".xz", ".cif", ".mcif", ".vasp", ".poscar", ".json")


class CorruptFileError(ValueError):
    """A data or cache file that cannot be read back or whose checksum does not match."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as JSON (gzip-compressed, reproducibly, if the name ends in ``.gz``) atomically."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(path, data)


def read_json(path: str | Path):
    """Read JSON (gzip if ``.gz``); a truncated or malformed file raises :class:`CorruptFileError`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        return json.loads(raw)
    except FileNotFoundError:
        raise
    except (OSError, EOFError, ValueError) as exc:
        raise CorruptFileError(f"{path}: corrupt or truncated file ({exc})") from exc


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_name(text: str) -> str:
    """``text`` with every character other than letters, digits and ``._+-`` replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9._+-]", "-", text)


def output_stem(path: str | Path) -> str:
    """File name without compression and structure-format suffixes (``nio.cif.gz`` -> ``nio``,
    ``Fe2O2.v1.cif`` -> ``Fe2O2.v1``), made safe for file names."""
    name = Path(path).name
    for suffix in _DROPPED_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return safe_name(name)
