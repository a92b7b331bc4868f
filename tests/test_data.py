"""External data loaders: Materials Project documents (and a mocked download), FEFF run directories,
the authors' list format, dispatch, pickle safety, and property-based robustness against bad input."""

from __future__ import annotations

import csv
import functools
import json
import logging
import pickle
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from monty.json import MontyEncoder
from pymatgen.analysis.xas.spectrum import XAS
from pymatgen.core import Lattice, Structure

from xanes_utils.loaders import materials_project
from xanes_utils.data import (
    AUTHORS_HEADER, DataError, UnsafeFileError, fetch_materials_project, load_any, load_authors_format,
    load_feff_dirs, load_mp_documents, mp_cache_path, parse_mp_document,
)
from xanes_utils.dataset import FORMAT, Record, manifest_path
from xanes_utils.elements import E_START, energy_grid
from xanes_utils.feff import to_grid
from xanes_utils.io import CorruptFileError, atomic_write_json, sha256

PROPERTY = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------
# Fixtures and builders
# ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _rocksalt(metal: str, a: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [metal, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def rocksalt(metal: str = "Ni", a: float = 4.17) -> Structure:
    """Rock salt (conventional cell, sites 0-3 metal, 4-7 O): one distinct metal site."""
    return _rocksalt(metal, a).copy()  # from_spacegroup takes ~0.5 s: build each cell once


def two_site_fe() -> Structure:
    """Two symmetry-distinct Fe sites with different neighbour shells."""
    return Structure(Lattice.tetragonal(4.0, 6.0), ["Fe", "Fe", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.3], [0.5, 0, 0], [0, 0.5, 0.5]])


def edge_spectrum(element: str, n: int = 200, offset: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """A FEFF-like K edge: arctan step plus a white line, edge-step normalised (ends near 1)."""
    start = E_START.get(element, 80725.0)  # Au K edge for the unsupported-element case
    e0 = start + 15.0
    energy = np.linspace(start + offset, start + 70.0, n)
    mu = 0.5 + np.arctan((energy - e0) / 1.5) / np.pi + 0.3 * np.exp(-((energy - e0 - 4) ** 2) / 8)
    return energy, mu


def mp_doc(structure: Structure, site: int | None, element: str, material_id: str = "mp-1",
           edge: str = "K", kind: str = "XANES") -> dict:
    """An MP API XAS document (as JSON) built from a pymatgen ``XAS``."""
    energy, mu = edge_spectrum(element)
    xas = XAS(energy, mu, structure, element, edge=edge, spectrum_type=kind, absorbing_index=site)
    suffix = "" if site is None else f"-{site}"
    doc = {"spectrum": xas.as_dict(), "structure": structure.as_dict(), "absorbing_element": element,
           "edge": edge, "spectrum_type": kind, "material_id": material_id, "task_ids": ["mp-9"],
           "spectrum_id": f"{material_id}-{kind}-{element}-{edge}{suffix}"}
    return json.loads(json.dumps(doc, cls=MontyEncoder))


def flat_doc(structure: Structure, site: int, element: str, material_id: str = "mp-2") -> dict:
    """The same information with x/y and absorbing_index at top level, no ``spectrum``."""
    energy, mu = edge_spectrum(element)
    return {"x": energy.tolist(), "y": mu.tolist(), "structure": structure.as_dict(), "absorbing_index": site,
            "absorbing_element": element, "edge": "K", "spectrum_type": "XANES", "task_id": "mp-77",
            "material_id": material_id}


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path


def write_jsonl(path: Path, docs: list) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def check_record(rec: Record) -> None:
    """The common contract of every loader's output."""
    assert isinstance(rec, Record)
    assert np.array_equal(rec.energy, energy_grid(rec.element))
    assert rec.mu.shape == (111,) and np.all(np.isfinite(rec.mu))
    assert rec.structure[rec.site].specie.symbol == rec.element
    assert 0.2 < rec.mu[-10:].mean() < 5


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records if r.name.startswith("xanes_utils"))


def write_xmu(path: Path, energy: np.ndarray, mu: np.ndarray) -> None:
    """A FEFF-style xmu.dat (omega e k mu mu0 chi)."""
    lines = ["# xmu.dat written by the test suite", "#  omega    e    k    mu    mu0     chi     @#"]
    e0 = energy[0] + 10
    for e, m in zip(energy, mu):
        k = np.sign(e - e0) * np.sqrt(abs(e - e0) / 3.81)
        lines.append(f"{e:12.4f} {e - e0:10.4f} {k:8.4f} {m:12.6e} {m * 0.9:12.6e} {m * 0.1:12.6e}")
    path.write_text("\n".join(lines) + "\n")


def feff_run(site_dir: Path, structure: Structure, site: int) -> None:
    """Real pymatgen MPXANESSet feff.inp plus a synthetic xmu.dat for ``structure[site]``."""
    from pymatgen.io.feff.sets import MPXANESSet

    MPXANESSet(site, structure, edge="K", radius=5.0).write_input(str(site_dir))
    write_xmu(site_dir / "xmu.dat", *edge_spectrum(structure[site].specie.symbol))


@pytest.fixture(scope="module")
def feff_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<root>/mp-fe2/POSCAR with four runs (named, unnamed, misnamed, missing xmu) and <root>/mp-nio/*.cif."""
    root = tmp_path_factory.mktemp("feff_runs")
    fe = two_site_fe()
    (root / "mp-fe2" / "FEFF-XANES").mkdir(parents=True)
    fe.to(filename=str(root / "mp-fe2" / "POSCAR"), fmt="poscar")
    for name, site in [("000_Fe", 0), ("site_b", 1), ("Fe_0", 1), ("001_Fe", 1)]:
        d = root / "mp-fe2" / "FEFF-XANES" / name
        d.mkdir()
        feff_run(d, fe, site)
    (root / "mp-fe2" / "FEFF-XANES" / "001_Fe" / "xmu.dat").unlink()  # FEFF did not finish
    nio = rocksalt()
    (root / "mp-nio" / "000_Ni").mkdir(parents=True)
    nio.to(filename=str(root / "mp-nio" / "NiO.cif"))
    feff_run(root / "mp-nio" / "000_Ni", nio, 0)
    return root


def authors_row(spectrum_id: str, element: str, site: int, startpoint: float | None = None,
                n: int = 111) -> list:
    energy, mu = edge_spectrum(element)
    _, y = to_grid(energy, mu, element)
    start = E_START[element] if startpoint is None else startpoint
    return [spectrum_id, element, site, start, [round(v, 6) for v in y[:n]]]


@pytest.fixture()
def structures_dir(tmp_path: Path) -> Path:
    d = tmp_path / "structures"
    d.mkdir()
    write_json(d / "mp-779789.json", two_site_fe().as_dict())
    write_json(d / "mp-19009.json", rocksalt().as_dict())
    return d


def authors_rows() -> list:
    return [list(AUTHORS_HEADER),
            authors_row("mp-779789-1-Fe-XANES-K", "Fe", 1),
            authors_row("mp-19009-0-Ni-XANES-K", "Ni", 0, startpoint=E_START["Ni"] + 0.3),
            authors_row("mp-779789-0-Fe-XANES-K", "Fe", 0, startpoint=E_START["Fe"] + 2.0),  # wrong grid
            authors_row("mp-404-0-Fe-XANES-K", "Fe", 0),                                       # no structure
            authors_row("mp-19009-0-Ni-XANES-K", "Ni", 0, n=110)]                              # short y


def write_authors_csv(path: Path, rows: list, spread: bool = False) -> Path:
    """CSV serialisation: y as one bracketed cell, or (``spread``) as 111 trailing columns."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        for i, row in enumerate(rows):
            if i == 0:
                writer.writerow(row[:4] + ([f"y{j}" for j in range(111)] if spread else ["y"]))
            else:
                writer.writerow(row[:4] + (list(row[4]) if spread else [json.dumps(row[4])]))
    return path


# ------------------------------------------------------------------------------------------------
# 1. Materials Project documents
# ------------------------------------------------------------------------------------------------

def test_mp_documents_json_list_and_json_lines(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="xanes_utils")
    docs = [mp_doc(rocksalt(), 0, "Ni", "mp-19009"), mp_doc(rocksalt(), 0, "Ni", "mp-19009", edge="L3"),
            mp_doc(rocksalt(), 0, "Ni", "mp-19009", kind="EXAFS"), flat_doc(two_site_fe(), 1, "Fe", "mp-5")]
    for path in (write_json(tmp_path / "docs.json", docs), write_jsonl(tmp_path / "docs.jsonl", docs)):
        records = load_mp_documents(path)
        assert [r.id for r in records] == ["mp-19009-0-Ni-XANES-K", "mp-5-1-Fe-XANES-K"]
        for rec in records:
            check_record(rec)
        _, expected = to_grid(*edge_spectrum("Ni"), "Ni")
        assert np.allclose(records[0].mu, expected)
        assert records[0].source["database"] == "materials_project"
        assert records[0].material_id == "mp-19009"
        assert logged(caplog, "not a K-edge XANES")


def test_mp_api_response_wrapper_and_gzip(tmp_path):
    import gzip

    path = tmp_path / "resp.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"data": [mp_doc(rocksalt("Co", 4.26), 0, "Co")]}).encode()))
    [rec] = load_mp_documents(path)
    check_record(rec)
    assert rec.element == "Co"


def disordered(structure: Structure) -> Structure:
    s = structure.copy()
    s.replace(0, {"Ni": 0.5, "Co": 0.5})
    return s


def nan_doc() -> dict:
    doc = flat_doc(rocksalt(), 0, "Ni")
    doc["y"][50] = float("nan")
    return doc


def unsorted_doc() -> dict:
    doc = flat_doc(rocksalt(), 0, "Ni")
    doc["x"][10], doc["x"][11] = doc["x"][11], doc["x"][10]
    return doc


def shifted_doc(shift: float) -> dict:
    doc = flat_doc(rocksalt(), 0, "Ni")
    doc["x"] = [x + shift for x in doc["x"]]
    return doc


BAD_DOCS = {
    "unsupported": (lambda: flat_doc(rocksalt("Au", 5.0), 0, "Au"), "unsupported absorbing element"),
    "disordered": (lambda: {**flat_doc(rocksalt(), 0, "Ni"), "structure": disordered(rocksalt()).as_dict()},
                   "disordered"),
    "nan": (nan_doc, "NaN"),
    "non-monotonic": (unsorted_doc, "increasing"),
    "grid-after": (lambda: shifted_doc(2000.0), "wrong element or edge"),
    "grid-before": (lambda: shifted_doc(-2000.0), "wrong element or edge"),
    "kev": (lambda: {**flat_doc(rocksalt(), 0, "Ni"), "x": [x / 1000 for x in flat_doc(rocksalt(), 0, "Ni")["x"]]},
            "wrong element or edge"),
    "wrong-site": (lambda: flat_doc(rocksalt(), 6, "Ni"), "not the absorbing element"),  # site 6 is O
    "site-out-of-range": (lambda: flat_doc(rocksalt(), 99, "Ni"), "out of range"),
    "unnormalised": (lambda: {**flat_doc(rocksalt(), 0, "Ni"),
                              "y": [v * 1e4 for v in flat_doc(rocksalt(), 0, "Ni")["y"]]}, "normalised"),
    "missing-structure": (lambda: {k: v for k, v in flat_doc(rocksalt(), 0, "Ni").items() if k != "structure"},
                          "missing field 'structure'"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCS))
def test_mp_bad_document_skipped_or_raised(tmp_path, caplog, case):
    make, message = BAD_DOCS[case]
    good = flat_doc(rocksalt(), 0, "Ni", "mp-good")
    path = write_json(tmp_path / f"{case}.json", [good, make()])
    caplog.set_level(logging.WARNING, logger="xanes_utils")
    records = load_mp_documents(path)
    assert [r.id for r in records] == ["mp-good-0-Ni-XANES-K"]
    assert logged(caplog, f"{path}: entry 1") and logged(caplog, message)
    with pytest.raises(DataError, match=message) as info:
        load_mp_documents(path, strict=True)
    assert str(path) in str(info.value) and "entry 1" in str(info.value)


def test_mp_site_averaged_documents(tmp_path, caplog):
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    # MP serves site-averaged spectra with a SymmetrizedStructure; one distinct Ni site: usable
    ok = mp_doc(SpacegroupAnalyzer(rocksalt()).get_symmetrized_structure(), None, "Ni", "mp-19009")
    bad = mp_doc(two_site_fe(), None, "Fe", "mp-fe2")  # averaged over two distinct Fe sites
    [rec] = load_mp_documents(write_json(tmp_path / "avg.json", [ok, bad]))
    assert rec.site == 0 and rec.id == "mp-19009-0-Ni-XANES-K"
    assert logged(caplog, "site-averaged spectrum over 2 symmetry-distinct Fe sites")


def test_mp_truncated_json_list_is_a_corrupt_file(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps([mp_doc(rocksalt(), 0, "Ni")])[:-40])
    with pytest.raises(CorruptFileError, match="truncated") as info:
        load_mp_documents(path)
    assert str(path) in str(info.value)


def test_mp_truncated_json_lines_keep_complete_lines(tmp_path, caplog):
    path = tmp_path / "cut.jsonl"
    docs = [flat_doc(rocksalt(), 0, "Ni", "mp-a"), flat_doc(rocksalt(), 0, "Ni", "mp-b")]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs)[:-50])
    assert [r.id for r in load_mp_documents(path)] == ["mp-a-0-Ni-XANES-K"]
    assert logged(caplog, "line 2: malformed JSON")
    with pytest.raises(CorruptFileError, match="line 2"):
        load_mp_documents(path, strict=True)


# ------------------------------------------------------------------------------------------------
# Mocked Materials Project download: cache and resume
# ------------------------------------------------------------------------------------------------

class FakeXAS:
    """Stands in for ``MPRester().materials.xas``: records the queries and serves fixed documents."""

    def __init__(self, docs: dict[str, list], fail_on: str | None = None) -> None:
        self.docs, self.fail_on, self.calls = docs, fail_on, []

    def search(self, **query: Any) -> list:
        self.calls.append(query)
        if query["absorbing_element"] == self.fail_on:
            raise ConnectionError("network down")
        return self.docs.get(query["absorbing_element"], [])


class ModelDoc:
    """Mimics an ``emmet`` pydantic XASDoc: ``model_dump`` returns live pymatgen objects."""

    def __init__(self, structure: Structure, site: int, element: str, material_id: str) -> None:
        self.structure, self.site, self.element, self.material_id = structure, site, element, material_id

    def model_dump(self) -> dict:
        energy, mu = edge_spectrum(self.element)
        xas = XAS(energy, mu, self.structure, self.element, absorbing_index=self.site)
        return {"spectrum": xas, "structure": self.structure, "absorbing_element": xas.absorbing_element,
                "edge": "K", "spectrum_type": "XANES", "material_id": self.material_id,
                "spectrum_id": f"{self.material_id}-XANES-{self.element}-K-{self.site}"}


def fake_client(xas: FakeXAS) -> SimpleNamespace:
    return SimpleNamespace(materials=SimpleNamespace(xas=xas))


def test_fetch_caches_per_element_and_resumes(tmp_path):
    docs = {"Ni": [mp_doc(rocksalt(), 0, "Ni", "mp-19009")],
            "Fe": [ModelDoc(two_site_fe(), 1, "Fe", "mp-fe2"), ModelDoc(two_site_fe(), 0, "Fe", "mp-fe2")]}
    broken = FakeXAS(docs, fail_on="Fe")
    with pytest.raises(ConnectionError):
        fetch_materials_project(["Ni", "Fe"], cache_dir=tmp_path, client=fake_client(broken))
    assert mp_cache_path(tmp_path, "Ni").exists() and not mp_cache_path(tmp_path, "Fe").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no partial file behind

    good = FakeXAS(docs)
    records = fetch_materials_project(["Ni", "Fe"], cache_dir=tmp_path, client=fake_client(good))
    assert good.calls == [{"absorbing_element": "Fe", "edge": "K", "spectrum_type": "XANES"}]  # Ni resumed
    assert sorted(r.id for r in records) == ["mp-19009-0-Ni-XANES-K", "mp-fe2-0-Fe-XANES-K", "mp-fe2-1-Fe-XANES-K"]
    for rec in records:
        check_record(rec)

    untouched = FakeXAS({}, fail_on="Ni")
    again = fetch_materials_project(["Ni", "Fe"], cache_dir=tmp_path, client=fake_client(untouched))
    assert untouched.calls == [] and [r.id for r in again] == [r.id for r in records]
    assert sorted(r.id for r in load_any(tmp_path)) == sorted(r.id for r in records)


def test_fetch_builds_client_through_factory(tmp_path, monkeypatch):
    xas = FakeXAS({"Cu": [mp_doc(rocksalt("Cu", 4.2), 0, "Cu", "mp-cu")]})
    opened: list = []

    class Rester:
        def __init__(self, api_key: str | None) -> None:
            opened.append(api_key)
            self.materials = SimpleNamespace(xas=xas)

        def __enter__(self) -> "Rester":
            return self

        def __exit__(self, *exc: Any) -> None:
            opened.append("closed")

    monkeypatch.setattr(materials_project, "_mp_client", Rester)
    [rec] = fetch_materials_project(["Cu"], api_key="KEY", cache_dir=tmp_path)
    assert rec.id == "mp-cu-0-Cu-XANES-K" and opened == ["KEY", "closed"]
    fetch_materials_project(["Cu"], api_key="KEY", cache_dir=tmp_path)
    assert opened == ["KEY", "closed"]  # cached: no client was created


def test_fetch_without_mp_api_explains_the_extra(tmp_path):
    try:
        import mp_api  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="mp-api"):
            fetch_materials_project(["Fe"], cache_dir=tmp_path)
    else:
        pytest.skip("mp_api is installed")


def test_parse_mp_document_returns_none_for_other_edges():
    assert parse_mp_document(mp_doc(rocksalt(), 0, "Ni", edge="L2")) is None


# ------------------------------------------------------------------------------------------------
# 2. FEFF run directories
# ------------------------------------------------------------------------------------------------

def test_feff_dirs_recover_sites_and_skip_unfinished(feff_tree, caplog):
    caplog.set_level(logging.WARNING, logger="xanes_utils")
    records = load_feff_dirs(feff_tree)
    by_dir = {Path(r.source["path"]).name: r for r in records}
    assert set(by_dir) == {"000_Fe", "site_b", "Fe_0", "000_Ni"}
    assert by_dir["000_Fe"].site == 0          # index from the directory name, confirmed by the shell
    assert by_dir["site_b"].site == 1          # no index in the name: neighbour-shell match
    assert by_dir["Fe_0"].site == 1            # name contradicts the cluster: the shell wins
    assert by_dir["000_Ni"].id == "mp-nio-0-Ni-XANES-K"
    for rec in records:
        check_record(rec)
    _, expected = to_grid(*edge_spectrum("Fe"), "Fe")
    assert np.allclose(by_dir["site_b"].mu, expected, atol=1e-5)  # xmu.dat keeps 7 significant digits
    assert logged(caplog, "does not match the feff.inp cluster")
    assert logged(caplog, "001_Fe") and logged(caplog, "no xmu.dat")
    with pytest.raises(DataError, match="no xmu.dat"):
        load_feff_dirs(feff_tree, strict=True)


def test_feff_root_grouped_by_element_is_read_one_level_down(feff_tree, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="xanes_utils")
    root = tmp_path / "FEFF"  # OmniXAS / Lightshow: FEFF/<element>/<material>/...
    shutil.copytree(feff_tree / "mp-fe2", root / "Fe" / "mp-fe2")
    shutil.copytree(feff_tree / "mp-nio", root / "Ni" / "mp-nio")
    direct = sorted(r.id for r in load_feff_dirs(feff_tree))
    assert sorted(r.id for r in load_any(root)) == direct and len(direct) == 4
    deeper = tmp_path / "deeper"
    shutil.copytree(root, deeper / "group" / "FEFF")  # two grouping levels: not guessed, but explained
    assert load_any(deeper) == [] and logged(caplog, "point the loader at the folder whose subfolders")


def test_feff_corrupt_xmu_and_single_material_root(feff_tree, tmp_path, caplog):
    root = tmp_path / "mp-nio"
    shutil.copytree(feff_tree / "mp-nio", root)
    xmu = root / "000_Ni" / "xmu.dat"
    xmu.write_text(xmu.read_text()[:300] + "\n 8400.0 garbage\n")
    assert load_feff_dirs(root) == []
    assert logged(caplog, "not numeric")
    xmu.write_text("# only a header\n")
    assert load_feff_dirs(root) == [] and logged(caplog, "0 data rows")


# ------------------------------------------------------------------------------------------------
# 3. Authors' format
# ------------------------------------------------------------------------------------------------

def check_authors(records: list[Record], caplog: pytest.LogCaptureFixture, path: Path) -> None:
    assert [r.id for r in records] == ["mp-779789-1-Fe-XANES-K", "mp-19009-0-Ni-XANES-K"]
    assert [r.material_id for r in records] == ["mp-779789", "mp-19009"]
    for rec in records:
        check_record(rec)
    assert logged(caplog, f"{path}: row 3") and logged(caplog, "wrong grid")
    assert logged(caplog, "no structure file mp-404.json")
    assert logged(caplog, "y has 110 points")


@pytest.mark.parametrize("form", ["json", "csv", "csv-spread"])
def test_authors_format(tmp_path, structures_dir, caplog, form):
    rows = authors_rows()
    if form == "json":
        path = write_json(tmp_path / "data.json", rows)
    else:
        path = write_authors_csv(tmp_path / "data.csv", rows[:5] if form == "csv-spread" else rows,
                                 spread=form == "csv-spread")
    records = load_authors_format(path, structures_dir)
    assert [r.id for r in records] == ["mp-779789-1-Fe-XANES-K", "mp-19009-0-Ni-XANES-K"]
    for rec in records:
        check_record(rec)
    if form != "csv-spread":
        check_authors(records, caplog, path)
    with pytest.raises(DataError, match="wrong grid") as info:
        load_authors_format(path, structures_dir, strict=True)
    assert str(path) in str(info.value)
    assert [r.id for r in load_any(path, structures_dir=structures_dir)] == [r.id for r in records]


def test_authors_header_required(tmp_path, structures_dir):
    path = write_json(tmp_path / "nohead.json", authors_rows()[1:])
    with pytest.raises(CorruptFileError, match="header") as info:
        load_authors_format(path, structures_dir)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------------
# Security: pickles only with trust=True
# ------------------------------------------------------------------------------------------------

class Payload:
    """Unpickling this creates a file: proof that code from the file would have run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable, tuple]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("suffix", [".pt", ".pkl"])
def test_pickle_refused_without_trust(tmp_path, structures_dir, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(pickle.dumps([list(AUTHORS_HEADER), Payload(marker)]))
    for call in (lambda: load_authors_format(path, structures_dir), lambda: load_any(path)):
        with pytest.raises(UnsafeFileError, match="arbitrary code") as info:
            call()
        assert "trust=True" in str(info.value) and str(path) in str(info.value)
        assert isinstance(info.value, ValueError)
    assert not marker.exists()


def test_trusted_pickles_load(tmp_path, structures_dir):
    rows = authors_rows()[:3]
    pkl = tmp_path / "trusted.pkl"
    pkl.write_bytes(pickle.dumps(rows))
    assert len(load_authors_format(pkl, structures_dir, trust=True)) == 2
    torch = pytest.importorskip("torch")
    torch_rows = [rows[0]] + [r[:4] + [torch.tensor(r[4])] for r in rows[1:]]
    pt = tmp_path / "trusted.pt"
    torch.save(torch_rows, pt)
    records = load_any(pt, structures_dir=structures_dir, trust=True)
    assert [r.id for r in records] == ["mp-779789-1-Fe-XANES-K", "mp-19009-0-Ni-XANES-K"]
    for rec in records:
        check_record(rec)


# ------------------------------------------------------------------------------------------------
# 4. load_any dispatch
# ------------------------------------------------------------------------------------------------

def test_load_any_dispatch(tmp_path, feff_tree):
    rec = load_mp_documents(write_json(tmp_path / "one.json", [mp_doc(rocksalt(), 0, "Ni", "mp-19009")]))[0]
    packed = tmp_path / "ds.json.gz"
    atomic_write_json(packed, {"format": FORMAT, "structures": {"mp-19009": rec.structure_dict},
                               "sources": {}, "records": [{
                                   "id": rec.id, "material_id": "mp-19009", "absorbing_index": 0,
                                   "absorbing_element": "Ni", "x": rec.energy.tolist(), "y": rec.mu.tolist()}]})
    atomic_write_json(manifest_path(packed), {"sha256": sha256(packed)})
    assert [r.id for r in load_any(packed)] == [rec.id]
    assert [r.id for r in load_any(tmp_path / "one.json")] == [rec.id]
    jsonl = write_jsonl(tmp_path / "docs.jsonl", [flat_doc(rocksalt(), 0, "Ni")])
    assert len(load_any(jsonl)) == 1
    assert len(load_any(feff_tree)) == 4
    for bad in (tmp_path / "notes.txt", write_json(tmp_path / "other.json", {"foo": 1}), tmp_path / "empty"):
        if bad.suffix == ".txt":
            bad.write_text("hello")
        elif not bad.suffix:
            bad.mkdir()
        with pytest.raises(DataError, match="unrecognised") as info:
            load_any(bad)
        assert str(bad) in str(info.value)
    with pytest.raises(FileNotFoundError):
        load_any(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------------
# Property-based robustness: bad input is skipped with a logged reason or raises a clear error
# ------------------------------------------------------------------------------------------------

PACKAGE_ERRORS = (DataError, CorruptFileError)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=8,
)
MP_KEYS = ["structure", "absorbing_element", "edge", "spectrum_type", "spectrum", "material_id",
           "spectrum_id", "spectrum.x", "spectrum.y", "spectrum.structure", "spectrum.absorbing_index",
           "spectrum.absorbing_element", "spectrum.edge", "spectrum.structure.sites",
           "spectrum.structure.lattice"]
mp_mutation = st.one_of(
    st.tuples(st.just("delete"), st.sampled_from(MP_KEYS)),
    st.tuples(st.just("set"), st.sampled_from(MP_KEYS), json_values),
    st.tuples(st.just("nan"), st.integers(0, 199)),
    st.tuples(st.just("unsort"), st.integers(0, 198)),
    st.tuples(st.just("shift"), st.floats(-3000, 3000)),
    st.tuples(st.just("element"), st.sampled_from(["O", "Au", "Xx", "Fe", "", "ni"])),
    st.tuples(st.just("disorder"), st.floats(0.1, 0.9)),
    st.tuples(st.just("index"), st.one_of(st.integers(-3, 10), st.booleans(), st.floats(), st.text(max_size=3))),
    st.tuples(st.just("truncate"), st.integers(0, 199)),
)


def _container(doc: dict, dotted: str) -> tuple[dict | None, str]:
    *parents, key = dotted.split(".")
    node: Any = doc
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), key


def mutate_mp(doc: dict, mutation: tuple) -> None:
    spec = doc["spectrum"] if isinstance(doc.get("spectrum"), dict) else None
    kind = mutation[0]
    arrays = spec if spec is not None and isinstance(spec.get("x"), dict) else None
    x = arrays["x"].get("data") if arrays and isinstance(arrays["x"], dict) else None
    y = arrays["y"].get("data") if arrays and isinstance(arrays.get("y"), dict) else None
    if kind in ("delete", "set"):
        node, key = _container(doc, mutation[1])
        if node is not None:
            if kind == "delete":
                node.pop(key, None)
            else:
                node[key] = mutation[2]
    elif kind == "nan" and isinstance(y, list) and mutation[1] < len(y):
        y[mutation[1]] = float("nan")
    elif kind == "unsort" and isinstance(x, list) and mutation[1] + 1 < len(x):
        x[mutation[1]], x[mutation[1] + 1] = x[mutation[1] + 1], x[mutation[1]]
    elif kind == "shift" and isinstance(x, list):
        x[:] = [v + mutation[1] for v in x]
    elif kind == "element":
        doc["absorbing_element"] = mutation[1]
    elif kind == "disorder":
        for s in (doc.get("structure"), spec and spec.get("structure")):
            if isinstance(s, dict) and isinstance(s.get("sites"), list) and s["sites"]:
                s["sites"][0]["species"] = [{"element": "Ni", "occu": mutation[1]},
                                            {"element": "Co", "occu": 1 - mutation[1]}]
    elif kind == "index" and spec is not None:
        spec["absorbing_index"] = mutation[1]
    elif kind == "truncate" and isinstance(y, list):
        del y[mutation[1]:]


def check_outcome(call: Callable[[], list], path: Path, strict: bool, caplog: pytest.LogCaptureFixture,
                  expect_some: bool = True) -> list[Record]:
    """Records satisfy the contract; a failure is a package error naming ``path`` or a logged skip."""
    caplog.clear()
    try:
        records = call()
    except PACKAGE_ERRORS as exc:
        assert str(path) in str(exc), f"error does not name the file: {exc}"
        return []
    except FileNotFoundError:
        return []
    for rec in records:
        check_record(rec)
    if expect_some and not records and not strict:
        assert logged(caplog, str(path)), "entry dropped without a logged reason naming the file"
    return records


@PROPERTY
@given(mutations=st.lists(mp_mutation, min_size=1, max_size=3), strict=st.booleans(),
       jsonl=st.booleans())
def test_property_mp_documents_never_crash(tmp_path, caplog, mutations, strict, jsonl):
    caplog.set_level(logging.INFO, logger="xanes_utils")
    doc = mp_doc(rocksalt(), 0, "Ni", "mp-19009")
    for m in mutations:
        mutate_mp(doc, m)
    path = tmp_path / ("fuzz.jsonl" if jsonl else "fuzz.json")
    (write_jsonl if jsonl else write_json)(path, [doc])
    check_outcome(lambda: load_mp_documents(path, strict=strict), path, strict, caplog)


@PROPERTY
@given(cut=st.floats(0, 1), flip=st.one_of(st.none(), st.tuples(st.floats(0, 1), st.integers(0, 255))),
       jsonl=st.booleans(), strict=st.booleans())
def test_property_truncated_or_damaged_files(tmp_path, caplog, cut, flip, jsonl, strict):
    docs = [flat_doc(rocksalt(), 0, "Ni", "mp-a"), mp_doc(rocksalt(), 0, "Ni", "mp-b")]
    text = ("".join(json.dumps(d) + "\n" for d in docs) if jsonl else json.dumps(docs)).encode()
    raw = bytearray(text[: int(cut * len(text))])
    if flip is not None and raw:
        raw[int(flip[0] * (len(raw) - 1))] = flip[1]
    path = tmp_path / ("cut.jsonl" if jsonl else "cut.json")
    path.write_bytes(bytes(raw))
    check_outcome(lambda: load_mp_documents(path, strict=strict), path, strict, caplog, expect_some=False)
    check_outcome(lambda: load_any(path), path, False, caplog, expect_some=False)


authors_mutation = st.one_of(
    st.tuples(st.just("cell"), st.integers(0, 4), json_values),
    st.tuples(st.just("startpoint"), st.floats(-5, 5)),
    st.tuples(st.just("nan"), st.integers(0, 110)),
    st.tuples(st.just("truncate_y"), st.integers(0, 110)),
    st.tuples(st.just("drop_cell"), st.integers(0, 4)),
    st.tuples(st.just("element"), st.sampled_from(["O", "Au", "Ni", "Fe"])),
    st.tuples(st.just("id"), st.sampled_from(["mp-1-Fe-XANES-K", "mp-779789-1-Fe-XANES-L3", "mp-9-0-Fe-XANES-K",
                                              "mp-779789-7-Fe-XANES-K", ""])),
    st.tuples(st.just("disorder"), st.floats(0.1, 0.9)),
)


def mutate_authors(row: list, structure_path: Path, mutation: tuple) -> None:
    kind = mutation[0]
    if kind == "cell" and mutation[1] < len(row):
        row[mutation[1]] = mutation[2]
    elif kind == "startpoint" and len(row) > 3 and isinstance(row[3], (int, float)):
        row[3] = row[3] + mutation[1]
    elif kind in ("nan", "truncate_y") and len(row) > 4 and isinstance(row[4], list):
        if kind == "nan" and mutation[1] < len(row[4]):
            row[4][mutation[1]] = float("nan")
        else:
            del row[4][mutation[1]:]
    elif kind == "drop_cell" and mutation[1] < len(row):
        del row[mutation[1]]
    elif kind == "element" and len(row) > 1:
        row[1] = mutation[1]
    elif kind == "id" and row:
        row[0] = mutation[1]
    elif kind == "disorder":
        s = json.loads(structure_path.read_text())
        s["sites"][1]["species"] = [{"element": "Fe", "occu": mutation[1]}, {"element": "Mn", "occu": 1 - mutation[1]}]
        structure_path.write_text(json.dumps(s))


@PROPERTY
@given(mutations=st.lists(authors_mutation, min_size=1, max_size=3), form=st.sampled_from(["json", "csv"]),
       strict=st.booleans())
def test_property_authors_format_never_crashes(tmp_path, caplog, mutations, form, strict):
    sdir = tmp_path / "fuzz_structures"
    sdir.mkdir(exist_ok=True)
    write_json(sdir / "mp-779789.json", two_site_fe().as_dict())
    row = authors_row("mp-779789-1-Fe-XANES-K", "Fe", 1)
    for m in mutations:
        mutate_authors(row, sdir / "mp-779789.json", m)
    rows = [list(AUTHORS_HEADER), row]
    if form == "json":
        path = write_json(tmp_path / "fuzz.json", rows)
    else:
        path = tmp_path / "fuzz.csv"
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([rows[0]] + [[json.dumps(c) if isinstance(c, (list, dict)) else c
                                                   for c in row]])
    check_outcome(lambda: load_authors_format(path, sdir, strict=strict), path, strict, caplog)


xmu_damage = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("garbage"), st.integers(0, 210), st.text(max_size=12)),
    st.tuples(st.just("nan"), st.integers(2, 201)),
    st.tuples(st.just("reverse")),
    st.tuples(st.just("delete")),
    st.tuples(st.just("feff_inp"), st.floats(0, 1)),
    st.tuples(st.just("columns"), st.integers(1, 5)),
)


@PROPERTY
@given(damage=xmu_damage, strict=st.booleans())
def test_property_feff_dirs_never_crash(tmp_path, caplog, feff_tree, damage, strict):
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    shutil.copytree(feff_tree / "mp-nio", root / "mp-nio")
    site = root / "mp-nio" / "000_Ni"
    xmu = site / "xmu.dat"
    lines = xmu.read_text().splitlines()
    kind = damage[0]
    if kind == "truncate":
        text = xmu.read_text()
        xmu.write_text(text[: int(damage[1] * len(text))])
    elif kind == "garbage":
        lines.insert(min(damage[1], len(lines)), damage[2])
        xmu.write_text("\n".join(lines))
    elif kind == "nan":
        words = lines[damage[1]].split()
        lines[damage[1]] = " ".join(words[:3] + ["nan"] + words[4:])
        xmu.write_text("\n".join(lines))
    elif kind == "reverse":
        xmu.write_text("\n".join(lines[:2] + lines[2:][::-1]))
    elif kind == "delete":
        xmu.unlink()
    elif kind == "feff_inp":
        inp = (site / "feff.inp").read_text()
        (site / "feff.inp").write_text(inp[: int(damage[1] * len(inp))])
    elif kind == "columns":
        xmu.write_text("\n".join(" ".join(ln.split()[: damage[1]]) for ln in lines[2:]))
    check_outcome(lambda: load_feff_dirs(root, strict=strict), root, strict, caplog)
