"""Time the paper-scale training run, ``run_all.py --profile paper --retrain --only 02 03``, and report it.

Notebook 02 trains the mixed model and one single-element model per element, notebook 03 the 5-member
ensemble (two member processes at a time), all at the paper's dimensions, batch 160 and 800 epochs. This
script runs them, with a deadline, then reads every checkpoint the run wrote and prints a Markdown table:
per model the epochs, training spectra, wall seconds and training graphs per second (training spectra x
epochs / seconds, the per-epoch validation pass included in the seconds), with the machine and accelerator
named. Meant for a GPU machine (``TrainConfig.device`` "auto" takes CUDA when present); the graph and
CHGNet site-embedding caches in ``results/paper/`` are reused when they match the data, so the run
itself runs neither FEFF nor CHGNet (the chgnet package must still be installed: its version keys that cache).

    python benchmarks/paper_profile_run.py [--profile paper] [--deadline 480] [--json out.json] [--check]

Before the run it checks that every package the two notebooks need is installed (:data:`NEEDED`; CHGNet's
metadata is read even when the site embeddings are cached, since its version keys that cache) and stops with
the list of the missing ones; ``--check`` stops after that check.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from xanes_utils.ensemble import load_ensemble  # noqa: E402
from xanes_utils.profiles import cache_dir, get_profile  # noqa: E402
from xanes_utils.train import load_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Distributions that notebooks 02 and 03 need under ``run_all.py`` (directly or through ``xanes_utils``).
NEEDED = ("papermill", "nbclient", "ipykernel", "pymatgen", "torch-geometric", "chgnet", "pandas", "matplotlib",
          "scipy", "tqdm")


def missing_packages(names: tuple[str, ...] = NEEDED) -> list[str]:
    """The distributions of ``names`` that are not installed."""
    out = []
    for name in names:
        try:
            version(name)
        except PackageNotFoundError:
            out.append(name)
    return out


def torch_build() -> str:
    """torch's version, with its CUDA version when a GPU is visible (the machine line names the GPU)."""
    cuda = f", CUDA {torch.version.cuda}" if torch.cuda.is_available() else ", CPU only"
    return f"torch {torch.__version__}{cuda}"


def run_notebooks(profile: str, deadline: float) -> tuple[float, int | None]:
    """Run notebooks 02 and 03 through ``run_all.py``; returns wall seconds and the exit status (None: the
    deadline stopped it, with the whole process group)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "run_all.py", "--profile", profile, "--retrain", "--only", "02", "03"],
                            cwd=ROOT, start_new_session=True)
    try:
        code = proc.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        code = None
    return time.perf_counter() - start, code


def model_rows(profile: str, since: float) -> list[dict]:
    """One row per checkpoint of ``profile`` written after ``since`` (epoch seconds)."""
    models = cache_dir(profile) / "models"
    rows = []
    for path in sorted(models.glob("*.pt")) if models.exists() else []:
        if path.stat().st_mtime < since:
            continue
        if path.stem == "ensemble":
            _, extra = load_ensemble(path)
            epochs = get_profile(profile).epochs
            for m, seconds in enumerate(extra["seconds"]):
                rows.append({"model": f"ensemble member {m + 1}", "epochs": epochs, "n_train": extra["n_train"],
                             "seconds": seconds})
            continue
        payload = load_checkpoint(path)
        history = payload["history"]
        rows.append({"model": path.stem, "epochs": len(history["val_loss"]), "n_train": payload["extra"]["n_train"],
                     "seconds": history["seconds"][-1]})
    for row in rows:
        row["graphs_per_s"] = row["n_train"] * row["epochs"] / row["seconds"]
    return rows


def test_eta(profile: str) -> float | None:
    """The mixed model's test η from notebook 03's cached table (None if 03 did not get that far)."""
    path = cache_dir(profile) / "03_evaluation_table.csv"
    return float(pd.read_csv(path, index_col=0).loc["all", "eta"]) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    """Run, collect and print the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper", help="run_all.py profile (default paper)")
    parser.add_argument("--deadline", type=float, default=480, help="stop run_all.py after this many seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--check", action="store_true", help="only check that the needed packages are installed")
    args = parser.parse_args(argv)
    missing = missing_packages()
    if missing:
        print(f"missing packages: {', '.join(missing)}: install them (or carry them as wheels) before the run")
        return 2
    if args.check:
        print(f"every needed package is installed ({', '.join(NEEDED)})")
        return 0
    since = time.time()
    wall, code = run_notebooks(args.profile, args.deadline)
    rows = model_rows(args.profile, since)
    status = "finished" if code == 0 else ("stopped at the deadline" if code is None else f"failed (exit {code})")
    report = {"machine": describe(), "torch": torch_build(), "profile": args.profile, "wall_s": wall,
              "status": status, "test_eta_mixed": test_eta(args.profile) if code == 0 else None, "models": rows}
    print(f"\nMachine: {report['machine']}; {report['torch']}")
    print(f"run_all.py --profile {args.profile} --retrain --only 02 03: {wall:.0f} s, {status}\n")
    print("| model | epochs | training spectra | seconds | training graphs/s |\n|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['model']} | {row['epochs']} | {row['n_train']} | {row['seconds']:.1f} | "
              f"{row['graphs_per_s']:,.0f} |")
    if rows:
        singles = [r for r in rows if r["model"].startswith("single_")]
        total = sum(r["n_train"] * r["epochs"] for r in rows)
        print(f"\n{len(rows)} models, {total:,} training graphs in {sum(r['seconds'] for r in rows):.0f} s of "
              f"training ({len(singles)} single-element models: median "
              f"{np.median([r['graphs_per_s'] for r in singles]) if singles else float('nan'):,.0f} graphs/s)")
    if report["test_eta_mixed"] is not None:
        print(f"mixed model test η: {report['test_eta_mixed']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
