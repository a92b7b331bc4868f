"""How much does relaxing a library structure (CHGNet) change its FEFF spectrum and its bonds?

    python benchmarks/relaxation_study.py [--runs data/feff_runs]

Pairs every finished record of a relaxed structure (``<id>-relaxed``) with the record of the same site of
the unrelaxed structure, when both were computed, and reports: the spectrum change (MSE, edge shift at
half the edge step), the volume change, the absorber's nearest-neighbour distance before and after, and
the first-shell mean bond length against the sum of Shannon radii (absorber at its oxidation state,
neighbour anion), before and after. Also summarises every relaxation (volume change, steps).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from pymatgen.core import Species, Structure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from xanes_utils.compounds import RELAXED_SUFFIX  # noqa: E402
from xanes_utils.dataset import finished_record_paths  # noqa: E402
from xanes_utils.io import read_json  # noqa: E402
from xanes_utils.structures import first_shell_neighbours, oxidation_states  # noqa: E402


def edge_position(energy: np.ndarray, mu: np.ndarray) -> float:
    """First energy where mu reaches half of its final value (linear interpolation)."""
    half = 0.5 * np.mean(mu[-10:])
    i = int(np.argmax(mu >= half))
    if i == 0:
        return float(energy[0])
    return float(np.interp(half, mu[i - 1:i + 1], energy[i - 1:i + 1]))


def shannon_sum(structure: Structure, site: int, shell: list) -> float | None:
    """Ionic radius of the absorber plus the mean radius of its first-shell ions (Å), if tabulated."""
    oxi = oxidation_states(structure)
    if oxi is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            r_abs = Species(structure[site].specie.symbol, oxi[structure[site].specie.symbol]).ionic_radius
            r_nb = [Species(nb.specie.symbol, oxi[nb.specie.symbol]).ionic_radius for nb in shell]
        except (ValueError, KeyError):
            return None
    if r_abs is None or any(r is None for r in r_nb):
        return None
    return float(r_abs + np.mean(r_nb))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="data/feff_runs")
    args = parser.parse_args()
    paths = finished_record_paths(args.runs)
    by_id = {p.name[: -len(".json.gz")]: p for p in paths}
    relaxed = [p for p in paths if RELAXED_SUFFIX + "-" in p.name]
    volume, steps, rows = [], [], []
    for path in relaxed:
        rec = read_json(path)
        volume.append(rec["relaxation"]["volume_change"])
        steps.append(rec["relaxation"]["steps"])
        parent_id = rec["id"].replace(RELAXED_SUFFIX + "-", "-", 1)
        if parent_id not in by_id:
            continue
        old = read_json(by_id[parent_id])
        site = rec["absorbing_index"]
        before, after = Structure.from_dict(old["structure"]), Structure.from_dict(rec["structure"])
        shell0, shell1 = first_shell_neighbours(before, site), first_shell_neighbours(after, site)
        d0, d1 = (min(nb.nn_distance for nb in shell) for shell in (shell0, shell1))
        x = np.asarray(rec["x"])
        y0, y1 = np.asarray(old["y"]), np.asarray(rec["y"])
        shannon = shannon_sum(before, site, shell0)
        rows.append({
            "mse": float(np.mean((y0 - y1) ** 2)),
            "edge_shift": edge_position(x, y1) - edge_position(x, y0),
            "volume": rec["relaxation"]["volume_change"],
            "d_change": d1 - d0,
            "bond_before": np.mean([nb.nn_distance for nb in shell0]) - shannon if shannon else np.nan,
            "bond_after": np.mean([nb.nn_distance for nb in shell1]) - shannon if shannon else np.nan,
        })
    print(f"Machine: {describe()}; {len(relaxed)} spectra of relaxed structures in {args.runs}, "
          f"{len(rows)} of them with the unrelaxed spectrum of the same site\n")
    if volume:
        v = 100 * np.asarray(volume)
        print(f"All relaxations: volume change median {np.median(v):+.1f} %, 10-90 % range {np.percentile(v, 10):+.1f} "
              f"to {np.percentile(v, 90):+.1f} %, median |change| {np.median(np.abs(v)):.1f} %; median "
              f"{np.median(steps):.0f} optimiser steps\n")
    if rows:
        def stat(key: str, scale: float = 1.0, fmt: str = ".4f") -> str:
            vals = scale * np.array([r[key] for r in rows], float)
            vals = vals[np.isfinite(vals)]
            return (f"median {np.median(vals):{fmt}}, median |.| {np.median(np.abs(vals)):{fmt}}, "
                    f"10-90 % {np.percentile(vals, 10):{fmt}} to {np.percentile(vals, 90):{fmt}} (n = {len(vals)})")
        print("| quantity (relaxed minus unrelaxed) | value |\n|---|---|")
        print(f"| spectrum MSE | {stat('mse')} |")
        print(f"| edge shift (eV) | {stat('edge_shift', fmt='+.2f')} |")
        print(f"| volume change (%) | {stat('volume', 100, '+.1f')} |")
        print(f"| nearest distance (Å) | {stat('d_change', fmt='+.3f')} |")
        print(f"| first-shell bond minus Shannon sum, before (Å) | {stat('bond_before', fmt='+.3f')} |")
        print(f"| first-shell bond minus Shannon sum, after (Å) | {stat('bond_after', fmt='+.3f')} |")


if __name__ == "__main__":
    main()
