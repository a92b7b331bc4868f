"""Materials Project XAS documents (a JSON list or JSON lines) as served by ``mp_api``, and a cached,
resumable downloader (optional extra ``mp``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

from pymatgen.core import Structure

from xanes_utils.dataset import Record
from xanes_utils.elements import ELEMENTS, check_element
from xanes_utils.io import CorruptFileError, atomic_write_bytes
from xanes_utils.loaders.common import DataError, _floats, _index, _read_text, _record, _short, _skip, _structure, _text
from xanes_utils.structures import check_structure

log = logging.getLogger(__name__)

#: Default cache of Materials Project downloads (override with ``$XANES_UTILS_CACHE``).
DEFAULT_CACHE_DIR = Path(os.environ.get("XANES_UTILS_CACHE", Path.home() / ".cache" / "xanes_utils")) / "mp_xas"


def _mp_documents(path: Path, strict: bool) -> list[tuple[str, Any]]:
    """(label, document) pairs of a JSON list, a ``{"data": [...]}`` response or a JSON-lines file."""
    text = _read_text(path)
    stripped = text.lstrip()
    if not stripped:
        return []
    try:
        data = json.loads(text)
    except ValueError as exc:
        if stripped.startswith("["):
            raise CorruptFileError(f"{path}: malformed or truncated JSON ({exc})") from exc
        data = None  # JSON lines: several objects, one per line
    if data is not None:
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        elif isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise CorruptFileError(f"{path}: expected a list of XAS documents, got {type(data).__name__}")
        return [(f"entry {i}", doc) for i, doc in enumerate(data)]
    docs = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            docs.append((f"line {n}", json.loads(line)))
        except ValueError as exc:
            if strict:
                raise CorruptFileError(f"{path}: line {n}: malformed JSON ({exc})") from exc
            log.warning("skipped %s: line %d: malformed JSON (%s)", path, n, exc)
    return docs


def _single_site(structure: Structure, element: str) -> int:
    """The absorbing site of a site-averaged spectrum, if all ``element`` sites are equivalent."""
    from xanes_utils.structures import distinct_sites

    check_structure(structure)
    if element not in {el.symbol for el in structure.composition.elements}:
        raise DataError(f"the structure has no {element} site")
    try:
        sites = distinct_sites(structure, element)
    except Exception as exc:  # noqa: BLE001 - spglib fails in many ways on odd cells
        raise DataError(f"symmetry analysis failed ({type(exc).__name__}: {exc})") from exc
    if len(sites) != 1:
        raise DataError(f"site-averaged spectrum over {len(sites)} symmetry-distinct {element} sites "
                        "(no absorbing_index): the model needs a site-wise spectrum")
    return sites[0]


def parse_mp_document(doc: Any, source: dict | None = None) -> Record | None:
    """One Materials Project XAS document as a :class:`Record`; ``None`` if it is not a K-edge XANES.

    Accepts the document as served by the MP API (``spectrum`` holding a pymatgen ``XAS`` dict) or with
    ``x``/``y`` at top level. A site-averaged document (no ``absorbing_index``) is used only when all sites
    of the absorbing element are symmetry-equivalent (then the first of them is the site). Raises
    :class:`DataError` (or another ``ValueError`` subclass) for an unusable document.
    """
    if not isinstance(doc, dict):
        raise DataError(f"expected a JSON object, got {_short(doc)}")
    spec = doc.get("spectrum")
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise DataError(f"'spectrum' is not a pymatgen XAS dict: {_short(spec)}")

    def field(name: str, spectrum_first: bool) -> Any:
        first, second = (spec, doc) if spectrum_first else (doc, spec)
        return first.get(name) if first.get(name) is not None else second.get(name)

    for name in ("edge", "spectrum_type", "absorbing_element", "x", "y", "structure"):
        if field(name, False) is None:
            raise DataError(f"missing field {name!r}")
    edge = _text(field("edge", False), "edge", enum=True)
    kind = _text(field("spectrum_type", False), "spectrum_type", enum=True)
    if edge != "K" or kind != "XANES":
        log.debug("not a K-edge XANES (edge %s, %s)", edge, kind)
        return None
    element = check_element(_text(field("absorbing_element", False), "absorbing_element"))
    structure = _structure(field("structure", True))
    energy, mu = _floats(field("x", True), "x"), _floats(field("y", True), "y")
    index = field("absorbing_index", True)
    site = _single_site(structure, element) if index is None else _index(index)

    ids = {k: doc[k] for k in ("spectrum_id", "task_id", "task_ids", "material_id") if doc.get(k) is not None}
    material = _text(ids["material_id"], "material_id") if "material_id" in ids else ""
    if not material and "spectrum_id" in ids:
        match = re.match(r"^(.+?)-(XANES|EXAFS|XAFS)-", _text(ids["spectrum_id"], "spectrum_id"))
        material = match.group(1) if match else ""
    if material:
        rec_id = f"{material}-{site}-{element}-XANES-K"
    elif "spectrum_id" in ids or "task_id" in ids:
        rec_id = _text(ids.get("spectrum_id", ids.get("task_id")), "spectrum_id")
    else:
        rec_id = f"{(source or {}).get('entry', 'mp')}-{site}-{element}-XANES-K"
    meta = {"database": "materials_project", **(source or {})}
    meta.update({k: str(v) if not isinstance(v, list) else [str(t) for t in v] for k, v in ids.items()})
    return _record(id=rec_id, element=element, site=site, structure=structure, energy=energy, mu=mu,
                   source=meta, material_id=material)


def load_mp_documents(path: str | Path, strict: bool = False) -> list[Record]:
    """Materials Project XAS documents from a JSON list or JSON-lines file (optionally ``.gz``).

    Only K-edge XANES documents are kept (others are skipped with an INFO log). Unusable documents are
    skipped with a warning naming the file and the entry, or raise :class:`DataError` if ``strict``.
    """
    path = Path(path)
    records = []
    n_other = 0
    for label, doc in _mp_documents(path, strict):
        where = f"{path}: {label}"
        try:
            rec = parse_mp_document(doc, {"file": str(path), "entry": f"{path.stem}-{label.replace(' ', '')}"})
        except ValueError as exc:
            _skip(where, exc, strict)
            continue
        if rec is None:
            n_other += 1
            log.info("skipped %s: not a K-edge XANES document", where)
            continue
        records.append(rec)
    log.info("%s: %d K-edge XANES records (%d other documents skipped)", path, len(records), n_other)
    return records


def mp_cache_path(cache_dir: str | Path, element: str) -> Path:
    """The JSON-lines cache file of one element's Materials Project K-edge XANES documents."""
    return Path(cache_dir) / f"mp_xas_{check_element(element)}_K_XANES.jsonl"


def _mp_client(api_key: str | None):
    """The official Materials Project client (imported lazily; optional extra ``mp``)."""
    try:
        from mp_api.client import MPRester
    except ImportError as exc:
        raise ImportError("downloading from the Materials Project needs the official client: "
                          "pip install 'xanes-family-bucket[mp]' (or pip install mp-api)") from exc
    return MPRester(api_key) if api_key else MPRester()


def _plain(doc: Any) -> dict:
    """A JSON-serialisable dict of one API document (pydantic model, MSONable or dict)."""
    from monty.json import jsanitize

    if hasattr(doc, "model_dump"):
        doc = doc.model_dump()
    elif not isinstance(doc, dict) and hasattr(doc, "dict"):
        doc = doc.dict()
    try:
        return jsanitize(doc, strict=True, enum_values=True)
    except (AttributeError, TypeError):
        return jsanitize(doc, strict=False, enum_values=True)


def _xas_search(client: Any, element: str) -> list:
    """``client.materials.xas.search(...)`` for K-edge XANES of ``element`` (older clients: ``client.xas``)."""
    materials = getattr(client, "materials", None)
    rester = getattr(materials, "xas", None) or getattr(client, "xas")
    return list(rester.search(absorbing_element=element, edge="K", spectrum_type="XANES"))


def fetch_materials_project(elements: Iterable[str] = ELEMENTS, api_key: str | None = None,
                            cache_dir: str | Path = DEFAULT_CACHE_DIR, client: Any = None,
                            strict: bool = False) -> list[Record]:
    """Download Materials Project K-edge XANES documents per element, cache them, return the records.

    Each element's documents go to one JSON-lines file in ``cache_dir`` (:func:`mp_cache_path`), written
    atomically once the element is complete, so an interrupted download resumes: cached elements are not
    fetched again. ``client`` is an ``mp_api.client.MPRester``-like object (default: a new ``MPRester``
    with ``api_key``, or ``$MP_API_KEY`` when ``None``); it is only created if something is missing.
    """
    wanted = [check_element(el) for el in ([elements] if isinstance(elements, str) else elements)]
    todo = [el for el in wanted if not mp_cache_path(cache_dir, el).exists()]
    log.info("Materials Project: %d of %d elements cached in %s", len(wanted) - len(todo), len(wanted), cache_dir)
    if todo:
        context = contextlib.nullcontext(client) if client is not None else _mp_client(api_key)
        with context as mpr:
            for el in todo:
                docs = _xas_search(mpr, el)
                lines = "".join(json.dumps(_plain(d), default=str) + "\n" for d in docs)
                atomic_write_bytes(mp_cache_path(cache_dir, el), lines.encode())
                log.info("Materials Project: %d %s K-edge XANES documents cached", len(docs), el)
    records = []
    for el in wanted:
        records.extend(load_mp_documents(mp_cache_path(cache_dir, el), strict=strict))
    return records
