"""The ``lowbit`` command line: one program, one subcommand per job.

Exit codes: 0 success, 1 a failed check, 2 bad usage or input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lowbit.util import jsonout
from lowbit.util.errors import LowbitError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class UserError(LowbitError):
    """Bad input from the user: printed without a traceback, exit code 2."""


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def context_int(text: str) -> int:
    """argparse type: a context length, 1 to lowbit.runtime.model.MAX_CONTEXT."""
    value = positive_int(text)
    from lowbit.runtime.model import MAX_CONTEXT

    if value > MAX_CONTEXT:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_CONTEXT} positions, got {text}")
    return value


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON summary")


def _cmd_demo(args: argparse.Namespace) -> int:
    from lowbit.cli import demo

    report = demo.run(out=args.out, preset=args.preset, quiet=args.quiet or args.json)
    if args.json:
        print(jsonout.dumps(report))
    return EXIT_OK


def _cmd_convert(args: argparse.Namespace) -> int:
    from lowbit.conversion.convert import convert

    summary = convert(
        args.src,
        args.out,
        preset=args.preset,
        rules=args.scheme,
        force=args.force,
        progress=False if (args.quiet or args.json) else None,
        fmt=args.format,
    )
    if args.json:
        print(jsonout.dumps(summary.as_dict()))
    elif not args.quiet:
        ratio = summary.source_bytes / max(1, summary.output_bytes)
        print(
            f"{summary.out}: {summary.tensors} tensors, {summary.output_bytes / 2**20:.1f} MiB "
            f"({ratio:.2f}x smaller than the source), quantized weights at "
            f"{summary.quantized_bits_per_weight:.3f} bits/weight, {summary.seconds:.1f} s"
        )
        if summary.fallbacks:
            # Their reasons went to stderr as convert planned them.
            print(
                f"  {len(summary.fallbacks)} tensors use a fallback scheme "
                "(manifest.json records each)"
            )
    return EXIT_OK


def _cmd_download(args: argparse.Namespace) -> int:
    from lowbit.sources.hub import DownloadError, download

    try:
        result = download(
            args.repo_id,
            revision=args.revision,
            include=args.include,
            exclude=args.exclude,
            local_dir=args.local_dir,
            cache_dir=args.cache_dir,
            offline=args.offline,
            progress=not (args.quiet or args.json),
        )
    except DownloadError as e:
        print(f"lowbit download: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT if e.bad_input else EXIT_CHECK_FAILED
    if args.json:
        print(jsonout.dumps(result.as_dict()))
    elif not args.quiet:
        # The path alone on stdout, as `hf download` prints it, for scripts.
        print(result.path)
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    from lowbit.formats.inspect_model import format_report, inspect_model
    from lowbit.formats.manifest import ManifestError

    if not Path(args.out).is_dir():
        raise UserError(f"{args.out}: no such model directory")
    try:
        report = inspect_model(args.out, verify=args.verify, context=args.context)
    except ManifestError as e:
        print(f"lowbit inspect: {e}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    if args.json:
        print(jsonout.dumps(report.as_dict()))
    elif not args.quiet:
        print(format_report(report))
    if not report.ok:
        for p in report.problems:
            print(f"lowbit inspect: {p}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return EXIT_OK


def _cmd_schemes(args: argparse.Namespace) -> int:
    from lowbit.quant.schemes import SCHEMES

    rows = [
        {
            "name": s.name,
            "bits": s.bits,
            "methods": list(s.methods),
            "default_group_size": s.default_group_size,
            "summary": s.summary,
        }
        for s in SCHEMES.values()
    ]
    if args.json:
        print(jsonout.dumps(rows))
    elif not args.quiet:
        for r in rows:
            print(f"{r['name']:<8} {r['summary']}")
    return EXIT_OK


def _load_model(args: argparse.Namespace):  # noqa: ANN202 (lowbit.runtime.model.Model)
    from lowbit.runtime.model import load

    if args.threads:
        from lowbit import _core

        _core.set_num_threads(min(args.threads, _core.max_threads()))
    if not Path(args.out).is_dir():
        raise UserError(f"{args.out}: no such model directory")
    return load(args.out, context_length=args.context, kv_cache=args.kv_cache)


def _token_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise UserError(
            f"--prompt-ids: expected integers separated by commas, got {text!r}"
        ) from None


def _cmd_generate(args: argparse.Namespace) -> int:
    if (args.prompt is None) == (args.prompt_ids is None):
        raise UserError("give the prompt as text (-p) or as token ids (--prompt-ids), not both")
    model = _load_model(args)
    prompt = args.prompt if args.prompt is not None else _token_ids(args.prompt_ids)
    quiet = args.quiet or args.json
    streamed = model.tokenizer is not None and not quiet

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = model.generate(
        prompt,
        max_new_tokens=args.n,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        chat=args.chat,
        on_text=show if streamed else None,
    )
    if args.json:
        print(
            jsonout.dumps(
                {
                    "prompt_tokens": result.prompt_tokens,
                    "tokens": result.tokens,
                    "text": result.text,
                    "finish_reason": result.finish_reason,
                    "seed": result.seed,
                    "prefill_tokens_per_second": result.prefill_tokens_per_second,
                    "decode_tokens_per_second": result.decode_tokens_per_second,
                }
            )
        )
        return EXIT_OK
    if not quiet:
        if not streamed:
            print(" ".join(str(t) for t in result.tokens))
        else:
            print()
        print(
            f"lowbit generate: {len(result.prompt_tokens)} prompt tokens at "
            f"{result.prefill_tokens_per_second:.1f} t/s, {len(result.tokens)} new at "
            f"{result.decode_tokens_per_second:.1f} t/s "
            f"({result.finish_reason}, seed {result.seed})",
            file=sys.stderr,
        )
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from lowbit import _core
    from lowbit.runtime.bench import format_bench, run_bench

    if args.threads:
        _core.set_num_threads(min(args.threads, _core.max_threads()))
    if not Path(args.out).is_dir():
        raise UserError(f"{args.out}: no such model directory")
    result = run_bench(args.out, args.p, args.n, args.repetitions, args.kv_cache)
    if args.json:
        print(jsonout.dumps(result.as_dict()))
    elif not args.quiet:
        print(format_bench(result))
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from lowbit.eval.validate import format_report, validate

    if not Path(args.out).is_dir():
        raise UserError(f"{args.out}: no such model directory")
    report = validate(
        args.out,
        args.baseline,
        text_files=args.text,
        tolerances=args.tolerances,
        context=args.context,
        max_tokens=args.tokens,
        model_level=not args.weights_only,
    )
    if args.json:
        print(jsonout.dumps(report.as_dict()))
    elif not args.quiet:
        print(format_report(report))
    for v in report.violations:
        print(f"lowbit validate: tolerance exceeded: {v}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED


def _cmd_upcycle(args: argparse.Namespace) -> int:
    from lowbit.moe.upcycle import format_report, upcycle

    report = upcycle(
        args.src,
        args.out,
        experts=args.experts,
        top_k=args.top_k,
        mode=args.mode,
        noise=args.noise,
        noise_relative=args.noise_relative,
        router=args.router,
        seed=args.seed,
        calibration_text=args.text,
        calibration_tokens=args.calibration_tokens,
        shared_expert=args.shared_expert,
        evaluate=not args.no_eval,
        force=args.force,
    )
    if args.json:
        print(jsonout.dumps(report.as_dict()))
    elif not args.quiet:
        print(format_report(report))
    return EXIT_OK


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="model directory (from lowbit convert)")
    p.add_argument("-t", "--threads", type=positive_int, help="threads (default: all cores)")
    p.add_argument("--kv-cache", default="f32", choices=["f32", "int8"], help="default: f32")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit", description="Compact low-bit models from HuggingFace checkpoints."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, Callable[[argparse.Namespace], int]] = {}

    from lowbit.quant.recipes import PRESETS

    p = sub.add_parser("demo", help="the main job, end to end, on the embedded default model")
    p.add_argument("--out", type=Path, help="where to write the converted model")
    p.add_argument("--preset", default="q4", choices=list(PRESETS))
    _add_output_flags(p)
    commands["demo"] = _cmd_demo

    p = sub.add_parser("download", help="download a model repository from the HuggingFace Hub")
    p.add_argument("repo_id", help="e.g. Qwen/Qwen2.5-0.5B-Instruct")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument(
        "--include", action="append", metavar="GLOB", help="only files matching GLOB (repeatable)"
    )
    p.add_argument(
        "--exclude", action="append", metavar="GLOB", help="skip files matching GLOB (repeatable)"
    )
    p.add_argument("--local-dir", type=Path, help="write plain files here, not into the cache")
    p.add_argument("--cache-dir", type=Path, help="the HuggingFace cache to use")
    p.add_argument(
        "--offline", action="store_true", help="use only files already downloaded (no network)"
    )
    _add_output_flags(p)
    commands["download"] = _cmd_download

    p = sub.add_parser("convert", help="convert a HuggingFace checkpoint into a model directory")
    p.add_argument("src", help="checkpoint directory (config.json + safetensors), or a GGUF file")
    p.add_argument("out", help="output model directory")
    p.add_argument("--preset", default="q4", choices=list(PRESETS), help="default: q4")
    p.add_argument(
        "--scheme",
        action="append",
        default=[],
        metavar="REGEX=SCHEME[:GROUP][:METHOD]",
        help="scheme for tensors whose name matches REGEX, before the preset (repeatable)",
    )
    p.add_argument(
        "--format",
        default="lowbit",
        choices=["lowbit", "npz"],
        help="lowbit: safetensors + manifest (default); npz: the reference documents' NPZ layout",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    _add_output_flags(p)
    commands["convert"] = _cmd_convert

    p = sub.add_parser("inspect", help="check a model directory and report what is in it")
    p.add_argument("out", help="model directory")
    p.add_argument("--verify", action="store_true", help="also check every file's SHA-256")
    p.add_argument("--context", type=context_int, help="context length for the memory estimate")
    _add_output_flags(p)
    commands["inspect"] = _cmd_inspect

    p = sub.add_parser("validate", help="measure what quantization cost, against PyTorch")
    p.add_argument("out", help="model directory (from lowbit convert)")
    p.add_argument("--baseline", required=True, help="the float checkpoint it was converted from")
    p.add_argument(
        "--text", action="append", help="evaluation text file (repeatable; default: the "
        "English license texts in /usr/share/common-licenses)"
    )  # fmt: skip
    p.add_argument("--tolerances", help="TOML tolerances file (default: weight table only)")
    p.add_argument("--context", type=context_int, default=512, help="window length (512)")
    p.add_argument("--tokens", type=positive_int, default=1024, help="tokens evaluated (1024)")
    p.add_argument("--weights-only", action="store_true", help="skip the model-level comparison")
    _add_output_flags(p)
    commands["validate"] = _cmd_validate

    p = sub.add_parser("upcycle", help="turn a dense checkpoint into a Mixture-of-Experts one")
    p.add_argument("src", help="dense HuggingFace checkpoint directory (Llama, Mistral, Qwen2/3)")
    p.add_argument("out", help="output MoE checkpoint directory")
    p.add_argument("--experts", type=positive_int, required=True, help="experts per layer")
    p.add_argument("--top-k", type=positive_int, required=True, help="experts per token")
    p.add_argument("--mode", default="copy", choices=["copy", "split"], help="default: copy")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--noise", type=float, metavar="SIGMA", help="copy: absolute noise std")
    noise.add_argument(
        "--noise-relative", type=float, metavar="F", help="copy: std = F x each tensor's std"
    )
    p.add_argument("--router", default="random", choices=["random", "zero", "hidden"])
    p.add_argument("--shared-expert", action="store_true", help="split: an always-on expert")
    p.add_argument("--seed", type=int, default=0, help="noise and clustering seed (0)")
    p.add_argument(
        "--text", action="append", help="calibration text file (repeatable; default: the "
        "license texts after the evaluation tokens)"
    )  # fmt: skip
    p.add_argument(
        "--calibration-tokens", type=positive_int, metavar="N",
        help="calibration tokens (default: 2048 copy, 16384 split)",
    )  # fmt: skip
    p.add_argument(
        "--no-eval", action="store_true", help="skip the comparison with the dense model"
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    _add_output_flags(p)
    commands["upcycle"] = _cmd_upcycle

    p = sub.add_parser("generate", help="generate text with a converted model")
    _add_runtime_flags(p)
    p.add_argument("-p", "--prompt", help="prompt text (needs the directory's tokenizer)")
    p.add_argument("--prompt-ids", help="prompt as token ids, e.g. 1,15,27")
    p.add_argument("-n", type=int, default=64, help="new tokens at most (default: 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1)")
    p.add_argument("--seed", type=int, help="sampling seed (the same seed, the same tokens)")
    p.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template")
    p.add_argument("--context", type=context_int, help="KV cache length (default: model's, ≤4096)")
    _add_output_flags(p)
    commands["generate"] = _cmd_generate

    p = sub.add_parser("bench", help="prompt processing and generation speed (llama-bench style)")
    _add_runtime_flags(p)
    p.add_argument("-p", type=int, default=512, help="prompt tokens (default: 512)")
    p.add_argument("-n", type=int, default=128, help="generated tokens (default: 128)")
    p.add_argument("-r", "--repetitions", type=positive_int, default=5, help="default: 5")
    _add_output_flags(p)
    commands["bench"] = _cmd_bench

    p = sub.add_parser("schemes", help="list the quantization schemes")
    _add_output_flags(p)
    commands["schemes"] = _cmd_schemes

    parser.set_defaults(_commands=commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._commands[args.command](args)
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
