"""File helpers: atomic, checksummed writes (a crash never leaves a half-written file behind) and safe
output file names."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

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


def _json_bytes(path: str | Path, obj: Any) -> bytes:
    """``obj`` as compact JSON, gzip-compressed (reproducibly) if ``path`` ends in ``.gz``."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    return gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data


def _parse_json(path: Path, raw: bytes) -> Any:
    """JSON from the bytes of ``path`` (gunzipped for ``.gz``), or :class:`CorruptFileError`."""
    try:
        return json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)
    except (OSError, EOFError, ValueError) as exc:
        raise CorruptFileError(f"{path}: corrupt or truncated file ({exc})") from exc


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON (gzip-compressed, reproducibly, if the name ends in ``.gz``) atomically."""
    atomic_write_bytes(path, _json_bytes(path, obj))


def read_json(path: str | Path) -> Any:
    """Read JSON (gzip if ``.gz``); a truncated or malformed file raises :class:`CorruptFileError`."""
    path = Path(path)
    return _parse_json(path, path.read_bytes())


def checksum_path(path: str | Path) -> Path:
    """The SHA-256 sidecar of ``path``: ``<name>.sha256`` in ``sha256sum`` format."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_checksummed(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and its SHA-256 to :func:`checksum_path`, both atomically.

    Every cache and checkpoint goes through this and :func:`read_checksummed`: a changed byte is detected.
    """
    atomic_write_bytes(path, data)
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(checksum_path(path), f"{digest}  {Path(path).name}\n".encode())


def read_checksummed(path: str | Path) -> bytes:
    """The bytes of ``path`` after checking them against its sidecar (:func:`write_checksummed`).

    A mismatch or an unreadable sidecar raises :class:`CorruptFileError`; a file without a sidecar
    (written before checksums existed) is returned with a logged warning.
    """
    path = Path(path)
    data = path.read_bytes()
    sidecar = checksum_path(path)
    if not sidecar.exists():
        log.warning("%s: no checksum file %s (written by an older version): its integrity is not verified",
                    path, sidecar.name)
        return data
    expected = sidecar.read_text(errors="replace").split()
    if not expected or expected[0] != hashlib.sha256(data).hexdigest():
        raise CorruptFileError(f"{path}: SHA-256 does not match {sidecar.name}: the file is corrupt or was "
                               "modified")
    return data


def write_checksummed_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write_json` with a checksum sidecar (:func:`write_checksummed`)."""
    write_checksummed(path, _json_bytes(path, obj))


def read_checksummed_json(path: str | Path) -> Any:
    """:func:`read_json` of a file checked by :func:`read_checksummed`."""
    path = Path(path)
    return _parse_json(path, read_checksummed(path))


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
