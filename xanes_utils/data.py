"""External XANES data, all as :class:`~xanes_utils.dataset.Record` on the paper's grid: :func:`load_any`
picks the loader from the path; the loaders themselves live in :mod:`xanes_utils.loaders`, one per format.

Every loader returns records whose ``energy`` is :func:`~xanes_utils.elements.energy_grid` of the
absorbing element (111 points, 0.5 eV apart) and whose ``mu`` is FEFF's edge-step normalised mu
interpolated onto it with :func:`~xanes_utils.feff.to_grid` (zeros below the first computed energy),
exactly like the embedded FEFF10 dataset.

Sources:

* :func:`load_mp_documents` - Materials Project XAS documents (a JSON list or JSON lines), as served by
  ``mp_api``; :func:`fetch_materials_project` downloads and caches them (optional extra ``mp``).
* :func:`load_feff_dirs` - FEFF run directories in the Lightshow / OmniXAS layout.
* :func:`load_authors_format` - the list format of the paper's authors (JSON, CSV, or, only when
  explicitly trusted, their pickled torch ``.pt`` file).
* :func:`load_any` - picks one of the above (or :func:`~xanes_utils.dataset.load_dataset`) from the path.

Errors: see :mod:`xanes_utils.loaders.common` (:class:`DataError`, ``strict=True``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xanes_utils.dataset import FORMAT, Record, manifest_path, load_dataset
from xanes_utils.io import CorruptFileError
from xanes_utils.loaders.authors import (
    AUTHORS_HEADER, STARTPOINT_TOLERANCE, _authors_header_ok, load_authors_format,
)
from xanes_utils.loaders.common import NORMALISED_TAIL, PICKLE_SUFFIXES, DataError, UnsafeFileError, _read_text
from xanes_utils.loaders.feff_runs import absorbing_site, load_feff_dirs, read_xmu
from xanes_utils.loaders.materials_project import (
    DEFAULT_CACHE_DIR, fetch_materials_project, load_mp_documents, mp_cache_path, parse_mp_document,
)

__all__ = [
    "AUTHORS_HEADER", "DEFAULT_CACHE_DIR", "NORMALISED_TAIL", "PICKLE_SUFFIXES", "STARTPOINT_TOLERANCE", "DataError",
    "UnsafeFileError", "absorbing_site", "fetch_materials_project", "load_any", "load_authors_format",
    "load_feff_dirs", "load_mp_documents", "mp_cache_path", "parse_mp_document", "read_xmu",
]


def _json_kind(value: Any) -> str | None:
    """'dataset', 'authors' or 'mp' for parsed JSON content, else ``None``."""
    if isinstance(value, dict):
        if value.get("format") == FORMAT:
            return "dataset"
        if isinstance(value.get("data"), list) or "spectrum" in value or "absorbing_element" in value:
            return "mp"
        return None
    if isinstance(value, list) and value:
        if _authors_header_ok(value[0]):
            return "authors"
        if isinstance(value[0], dict):
            return "mp"
    return None


def _sniff_json(path: Path) -> str | None:
    text = _read_text(path)
    try:
        return _json_kind(json.loads(text))
    except ValueError:
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        try:
            return "mp" if _json_kind(json.loads(first)) == "mp" else None
        except ValueError:
            raise CorruptFileError(f"{path}: neither JSON nor JSON lines") from None


def load_any(path: str | Path, **kw: Any) -> list[Record]:
    """Load records from whatever ``path`` is; keyword arguments go to the chosen loader.

    * a packed dataset (``.json.gz`` with our manifest or format tag) -> :func:`~xanes_utils.dataset.load_dataset`;
    * a directory holding ``mp_xas_*.jsonl`` caches -> :func:`load_mp_documents` on each;
    * a directory holding ``feff.inp`` files -> :func:`load_feff_dirs`;
    * ``.pt``/``.pkl``/``.csv`` or JSON whose first row is the authors' header -> :func:`load_authors_format`;
    * JSON list / JSON lines of XAS documents -> :func:`load_mp_documents`.

    Anything else raises :class:`DataError`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        caches = sorted(path.glob("mp_xas_*.jsonl"))
        if caches:
            return [r for c in caches for r in load_mp_documents(c, **kw)]
        if any(path.rglob("feff.inp")):
            return load_feff_dirs(path, **kw)
        raise DataError(f"{path}: unrecognised directory: neither mp_xas_*.jsonl caches nor FEFF runs "
                        "(feff.inp) inside")
    suffixes = [s.lower() for s in path.suffixes]
    if any(s in PICKLE_SUFFIXES for s in suffixes) or ".csv" in suffixes:
        return load_authors_format(path, **kw)
    if ".json" in suffixes or ".jsonl" in suffixes:
        if path.name.endswith(".json.gz") and manifest_path(path).exists():
            return load_dataset(path, **kw)
        kind = _sniff_json(path)
        if kind == "dataset":
            return load_dataset(path, **kw)
        if kind == "authors":
            return load_authors_format(path, **kw)
        if kind == "mp":
            return load_mp_documents(path, **kw)
    raise DataError(f"{path}: unrecognised input: expected a packed dataset (.json.gz), Materials Project XAS "
                    "documents (JSON list / JSON lines), a directory of FEFF runs or mp_xas_*.jsonl caches, or "
                    f"the authors' list format (JSON/CSV, or .pt with trust=True)")
