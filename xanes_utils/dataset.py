"""The embedded FEFF10 K-edge XANES dataset: records, packing with a manifest, checksummed loading."""

from __future__ import annotations

import collections
import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Sequence

import numpy as np
from pymatgen.core import Structure

from xanes_utils.elements import ELEMENTS
from xanes_utils.io import CorruptFileError, atomic_write_json, read_json, sha256

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_DATASET = DATA_DIR / "xanes_feff10_k.json.gz"
FORMAT = "xanes-family-bucket/1"


@dataclass
class Record:
    """One site-wise K-edge XANES spectrum on the paper's 111-point grid.

    Field names follow pymatgen's ``XAS`` (``absorbing_index`` is ``site``, ``x``/``y`` are
    ``energy``/``mu``); :meth:`to_xas` returns the pymatgen object.
    """

    id: str
    element: str
    site: int
    structure_dict: dict = field(repr=False)
    energy: np.ndarray = field(repr=False)
    mu: np.ndarray = field(repr=False)
    source: dict = field(default_factory=dict, repr=False)
    material_id: str = ""

    @cached_property
    def structure(self) -> Structure:
        """The crystal structure (pymatgen), built on first access."""
        return Structure.from_dict(self.structure_dict)

    def to_xas(self):
        """This record as a :class:`pymatgen.analysis.xas.spectrum.XAS`."""
        from pymatgen.analysis.xas.spectrum import XAS

        return XAS(self.energy, self.mu, self.structure, self.element, edge="K",
                   spectrum_type="XANES", absorbing_index=self.site)


def manifest_path(path: Path) -> Path:
    """The manifest beside a packed dataset file: ``<name>.manifest.json``."""
    return path.with_name(path.name.replace(".json.gz", "") + ".manifest.json")


def finished_record_paths(runs_dir: str | Path) -> list[Path]:
    """Finished FEFF records under ``runs_dir`` (``<element>/<spectrum id>.json.gz``), sorted by path."""
    return [p for p in sorted(Path(runs_dir).glob("*/*.json.gz")) if p.parent.name in ELEMENTS]


#: The plans whose structures' provenance ``pack`` records (the prototype library, the relaxed compounds, the
#: relaxed polyanion compounds).
PLANS = (DATA_DIR / "plan.json.gz", DATA_DIR / "plan_compounds.json.gz", DATA_DIR / "plan_polyanions.json.gz")


def pack(runs_dir: str | Path, out: str | Path = DEFAULT_DATASET,
         plan: str | Path | Sequence[str | Path] = PLANS) -> dict:
    """Pack every finished FEFF record under ``runs_dir`` into ``out`` and write its manifest.

    Provenance (``sources``) comes from the ``plan`` file(s) that exist. Records are sorted by id so the
    file is byte-for-byte reproducible; structures are stored once.
    """
    from xanes_utils.feff import complete_settings

    runs_dir, out = Path(runs_dir), Path(out)
    plans = [plan] if isinstance(plan, (str, Path)) else list(plan)
    sources = {k: v for p in plans if Path(p).exists() for k, v in read_json(p)["sources"].items()}
    records, structures, settings = [], {}, collections.Counter()
    for path in finished_record_paths(runs_dir):
        rec = read_json(path)
        structures[rec["structure_id"]] = rec["structure"]
        rec["settings"] = complete_settings(rec["settings"])
        settings[json.dumps(rec["settings"], sort_keys=True)] += 1
        records.append({
            "id": rec["id"], "material_id": rec["structure_id"], "absorbing_index": rec["absorbing_index"],
            "absorbing_element": rec["absorbing_element"], "edge": "K", "spectrum_type": "XANES",
            "x": rec["x"], "y": [round(v, 6) for v in rec["y"]], "seconds": round(rec["seconds"], 2),
            "settings": rec["settings"], "retried": rec["retried"],
        })
    atomic_write_json(out, {
        "format": FORMAT, "records": records, "structures": structures,
        "sources": {k: sources.get(k, {}) for k in structures},
    })
    counts = collections.Counter(r["absorbing_element"] for r in records)
    try:
        feff_version = version("feff10-rs")
    except PackageNotFoundError:
        feff_version = "unknown"
    manifest = {
        "file": out.name, "sha256": sha256(out), "format": FORMAT, "n_spectra": len(records),
        "n_structures": len(structures), "counts": {el: counts.get(el, 0) for el in ELEMENTS},
        "n_failed": len(list(runs_dir.glob("failed/*.json"))),
        "settings": [{"n": n, "settings": json.loads(k)} for k, n in settings.most_common()],
        "feff10_rs_version": feff_version,
        "mean_seconds_per_spectrum": float(np.mean([r["seconds"] for r in records])) if records else None,
    }
    atomic_write_json(manifest_path(out), manifest)
    log.info("packed %d spectra of %d structures into %s", len(records), len(structures), out)
    return manifest


def load_dataset(path: str | Path | None = None, verify: bool = True) -> list[Record]:
    """Load a packed dataset (``None``: the embedded default) as a list of :class:`Record`.

    With ``verify`` the file's SHA-256 is checked against its manifest, so a corrupt or edited file is
    never used silently.
    """
    path = Path(path) if path is not None else DEFAULT_DATASET
    if not path.exists():
        raise FileNotFoundError(f"{path}: dataset file not found")
    manifest = manifest_path(path)
    if verify and manifest.exists():
        expected = read_json(manifest)
        if not isinstance(expected, dict) or not isinstance(expected.get("sha256"), str):
            raise CorruptFileError(f"{manifest}: manifest without a 'sha256' entry; re-pack the dataset or "
                                   "restore the manifest from git")
        if sha256(path) != expected["sha256"]:
            raise CorruptFileError(f"{path}: SHA-256 does not match {manifest.name}; the file is "
                                   "corrupt or was modified (re-pack it or restore it from git)")
    data = read_json(path)
    if data.get("format") != FORMAT:
        raise CorruptFileError(f"{path}: not a {FORMAT} dataset (format={data.get('format')!r})")
    out = []
    for r in data["records"]:
        out.append(Record(
            id=r["id"], element=r["absorbing_element"], site=int(r["absorbing_index"]),
            structure_dict=data["structures"][r["material_id"]], energy=np.asarray(r["x"], float),
            mu=np.asarray(r["y"], float), source=data["sources"].get(r["material_id"], {}),
            material_id=r["material_id"],
        ))
    return out
