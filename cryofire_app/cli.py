"""The `cryofire` console script.

Each subcommand lives in `cryofire_app.commands.<name>` and provides `add_args(parser)` and `main(args) -> int`.
Bad input (`cryofire_app.io.InputError`) is reported as one clear line on stderr with exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> one-line summary; order is the order shown in --help
COMMANDS: dict[str, str] = {
    "info": "describe a particle stack / STAR / .cs / map: counts, box, pixel size, CTF and pose columns",
    "simulate": "simulate a particle stack (poses, CTF, noise, several states) from one or more maps",
    "train": "train the encoder and decoder (ab initio heterogeneous reconstruction)",
    "infer": "encoder-only poses and z for particles (new or training ones) from a trained run",
    "analyze": "PCA / k-means of z, volumes at cluster centres and along PCs, plots",
    "volume": "decode volumes at given z or along a principal component",
    "eval": "compare a run with ground truth: pose errors, state confusion, FSC",
    "demo": "run the whole pipeline headless on the bundled sample map",
    "gui": "open napari with the cryoFIRE docks",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryofire",
        description="cryoFIRE: amortized ab initio heterogeneous reconstruction of cryo-EM particle images.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        try:
            mod = importlib.import_module(f"cryofire_app.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cryofire_app.commands.{name}":
                continue  # command not built yet
            raise
        p = sub.add_parser(name, help=summary, description=(mod.__doc__ or summary).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_args(p)
        p.set_defaults(_run=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    from cryofire_app.io.errors import InputError

    try:
        return int(args._run(args) or 0)
    except InputError as exc:
        print(f"cryofire {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cryofire {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
