"""Loaders for external XANES data, all giving :class:`~xanes_utils.dataset.Record` on the paper's grid.

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

A problem with one entry (unsupported element, disordered structure, NaN or non-monotonic spectrum,
wrong energy grid, missing file) skips that entry with a logged warning naming the file and the entry;
with ``strict=True`` it raises :class:`DataError` instead. A file that cannot be parsed at all raises
:class:`~xanes_utils.io.CorruptFileError`. Both are ``ValueError`` subclasses whose message starts with
the file's path.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from pymatgen.core import Element, Structure

from xanes_utils.dataset import FORMAT, Record, manifest_path, load_dataset
from xanes_utils.elements import E_START, ELEMENTS, N_POINTS, check_element, energy_grid
from xanes_utils.feff import to_grid
from xanes_utils.io import CorruptFileError, atomic_write_bytes
from xanes_utils.structures import check_structure

log = logging.getLogger(__name__)

#: Header row of the authors' list format.
AUTHORS_HEADER = ("spectrum_id", "absorbing_element", "absorbing_index", "startpoint", "y")
#: Largest accepted difference between an authors' ``startpoint`` and the paper's E_start (eV).
STARTPOINT_TOLERANCE = 0.5
#: Range of the mean of the last 10 grid points accepted as "edge-step normalised".
NORMALISED_TAIL = (0.2, 5.0)
#: Default cache of Materials Project downloads (override with ``$XANES_UTILS_CACHE``).
DEFAULT_CACHE_DIR = Path(os.environ.get("XANES_UTILS_CACHE", Path.home() / ".cache" / "xanes_utils")) / "mp_xas"
#: Suffixes of pickle-based files, which are loaded only when explicitly trusted.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle")

_SPECTRUM_ID = re.compile(r"^(?P<material>.+?)-(?P<site>\d+)-(?P<element>[A-Z][a-z]?)-XANES-K$")
_SITE_DIR_NAMES = (re.compile(r"^(?P<site>\d+)_(?P<element>[A-Z][a-z]?)$"),   # Lightshow: 000_Fe
                   re.compile(r"^(?P<element>[A-Z][a-z]?)_(?P<site>\d+)$"))   # Fe_12


class DataError(ValueError):
    """An input entry or file that cannot become a :class:`Record`; the message names file and problem."""


class UnsafeFileError(DataError):
    """A pickle-based file (``.pt``/``.pkl``) offered without ``trust=True``."""


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------

def _skip(where: str, exc: Exception | str, strict: bool) -> None:
    """Raise :class:`DataError` for ``where`` (strict) or log that it is skipped, with the reason."""
    reason = str(exc)
    if strict:
        raise DataError(f"{where}: {reason}") from (exc if isinstance(exc, Exception) else None)
    log.warning("skipped %s: %s", where, reason)


def _text(value: Any, name: str, enum: bool = False) -> str:
    """A short string from a JSON value: plain strings, pymatgen ``Element``/enum/MPID dicts.

    With ``enum``, a Python enum's ``str`` (``"Edge.K"``) gives its value (``"K"``).
    """
    if isinstance(value, dict):
        for key in ("element", "value", "symbol", "string"):
            if isinstance(value.get(key), str):
                return value[key]
        raise DataError(f"{name}: cannot read a name from {_short(value)}")
    if isinstance(value, str) and value.strip():
        return value.strip().rsplit(".", 1)[-1] if enum else value.strip()
    raise DataError(f"{name}: expected a string, got {_short(value)}")


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _index(value: Any, name: str = "absorbing_index") -> int:
    """A non-negative integer site index (ints, integral floats, digit strings; never bools)."""
    if hasattr(value, "item") and hasattr(value, "dtype"):
        value = value.item()  # numpy / torch scalar
    if isinstance(value, bool):
        raise DataError(f"{name}: expected an integer, got {value!r}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise DataError(f"{name}: expected a non-negative integer, got {_short(value)}")
    return value


def _floats(value: Any, name: str) -> np.ndarray:
    """A 1-D float array from a list, a numpy/torch array or monty's encoded numpy dict."""
    if isinstance(value, dict) and "data" in value:
        value = value["data"]
    if hasattr(value, "tolist") and not isinstance(value, (list, str)):
        value = value.tolist()
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise DataError(f"{name}: expected a list of numbers, got {_short(value)}")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: not a list of numbers ({exc})") from exc
    if arr.ndim != 1:
        raise DataError(f"{name}: expected a 1-D list of numbers, got shape {arr.shape}")
    return arr


def _structure(value: Any, name: str = "structure") -> Structure:
    """A pymatgen structure from its dict (``Structure.as_dict``), as a :class:`DataError` if unreadable."""
    if isinstance(value, Structure):
        return value
    if not isinstance(value, dict):
        raise DataError(f"{name}: expected a pymatgen structure dict, got {_short(value)}")
    if "lattice" not in value and isinstance(value.get("structure"), dict):
        value = value["structure"]  # SymmetrizedStructure (site-averaged MP spectra) wraps the structure
    try:
        structure = Structure.from_dict(value)
        matrix = structure.lattice.matrix
        finite = np.all(np.isfinite(matrix)) and np.all(np.isfinite(structure.frac_coords))
        volume = structure.volume
    except Exception as exc:  # noqa: BLE001 - pymatgen's parser raises many types on malformed input
        raise DataError(f"{name}: unreadable pymatgen structure ({type(exc).__name__}: {exc})") from exc
    if not finite or not volume > 1e-3 or len(structure) == 0:
        raise DataError(f"{name}: degenerate structure (non-finite coordinates, zero volume or no sites)")
    return structure


def _absorber(structure: Structure, site: int, element: str) -> None:
    """Check that ``structure`` is usable and ``site`` is an ``element`` site of it."""
    check_structure(structure)
    if site >= len(structure):
        raise DataError(f"absorbing_index {site} is out of range for a structure of {len(structure)} sites")
    found = structure[site].specie.symbol
    if found != element:
        raise DataError(f"site {site} of the structure is {found}, not the absorbing element {element}")


def _check_normalised(mu: np.ndarray) -> None:
    tail = float(np.mean(mu[-10:]))
    low, high = NORMALISED_TAIL
    if not low < tail < high:
        raise DataError(f"spectrum does not look edge-step normalised (mean of the last 10 grid points "
                        f"{tail:.3g}, expected about 1)")


def _on_grid(energy: np.ndarray, mu: np.ndarray, element: str) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate a raw spectrum onto the paper's grid, rejecting wrong grids and unnormalised spectra."""
    if energy.shape != mu.shape:
        raise DataError(f"energy ({energy.size} points) and mu ({mu.size} points) differ in length")
    grid = energy_grid(element)
    if energy.size and np.isfinite(energy[0]) and energy[0] > grid[len(grid) // 2]:
        raise DataError(f"spectrum starts at {energy[0]:.1f} eV, after the {element} grid midpoint "
                        f"({grid[len(grid) // 2]:.1f} eV): wrong element or edge?")
    if not np.all(np.isfinite(energy)):
        raise DataError("energies contain NaN or infinite values")
    grid, y = to_grid(energy, mu, element)
    _check_normalised(y)
    return grid, y


def _record(*, id: str, element: str, site: int, structure: Structure, energy: np.ndarray, mu: np.ndarray,
            source: dict, material_id: str) -> Record:
    """Validate everything and build one :class:`Record` on the paper's grid."""
    element = check_element(element)
    _absorber(structure, site, element)
    grid, y = _on_grid(energy, mu, element)
    return Record(id=id, element=element, site=site, structure_dict=structure.as_dict(), energy=grid, mu=y,
                  source=source, material_id=material_id)


def _read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped for ``.gz``; unreadable data raise :class:`CorruptFileError`."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except FileNotFoundError:
        raise
    except (OSError, EOFError, ValueError) as exc:
        raise CorruptFileError(f"{path}: corrupt or truncated file ({exc})") from exc


def _read_text(path: Path) -> str:
    try:
        return _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path}: not UTF-8 text ({exc})") from exc


# --------------------------------------------------------------------------------------------------
# 1. Materials Project XAS documents
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# 2. FEFF run directories (Lightshow / OmniXAS layout)
# --------------------------------------------------------------------------------------------------

def _feff_cards(text: str) -> tuple[dict[str, str], dict[int, str], list[tuple[np.ndarray, int, str]]]:
    """Cards (first word -> rest), POTENTIALS (ipot -> element) and ATOMS (xyz, ipot, tag) of a feff.inp."""
    cards: dict[str, str] = {}
    potentials: dict[int, str] = {}
    atoms: list[tuple[np.ndarray, int, str]] = []
    section = None
    for raw in text.splitlines():
        line = raw.split("!")[0].strip()
        if not line or line.startswith("*"):
            continue
        words = line.split()
        key = words[0].upper()
        if key in ("POTENTIALS", "ATOMS"):
            section = key
            continue
        if key == "END":
            section = None
            continue
        if section == "POTENTIALS" and words[0].lstrip("-").isdigit():
            if len(words) >= 2 and words[1].isdigit():
                potentials[int(words[0])] = Element.from_Z(int(words[1])).symbol
            continue
        if section == "ATOMS":
            try:
                xyz = np.array([float(w) for w in words[:3]])
                ipot = int(words[3])
            except (ValueError, IndexError) as exc:
                raise DataError(f"malformed ATOMS line {raw.strip()!r}") from exc
            atoms.append((xyz, ipot, words[4] if len(words) > 4 else ""))
            continue
        section = None
        cards.setdefault(key, " ".join(words[1:]))
    return cards, potentials, atoms


def _feff_cluster(path: Path) -> tuple[str, list[tuple[float, str]]]:
    """Absorbing element and neighbour (distance, element) list of the ATOMS cluster of ``feff.inp``.

    The absorber is the ipot-0 atom; it must sit at the origin. Elements come from POTENTIALS (Z), or
    from the atom's tag when POTENTIALS is absent.
    """
    try:
        cards, potentials, atoms = _feff_cards(path.read_text(errors="replace"))
    except ValueError as exc:
        raise DataError(f"unreadable feff.inp ({exc})") from exc
    edge = cards.get("EDGE", "K").split()[0].upper() if cards.get("EDGE") else "K"
    if edge not in ("K", "1"):
        raise DataError(f"feff.inp computes the {edge} edge, not K")
    absorbers = [a for a in atoms if a[1] == 0]
    if len(absorbers) != 1:
        raise DataError(f"feff.inp has {len(absorbers)} ipot-0 (absorbing) atoms in ATOMS, expected 1")
    origin = absorbers[0][0]
    if np.linalg.norm(origin) > 1e-3:
        raise DataError("the absorbing (ipot 0) atom of feff.inp is not at the origin")

    def symbol(ipot: int, tag: str) -> str:
        if ipot in potentials:
            return potentials[ipot]
        match = re.match(r"[A-Z][a-z]?", tag)
        if match is None:
            raise DataError(f"feff.inp: no element for potential {ipot}")
        return match.group(0)

    element = symbol(0, absorbers[0][2])
    neighbours = sorted((float(np.linalg.norm(xyz)), symbol(ipot, tag)) for xyz, ipot, tag in atoms if ipot != 0)
    return element, neighbours


def _shell(neighbours: list[tuple[float, str]], n: int = 12) -> tuple[float, dict[str, np.ndarray]]:
    """Radius covering the first ``n`` neighbours (whole shells) and per-element sorted distances within it."""
    rcut = neighbours[min(n, len(neighbours)) - 1][0] + 0.01
    per: dict[str, list[float]] = {}
    for d, el in neighbours:
        if d <= rcut:
            per.setdefault(el, []).append(d)
    return rcut, {el: np.sort(v) for el, v in per.items()}


def _shell_matches(structure: Structure, site: int, rcut: float, target: dict[str, np.ndarray],
                   tol: float = 0.02) -> bool:
    per: dict[str, list[float]] = {}
    for nb in structure.get_neighbors(structure[site], rcut):
        per.setdefault(nb.specie.symbol, []).append(nb.nn_distance)
    if set(per) != set(target):
        return False
    return all(len(per[el]) == len(target[el]) and np.max(np.abs(np.sort(per[el]) - target[el])) < tol
               for el in target)


def absorbing_site(structure: Structure, feff_inp: str | Path, site_dir_name: str = "") -> int:
    """Index in ``structure`` of the absorbing atom of ``feff_inp``.

    Rule: the absorber is the ipot-0 atom at the origin of ATOMS. If the site directory's name encodes an
    index (Lightshow's ``000_Fe`` or ``Fe_12``) of an atom of that element whose neighbour shell agrees with
    the cluster, that index is used. Otherwise the absorber's first 12 neighbours (whole shells; per-element
    distances within 0.02 Å) are matched against every site of the absorbing element and the lowest
    matching index is used (matching sites are locally equivalent, so they give the same spectrum).
    A cluster with no neighbours can only be matched when the structure has one site of that element.
    """
    element, neighbours = _feff_cluster(Path(feff_inp))
    check_element(element)
    candidates = [i for i, s in enumerate(structure) if s.specie.symbol == element]
    if not candidates:
        raise DataError(f"the structure has no {element} site (absorber of feff.inp)")
    named = None
    for pattern in _SITE_DIR_NAMES:
        match = pattern.match(site_dir_name)
        if match:
            named = int(match.group("site"))
            if named not in candidates or match.group("element") != element:
                log.warning("%s: directory name %r does not name a %s site of the structure; matching the "
                            "neighbour shell instead", feff_inp, site_dir_name, element)
                named = None
    if not neighbours:
        if named is not None:
            return named
        if len(candidates) == 1:
            return candidates[0]
        raise DataError("feff.inp's cluster holds only the absorber: cannot tell which "
                        f"of {len(candidates)} {element} sites it is")
    rcut, target = _shell(neighbours)
    if named is not None:
        if _shell_matches(structure, named, rcut, target):
            return named
        log.warning("%s: site %d named by the directory does not match the feff.inp cluster; matching the "
                    "neighbour shell instead", feff_inp, named)
    for i in candidates:
        if _shell_matches(structure, i, rcut, target):
            return i
    raise DataError(f"the absorber's neighbour shell in feff.inp matches no {element} site of the structure")


def read_xmu(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(omega, mu) of a FEFF ``xmu.dat`` (columns omega e k mu mu0 chi; names taken from the header)."""
    path = Path(path)
    header: list[str] = []
    rows = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            words = line.lstrip("#").split()
            if "omega" in words and "mu" in words:
                header = words
            continue
        try:
            rows.append([float(w) for w in line.split()])
        except ValueError as exc:
            raise DataError(f"xmu.dat line {n} is not numeric ({line[:40]!r})") from exc
    i_e, i_mu = (header.index("omega"), header.index("mu")) if header else (0, 3)
    if len(rows) < 2:
        raise DataError(f"xmu.dat has {len(rows)} data rows")
    width = min(len(r) for r in rows)
    if width <= max(i_e, i_mu):
        raise DataError(f"xmu.dat has rows of only {width} columns, expected at least {max(i_e, i_mu) + 1}")
    table = np.array([r[:width] for r in rows])
    return table[:, i_e], table[:, i_mu]


def _material_structure(material_dir: Path) -> Structure:
    poscar = material_dir / "POSCAR"
    files = [poscar] if poscar.exists() else sorted(material_dir.glob("*.cif"))
    if len(files) != 1:
        raise DataError(f"expected one POSCAR or one *.cif, found {len(files)}")
    try:
        return Structure.from_file(files[0])
    except Exception as exc:  # noqa: BLE001 - pymatgen's file parsers raise many types on bad files
        raise DataError(f"unreadable structure {files[0].name} ({type(exc).__name__}: {exc})") from exc


def _has_structure(directory: Path) -> bool:
    return (directory / "POSCAR").exists() or any(directory.glob("*.cif"))


def _material_dirs(root: Path, depth: int = 1) -> Iterator[Path]:
    """Material folders (holding POSCAR or a CIF) at ``root``, below it, or, ``depth`` levels further
    down, below folders that only group materials (OmniXAS/Lightshow ``FEFF/<element>/<material>``)."""
    if _has_structure(root):
        yield root
        return
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if _has_structure(child):
            yield child
        elif not any(child.rglob("feff.inp")):
            continue
        elif depth > 0:
            yield from _material_dirs(child, depth - 1)
        else:
            log.warning("skipped %s: FEFF runs but no POSCAR or *.cif structure; point the loader at the "
                        "folder whose subfolders are materials (each with a POSCAR or CIF)", child)


def load_feff_dirs(root: str | Path, strict: bool = False) -> list[Record]:
    """K-edge XANES of FEFF runs laid out as ``<root>/<material>/POSCAR`` (or ``*.cif``) plus
    ``<root>/<material>/**/<site dir>/feff.inp`` and ``xmu.dat`` (Lightshow / OmniXAS); ``root`` may also
    be one level above, grouping materials in folders (OmniXAS's ``FEFF/<element>/<material>``).

    The absorbing site is recovered by :func:`absorbing_site`; ``mu`` is xmu.dat's ``mu`` column against
    ``omega``. Runs with a missing or corrupt xmu.dat, or any other problem, are skipped with a logged
    reason (or raise :class:`DataError` if ``strict``).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory of FEFF runs")
    records = []
    for material_dir in _material_dirs(root):
        material = material_dir.name
        try:
            structure = _material_structure(material_dir)
        except ValueError as exc:
            _skip(str(material_dir), exc, strict)
            continue
        for inp in sorted(material_dir.rglob("feff.inp")):
            site_dir = inp.parent
            try:
                xmu = site_dir / "xmu.dat"
                if not xmu.exists():
                    raise DataError("no xmu.dat (FEFF did not finish?)")
                site = absorbing_site(structure, inp, site_dir.name)
                element = structure[site].specie.symbol
                energy, mu = read_xmu(xmu)
                records.append(_record(
                    id=f"{material}-{site}-{element}-XANES-K", element=element, site=site, structure=structure,
                    energy=energy, mu=mu, material_id=material,
                    source={"database": "feff_dirs", "path": str(site_dir)},
                ))
            except ValueError as exc:
                _skip(str(site_dir), exc, strict)
    log.info("%s: %d FEFF K-edge XANES records", root, len(records))
    return records


# --------------------------------------------------------------------------------------------------
# 3. The authors' list format
# --------------------------------------------------------------------------------------------------

def _authors_rows(path: Path, trust: bool) -> list:
    """The raw list (header row first) from JSON, CSV or, if trusted, a pickled torch/pickle file."""
    suffixes = [s.lower() for s in path.suffixes]
    if any(s in PICKLE_SUFFIXES for s in suffixes):
        if not trust:
            raise UnsafeFileError(
                f"{path}: refusing to unpickle: loading a pickle-based file (.pt/.pkl) can run arbitrary code "
                "from the file. Convert it to JSON/CSV, or, only for a file from a source you trust, pass "
                "trust=True (load_authors_format(..., trust=True) / load_any(..., trust=True))")
        return _load_pickle(path)
    if ".csv" in suffixes:
        text = _read_text(path)
        try:
            return list(csv.reader(io.StringIO(text)))
        except csv.Error as exc:
            raise CorruptFileError(f"{path}: malformed CSV ({exc})") from exc
    try:
        return json.loads(_read_text(path))
    except ValueError as exc:
        raise CorruptFileError(f"{path}: malformed or truncated JSON ({exc})") from exc


def _load_pickle(path: Path) -> Any:
    """Unpickle a trusted file: torch files via ``torch.load(weights_only=False)``, others via pickle."""
    log.warning("%s: unpickling a trusted file (this can run code from the file)", path)
    if path.suffix.lower() in (".pt", ".pth"):
        import torch

        return torch.load(path, map_location="cpu", weights_only=False)
    import pickle

    with open(path, "rb") as fh:
        return pickle.load(fh)  # noqa: S301 - only with trust=True, see _authors_rows


def _plain_row(row: Any) -> list:
    """A row with torch/numpy values turned into Python values."""
    if hasattr(row, "tolist") and not isinstance(row, list):
        row = row.tolist()
    if not isinstance(row, (list, tuple)):
        raise DataError(f"expected a row (list), got {_short(row)}")
    return list(row)


def _y_values(row: list) -> np.ndarray:
    """The ``y`` of a row: one cell (list, or text like ``[0.1, 0.2]``) or 111 trailing cells (CSV)."""
    if len(row) == 5:
        cell = row[4]
        if isinstance(cell, str):
            parts = [p for p in re.split(r"[\s,;]+", cell.strip().strip("[]()")) if p]
            try:
                return np.array([float(p) for p in parts])
            except ValueError as exc:
                raise DataError(f"y is not a list of numbers ({exc})") from exc
        return _floats(cell, "y")
    if len(row) == 4 + N_POINTS:
        if not all(_is_number(v) for v in row[4:]):
            raise DataError("y columns are not all numbers")
        return np.array([float(v) for v in row[4:]])
    raise DataError(f"expected 5 columns ({', '.join(AUTHORS_HEADER)}), got {len(row)}")


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _authors_header_ok(row: Any) -> bool:
    if not isinstance(row, (list, tuple)) or len(row) < 5:
        return False
    names = [str(v).strip().lower() for v in row[:5]]
    return names[:4] == list(AUTHORS_HEADER[:4]) and names[4] in ("y", "y0", "y_0")


def _structure_file(structures_dir: Path, material: str) -> Path:
    for name in (f"{material}.json", f"{material}.json.gz"):
        if (structures_dir / name).exists():
            return structures_dir / name
    raise DataError(f"no structure file {material}.json in {structures_dir}")


def load_authors_format(path: str | Path, structures_dir: str | Path | None = None, trust: bool = False,
                        strict: bool = False) -> list[Record]:
    """Spectra in the authors' list format: a header row ``spectrum_id, absorbing_element,
    absorbing_index, startpoint, y`` then one row per spectrum, ``y`` the 111 grid values.

    JSON and CSV files are parsed as data (nothing is executed). The authors' pickled torch ``.pt`` list
    is loaded only with ``trust=True`` (unpickling can run arbitrary code); otherwise
    :class:`UnsafeFileError` is raised. Structures come from ``<structures_dir>/<material_id>.json``
    (pymatgen JSON; default: ``structures/`` next to ``path``), the material id being the part of
    ``spectrum_id`` (``mp-779789-14-Fe-XANES-K``) before the site index. A ``startpoint`` more than
    0.5 eV from the paper's E_start is a wrong grid.
    """
    path = Path(path)
    structures_dir = Path(structures_dir) if structures_dir is not None else path.parent / "structures"
    rows = _authors_rows(path, trust)
    if hasattr(rows, "tolist") and not isinstance(rows, list):
        rows = rows.tolist()
    if not isinstance(rows, (list, tuple)) or not rows:
        raise CorruptFileError(f"{path}: expected a non-empty list of rows, got {_short(rows)}")
    try:
        header = _plain_row(rows[0])
    except DataError:
        header = None
    if not _authors_header_ok(header):
        raise CorruptFileError(f"{path}: first row must be the header {list(AUTHORS_HEADER)}, "
                               f"got {_short(rows[0])}")
    structures: dict[str, Structure | DataError] = {}
    records = []
    for n, raw in enumerate(rows[1:], start=1):
        where = f"{path}: row {n}"
        try:
            row = _plain_row(raw)
            if not row or (len(row) == 1 and not str(row[0]).strip()):
                continue  # blank CSV line
            y = _y_values(row)
            spectrum_id = _text(row[0], "spectrum_id")
            where = f"{path}: row {n} ({spectrum_id})"
            match = _SPECTRUM_ID.match(spectrum_id)
            if match is None:
                raise DataError(f"spectrum_id {spectrum_id!r} is not like 'mp-779789-14-Fe-XANES-K'")
            element = check_element(_text(row[1], "absorbing_element"))
            site = _index(row[2])
            if match.group("element") != element or int(match.group("site")) != site:
                raise DataError(f"spectrum_id {spectrum_id!r} disagrees with absorbing_element {element!r} / "
                                f"absorbing_index {site}")
            startpoint = float(row[3]) if _is_number(row[3]) else None
            if startpoint is None or not np.isfinite(startpoint):
                raise DataError(f"startpoint is not a number: {_short(row[3])}")
            if abs(startpoint - E_START[element]) > STARTPOINT_TOLERANCE:
                raise DataError(f"wrong grid: startpoint {startpoint} eV, but the paper's {element} grid "
                                f"starts at {E_START[element]} eV")
            if y.size != N_POINTS:
                raise DataError(f"y has {y.size} points, expected {N_POINTS}")
            if not np.all(np.isfinite(y)):
                raise DataError("y contains NaN or infinite values")
            _check_normalised(y)
            material = match.group("material")
            if material not in structures:
                try:
                    sfile = _structure_file(structures_dir, material)
                    structures[material] = _structure(_json_file(sfile), f"structure {sfile.name}")
                except (DataError, CorruptFileError) as exc:
                    structures[material] = DataError(str(exc))
            structure = structures[material]
            if isinstance(structure, DataError):
                raise structure
            check_element(element)
            _absorber(structure, site, element)
            records.append(Record(
                id=spectrum_id, element=element, site=site, structure_dict=structure.as_dict(),
                energy=energy_grid(element), mu=y, material_id=material,
                source={"database": "authors", "file": str(path), "startpoint": startpoint},
            ))
        except ValueError as exc:
            _skip(where, exc, strict)
    log.info("%s: %d records in the authors' format", path, len(records))
    return records


def _json_file(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except ValueError as exc:
        raise CorruptFileError(f"{path}: malformed or truncated JSON ({exc})") from exc


# --------------------------------------------------------------------------------------------------
# 4. Dispatch
# --------------------------------------------------------------------------------------------------

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
