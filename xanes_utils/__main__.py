"""Command line: ``python -m xanes_utils predict FILE [--out DIR] [--model PATH] [--sites I ...]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xanes_utils")
    sub = parser.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("predict", help="predict K-edge XANES of every distinct transition-metal site")
    pr.add_argument("file", help="CIF or POSCAR file")
    pr.add_argument("--out", default="predictions", help="output directory (CSV + PNG per site)")
    pr.add_argument("--model", default=None, help="checkpoint (default: the committed model)")
    pr.add_argument("--sites", type=int, nargs="*", default=None, help="site indices (default: all distinct)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    from xanes_utils.predict import predict, write_predictions
    from xanes_utils.train import load_model

    try:
        preds = predict(args.file, sites=args.sites, model=load_model(args.model))
    except (ValueError, OSError, IndexError) as exc:
        logging.error("%s", exc)
        return 2
    for path in write_predictions(preds, args.out, Path(args.file).stem):
        logging.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
