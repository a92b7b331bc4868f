"""Cold-start time of the command line: ``--help``, a missing file, and one prediction (NiO, 1 site).

Each command runs ``--repeat`` times in a fresh Python process; the median wall time is printed, then the
import time of the heavy packages a prediction needs (each after the ones above it, in one process).

    python benchmarks/cli_start.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

IMPORTS = ["numpy", "pymatgen.core", "torch", "torch_geometric", "matplotlib.pyplot", "chgnet.model",
           "xanes_utils.prediction", "xanes_utils.train"]


def wall(args: list[str], repeat: int) -> float:
    """Median wall seconds of ``python args`` over ``repeat`` fresh processes."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cif = Path(tmp) / "NiO.cif"
        subprocess.run([sys.executable, "-c", "from pymatgen.core import Lattice, Structure; Structure."
                        "from_spacegroup('Fm-3m', Lattice.cubic(4.17), ['Ni', 'O'], [[0, 0, 0], [0.5] * 3])"
                        f".to(filename={str(cif)!r})"], check=True)
        rows = [("predict --help", wall(["-m", "xanes_utils", "predict", "--help"], args.repeat)),
                ("predict missing.cif", wall(["-m", "xanes_utils", "predict", f"{tmp}/missing.cif"], args.repeat)),
                ("predict NiO.cif (1 site)", wall(["-m", "xanes_utils", "predict", str(cif), "--out", tmp],
                                                   args.repeat))]
    code = ("import time, importlib\nfor m in %r:\n    t = time.perf_counter(); importlib.import_module(m)\n"
            "    print(f'{m} {time.perf_counter() - t:.2f}')" % IMPORTS)
    imports = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    print(f"Machine: {describe()}\n\n| command (`python -m xanes_utils ...`) | median wall s |\n|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")
    print("\n| import (after the rows above it) | s |\n|---|---:|")
    for line in imports.splitlines():
        name, seconds = line.rsplit(" ", 1)
        print(f"| {name} | {seconds} |")


if __name__ == "__main__":
    main()
