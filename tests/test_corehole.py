import numpy as np
import pytest

from xanes_utils.corehole import fit_transfer, load_transfers, paired_spectra, save_transfers
from xanes_utils.io import CorruptFileError, atomic_write_json


def _pairs(n, seed=0):
    """FSR-like spectra and their images under a known shift-and-damp map plus a constant offset."""
    rng = np.random.default_rng(seed)
    grid = np.arange(111)
    edges = rng.uniform(20, 40, n)
    fsr = 1 / (1 + np.exp(-(grid - edges[:, None]) / 2)) + 0.3 * np.exp(-((grid - edges[:, None] - 6) / 3) ** 2)
    rpa = 0.8 * np.roll(fsr, -2, axis=1) + 0.2 * fsr + 0.01
    return fsr, rpa


def test_transfer_learns_a_linear_map_and_beats_the_identity():
    fsr, rpa = _pairs(60)
    transfer = fit_transfer("Cu", fsr, rpa)
    test_fsr, test_rpa = _pairs(20, seed=1)
    identity = ((test_fsr - test_rpa) ** 2).mean()
    mean_only = ((test_fsr + (rpa - fsr).mean(0) - test_rpa) ** 2).mean()
    learned = ((transfer.apply(test_fsr) - test_rpa) ** 2).mean()
    assert learned < 0.2 * mean_only < 0.2 * identity
    assert np.isfinite(transfer.alpha) and transfer.n_pairs == 60
    only_mean = fit_transfer("Cu", fsr, rpa, alphas=[float("inf")])
    assert np.allclose(only_mean.apply(test_fsr), test_fsr + (rpa - fsr).mean(0))
    with pytest.raises(ValueError, match="Cu: need at least 5 pairs"):
        fit_transfer("Cu", fsr[:3], rpa[:3])


def test_transfers_round_trip_and_detect_corruption(tmp_path):
    fsr, rpa = _pairs(30)
    path = tmp_path / "transfer.json"
    save_transfers(path, [fit_transfer("Cu", fsr, rpa), fit_transfer("Ni", rpa, fsr)])
    loaded = load_transfers(path)
    assert sorted(loaded) == ["Cu", "Ni"]
    assert np.allclose(loaded["Cu"].apply(fsr), fit_transfer("Cu", fsr, rpa).apply(fsr))
    path.write_text(path.read_text().replace("Cu", "Zn"))
    with pytest.raises(CorruptFileError, match="transfer.json"):
        load_transfers(path)


def test_paired_spectra_match_records_by_id(tmp_path):
    for runs, value in (("fsr", 0.1), ("rpa", 0.2)):
        for name in ("a-0-Cu-XANES-K", "b-0-Cu-XANES-K"):
            if runs == "rpa" and name.startswith("b"):
                continue  # not rerun yet
            atomic_write_json(tmp_path / runs / "Cu" / f"{name}.json.gz", {"id": name, "y": [value] * 111})
    pairs = paired_spectra(tmp_path / "fsr", tmp_path / "rpa")
    fsr, rpa, ids = pairs["Cu"]
    assert ids == ["a-0-Cu-XANES-K"] and np.allclose(fsr, 0.1) and np.allclose(rpa, 0.2)


def test_command_fits_elements_with_enough_pairs(tmp_path):
    from xanes_utils.corehole import _main

    fsr, rpa = _pairs(12)
    for runs, spectra in (("fsr", fsr), ("rpa", rpa)):
        for i, y in enumerate(spectra):
            name = f"s{i}-0-Cu-XANES-K"
            atomic_write_json(tmp_path / runs / "Cu" / f"{name}.json.gz", {"id": name, "y": y.tolist()})
        atomic_write_json(tmp_path / runs / "Ni" / "t-0-Ni-XANES-K.json.gz",
                          {"id": "t-0-Ni-XANES-K", "y": spectra[0].tolist()})
    out = tmp_path / "transfer.json"
    _main(["--fsr", str(tmp_path / "fsr"), "--rpa", str(tmp_path / "rpa"), "--min-pairs", "10", "--out", str(out)])
    transfers = load_transfers(out)
    assert list(transfers) == ["Cu"] and transfers["Cu"].n_pairs == 12
    with pytest.raises(SystemExit, match="no element has 20 pairs"):
        _main(["--fsr", str(tmp_path / "fsr"), "--rpa", str(tmp_path / "rpa"), "--out", str(out)])


def test_transfer_spectra_maps_each_element_and_names_missing_ones():
    from xanes_utils.corehole import transfer_spectra

    fsr, rpa = _pairs(20)
    transfers = {"Cu": fit_transfer("Cu", fsr, rpa), "Ni": fit_transfer("Ni", rpa, fsr)}
    mixed = transfer_spectra(transfers, fsr[:4], ["Cu", "Ni", "Cu", "Ni"])
    assert np.allclose(mixed[[0, 2]], transfers["Cu"].apply(fsr[[0, 2]]))
    assert np.allclose(mixed[[1, 3]], transfers["Ni"].apply(fsr[[1, 3]]))
    with pytest.raises(KeyError, match="no core-hole transfer for Zn"):
        transfer_spectra(transfers, fsr[:2], ["Cu", "Zn"])
