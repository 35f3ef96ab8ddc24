"""The ``hetero`` command: sub-commands for discovery, profiling, prediction and RL.

    hetero discover [-o cluster.yaml]      describe this machine as a cluster file
    hetero catalog                         list the device catalog
    hetero profile --device cpu -o p.json  microbenchmark a device (feeds calibration)
    hetero predict --cluster C --model M --plan P [--json]

Each sub-command lives in the module that owns it; this file only wires them (see SUBCOMMANDS).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hetero.config import ConfigError

# name -> (module, help). The module defines add_arguments(parser) and run(args) -> int.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "discover": ("hetero.cluster.discover", "describe this machine as a cluster YAML"),
    "catalog": ("hetero.cluster.catalog_cli", "list the accelerator catalog"),
    "rl": ("hetero.rl.cli", "online RL for flow-matching VLA policies: sft, train, eval"),
    "predict": ("hetero.predictor.predict_cli", "predict a plan's step time and memory on a cluster"),
    "profile": ("hetero.predictor.profile", "microbenchmark a device (GEMMs, bandwidth, layers, gloo) for calibration"),
    "plan": ("hetero.autoparallel.cli", "search the fastest data/tensor/pipeline plan for a mixed cluster"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hetero`` console script. Only the chosen sub-command's module is imported."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="hetero", description="heterogeneous-cluster training runtime")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    modules = {}
    for name, (modname, helptext) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=helptext)
        if chosen is None or name == chosen:
            modules[name] = importlib.import_module(modname)
            p.description = (modules[name].__doc__ or "").split("\n")[0]
            modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
