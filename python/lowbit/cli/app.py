"""The ``lowbit`` program: the table of subcommands, the parser, and the one
place that turns an exception into an exit code.

Each subcommand is a module of this package with ``add_arguments(parser)``
and ``run(args) -> exit code``. Only the module of the command being run is
imported, so ``lowbit --help`` loads none of them (nor numpy, nor the core).

Exit codes: 0 success, 1 a failed check, 2 bad usage or input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from lowbit.cli.common import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK
from lowbit.util.errors import LowbitError

# name -> one line of help, in the order `lowbit --help` lists them. The
# module lowbit.cli.<name> holds the rest.
COMMANDS = {
    "demo": "the main job, end to end, on the embedded default model",
    "download": "download a model repository from the HuggingFace Hub",
    "convert": "convert a HuggingFace checkpoint into a model directory",
    "inspect": "check a model directory and report what is in it",
    "validate": "measure what quantization cost, against PyTorch",
    "export": "write a model directory as GGUF or a float HuggingFace checkpoint",
    "upcycle": "turn a dense checkpoint into a Mixture-of-Experts one",
    "generate": "generate text with a converted model",
    "bench": "prompt processing and generation speed (llama-bench style)",
    "schemes": "list the quantization schemes",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with the arguments of every command, or with ``only`` of that
    one alone ("": of none); the others are listed by name and help, and their
    modules stay unloaded."""
    parser = argparse.ArgumentParser(
        prog="lowbit", description="Compact low-bit models from HuggingFace checkpoints."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in COMMANDS.items():
        p = sub.add_parser(name, help=text)
        if only is None or only == name:
            module = importlib.import_module(f"lowbit.cli.{name}")
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (the first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    parser = build_parser(command or "")
    args = parser.parse_args(argv)
    try:
        return args._run(args)
    except BrokenPipeError:
        # The reader went away (`lowbit demo | head`): not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (stays open until exit)
        return EXIT_OK
    except KeyboardInterrupt:
        # Outputs are written to OUT.partial (outdir.writing), renamed only
        # when complete and deleted on the way here: nothing that looks
        # finished is left behind, and no OUT.partial either.
        print(f"lowbit {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (LowbitError, OSError) as e:
        # Bad input, named by the message. Any other exception is a bug in
        # lowbit and keeps its traceback.
        print(f"lowbit {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
