"""FEFF run directories in the Lightshow / OmniXAS layout; the absorbing site is recovered from
each ``feff.inp``."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterator

import numpy as np
from pymatgen.core import Element, Structure

from xanes_utils.dataset import Record
from xanes_utils.elements import check_element
from xanes_utils.loaders.common import DataError, _record, _skip
from xanes_utils.structures import validate_structure

log = logging.getLogger(__name__)

_SITE_DIR_NAMES = (re.compile(r"^(?P<site>\d+)_(?P<element>[A-Z][a-z]?)$"),   # Lightshow: 000_Fe
                   re.compile(r"^(?P<element>[A-Z][a-z]?)_(?P<site>\d+)$"))   # Fe_12


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
        structure = Structure.from_file(files[0])
    except Exception as exc:  # noqa: BLE001 - pymatgen's file parsers raise many types on bad files
        raise DataError(f"unreadable structure {files[0].name} ({type(exc).__name__}: {exc})") from exc
    validate_structure(structure, files[0].name)
    return structure


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
