"""Command line: ``python -m xanes_utils predict FILE [FILE ...] [--out DIR] [--model PATH] [--sites I ...]`` and
``python -m xanes_utils train DATA --out MODEL [--profile NAME] [--members N] [--epochs N] [--jobs N]``.

Only the standard library is imported until a command runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("xanes_utils")

ENERGY_AXIS = """\
energy axis: FEFF's absolute energy scale on a fixed grid per element (111 points, 0.5 eV apart,
55 eV from the element's first grid energy, the paper's grid). It is not aligned to any experiment:
shift the prediction (e.g. match the edge positions) before comparing it with a measured spectrum.
The training spectra are 0 below FEFF's first energy point where that lies above the grid's start,
so predictions can show a vertical step at the left (mostly of 4d spectra): ignore that region.

uncertainty: the default model is an ensemble of 5 networks; mu is their mean and mu_std their spread,
calibrated on validation data so that mu ± 2 mu_std holds about 95 % of points on structures like the
training data (the PNGs shade that band). A site whose environment lies far from every training site
is flagged out of domain (a warning, and out_of_domain=1 in <name>_sites.csv): its error can exceed the
band. --member I uses one network only (no band).

core hole: the spectra are FEFF10's with the full core hole of the final-state rule (FSR), as in the
Materials Project's database the paper trained on. --corehole RPA maps them to the RPA-screened core hole
(Lightshow's setting, as in OmniXAS) with a per-element transfer fitted on our own spectra computed both
ways; elements without a transfer are refused. Against measured spectra the mapping helps Mn and hurts
V and Cu, so FSR is the default.

output per FILE: <name>_<label>_site<i>_<El>_K.csv/.png per symmetry-distinct site (i is 0-based, in
the order pymatgen reads the file, <label> the CIF's site label), <name>_<El>_K_average.csv/.png (the
multiplicity-weighted average over the sites, what one compares with a measured spectrum), and
<name>_sites.csv listing each site's label, multiplicity, equivalent indices, domain score and flag."""

TRAINING = """\
what it trains: the recipe of the shipped model (notebook 03): an ensemble of networks of the profile's
size, each on a bootstrap resample of the training split with its own seed, reading the absorbing
site's CHGNet embedding; its band is calibrated and its domain score fitted on the validation split.
The split is by material (80/10/10 %, stratified by absorbing element, the profile's seed), so the test
table scores structures no member has seen: eta is the mean training spectrum's median MSE over the
model's (eta > 1: better than the mean), coverage_2sigma the share of test points inside mu ± 2 mu_std.

output: MODEL (a checkpoint with a SHA-256 sidecar; predict --model MODEL uses it) and MODEL with the
suffix .test.csv (the test table per element). Graphs and CHGNet embeddings are cached under results/,
so a second run on the same data starts training at once. Time: with the default profile (400 epochs,
5 members) the embedded records (2,523 training spectra) took 13 minutes on 2 cores (--jobs 2); quick
(30 epochs) took 2 minutes (test eta 5.2 against 8.2), for a first look."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xanes_utils")
    sub = parser.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("predict", help="predict K-edge XANES of every distinct transition-metal site",
                        description="Predict the K-edge XANES of the symmetry-distinct sites of the 20 "
                                    "supported transition metals in each structure file.",
                        epilog=ENERGY_AXIS, formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("files", nargs="+", metavar="FILE", help="CIF or POSCAR file(s), optionally gzipped")
    pr.add_argument("--out", default="predictions", help="output directory (created if missing)")
    pr.add_argument("--model", default=None, help="checkpoint, one model or an ensemble (default: the committed "
                                                   "ensemble)")
    pr.add_argument("--member", type=int, default=None, metavar="I",
                    help="use only member I (0-based) of an ensemble: no uncertainty band")
    pr.add_argument("--sites", type=int, nargs="+", default=None, metavar="I",
                    help="0-based site indices in pymatgen's order (default: every distinct site)")
    pr.add_argument("--corehole", choices=("FSR", "RPA"), default="FSR",
                    help="core hole of the returned spectra (default FSR, the training data's; RPA: mapped by "
                         "the core-hole transfer; so far Cu, Mn and V)")
    pr.add_argument("--transfers", default=None, metavar="FILE",
                    help="core-hole transfer file for --corehole RPA (default: the committed one)")
    pr.add_argument("--threads", type=int, default=1, metavar="N",
                    help="torch CPU threads (default 1: fastest for a few structures; more can help for "
                         "thousands of sites on an idle machine)")
    tr = sub.add_parser("train", help="train the shipped model's recipe on your own spectra",
                        description="Train the recipe of the shipped model on the spectra of DATA, score it on a "
                                    "held-out test split and write a checkpoint that predict --model reads.",
                        epilog=TRAINING, formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("data", metavar="DATA", help="spectra in any format xanes_utils.data.load_any reads: a packed "
                                                 "dataset (.json.gz), Materials Project XAS documents, FEFF run "
                                                 "directories, the authors' list format")
    tr.add_argument("--out", required=True, metavar="MODEL", help="checkpoint to write (e.g. my_model.pt)")
    tr.add_argument("--profile", choices=("quick", "default", "paper"), default="default",
                    help="network size, epochs and learning rate (default: the shipped model's; paper: for a GPU)")
    tr.add_argument("--members", type=int, default=5, metavar="N", help="ensemble members (default 5; at least 2)")
    tr.add_argument("--epochs", type=int, default=None, metavar="N", help="epochs per member (default: the "
                                                                         "profile's)")
    tr.add_argument("--jobs", type=int, default=None, metavar="N",
                    help="members trained at once, one thread each (default: one per core)")
    return parser


def _unique_stems(files: list[str]) -> list[str]:
    """Output name per input file; a name already taken gets ``-2``, ``-3``, ... appended."""
    from xanes_utils.io import output_stem

    stems: list[str] = []
    for file in files:
        stem, n = output_stem(file), 1
        while (stem if n == 1 else f"{stem}-{n}") in stems:
            n += 1
        stems.append(stem if n == 1 else f"{stem}-{n}")
    return stems


def _train(args: argparse.Namespace) -> int:
    """The ``train`` command: checks its arguments before importing torch, then trains and reports."""
    out = Path(args.out)
    problems = [f"{args.data}: no such file or directory"] if not Path(args.data).exists() else []
    if out.is_dir():
        problems.append(f"{out}: --out names a directory; it must be a checkpoint file")
    for name, value, least in (("--members", args.members, 2), ("--epochs", args.epochs, 1), ("--jobs", args.jobs, 1)):
        if value is not None and value < least:
            problems.append(f"{name} must be at least {least}, not {value}")
    for problem in problems:
        log.error("%s", problem)
    if problems:
        return 2
    import dataclasses

    from xanes_utils.profiles import get_profile
    from xanes_utils.workflow import train_for_prediction

    profile = get_profile(args.profile)
    if args.epochs is not None:
        profile = dataclasses.replace(profile, epochs=args.epochs)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        table = train_for_prediction(args.data, out, profile, args.members, args.jobs)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    csv = out.with_suffix(".test.csv")
    table.to_csv(csv, float_format="%.6g")
    columns = ["n", "mse_median", "pearson_median", "eta", "coverage_2sigma"]
    log.info("test split (η against each element's mean training spectrum):\n%s\nwrote %s",
             table[columns].to_string(float_format=lambda v: f"{v:.4g}"), csv)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    if args.cmd == "train":
        return _train(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        log.error("%s: --out names an existing file; it must be a directory (new or existing)", out)
        return 2
    missing = [f for f in args.files if not Path(f).is_file()]
    for file in missing:
        log.error("%s: no such file", file)
    todo = [(f, stem) for f, stem in zip(args.files, _unique_stems(args.files)) if f not in missing]
    if not todo:
        return 2  # checked before importing torch and pymatgen, which take seconds
    if args.threads < 1:
        log.error("--threads must be at least 1, not %d", args.threads)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    from xanes_utils.prediction import predict, write_predictions
    from xanes_utils.train import load_model

    try:
        model = load_model(args.model, member=args.member)
    except (ValueError, OSError, IndexError) as exc:
        log.error("--model: %s", exc)
        return 2
    failed = len(missing)
    for file, stem in todo:
        try:
            preds = predict(file, sites=args.sites, model=model, corehole=args.corehole, transfers=args.transfers)
        except (ValueError, OSError, IndexError) as exc:
            log.error("%s", exc)
            failed += 1
            continue
        for p in preds:
            score = "" if p.domain_score is None else f", domain score {p.domain_score:.2f}"
            log.info("%s: %s site %d (0-based), label %s, multiplicity %d, equivalent sites %s%s", file,
                     p.element, p.site, p.label, p.multiplicity, " ".join(map(str, p.equivalent)), score)
        for path in write_predictions(preds, out, stem):
            log.info("wrote %s", path)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
