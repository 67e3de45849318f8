"""``lowbit upcycle SRC OUT``: a dense checkpoint turned into a Mixture-of-Experts one."""

from __future__ import annotations

import argparse

from lowbit.cli import common
from lowbit.moe.upcycle import CALIBRATION_TOKENS, MODES, ROUTERS, format_report, upcycle


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="dense HuggingFace checkpoint directory (Llama, Mistral, Qwen2/3)")
    p.add_argument("out", help="output MoE checkpoint directory")
    p.add_argument("--experts", type=common.positive_int, required=True, help="experts per layer")
    p.add_argument("--top-k", type=common.positive_int, required=True, help="experts per token")
    p.add_argument("--mode", default=MODES[0], choices=list(MODES), help="default: copy")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--noise", type=float, metavar="SIGMA", help="copy: absolute noise std")
    noise.add_argument(
        "--noise-relative", type=float, metavar="F", help="copy: std = F x each tensor's std"
    )
    p.add_argument("--router", default=ROUTERS[0], choices=list(ROUTERS))
    p.add_argument("--shared-expert", action="store_true", help="split: an always-on expert")
    p.add_argument("--seed", type=int, default=0, help="noise and clustering seed (0)")
    p.add_argument(
        "--text", dest="calibration_text", metavar="TEXT", action="append", help="calibration "
        "text file (repeatable; default: the license texts after the evaluation tokens)"
    )  # fmt: skip
    defaults = ", ".join(f"{n} {mode}" for mode, n in CALIBRATION_TOKENS.items())
    p.add_argument(
        "--calibration-tokens", type=common.positive_int, metavar="N",
        help=f"calibration tokens (default: {defaults})",
    )  # fmt: skip
    p.add_argument(
        "--no-eval", dest="evaluate", action="store_false",
        help="skip the comparison with the dense model",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    common.add_output_flags(p)


def run(args: argparse.Namespace) -> int:
    report = common.call(upcycle, args)
    common.emit(args, report.as_dict(), lambda: format_report(report))
    return common.EXIT_OK
