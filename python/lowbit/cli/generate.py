"""``lowbit generate DIR -p TEXT``: generate text with a converted model."""

from __future__ import annotations

import argparse
import sys

from lowbit.cli import common
from lowbit.runtime.model import Generation, load


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_runtime_flags(p)
    p.add_argument("-p", "--prompt", help="prompt text (needs the directory's tokenizer)")
    p.add_argument("--prompt-ids", help="prompt as token ids, e.g. 1,15,27")
    p.add_argument("-n", type=int, default=64, help="new tokens at most (default: 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1)")
    p.add_argument("--seed", type=int, help="sampling seed (the same seed, the same tokens)")
    p.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template")
    p.add_argument(
        "--context", type=common.context_int, help="KV cache length (default: model's, ≤4096)"
    )
    common.add_output_flags(p)


def _token_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise common.UserError(
            f"--prompt-ids: expected integers separated by commas, got {text!r}"
        ) from None


def _show(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _as_dict(result: Generation) -> dict[str, object]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "tokens": result.tokens,
        "text": result.text,
        "finish_reason": result.finish_reason,
        "seed": result.seed,
        "prefill_tokens_per_second": result.prefill_tokens_per_second,
        "decode_tokens_per_second": result.decode_tokens_per_second,
    }


def run(args: argparse.Namespace) -> int:
    if (args.prompt is None) == (args.prompt_ids is None):
        raise common.UserError(
            "give the prompt as text (-p) or as token ids (--prompt-ids), not both"
        )
    common.set_threads(args.threads)
    common.model_dir(args.out)
    model = load(args.out, context_length=args.context, kv_cache=args.kv_cache)
    prompt = args.prompt if args.prompt is not None else _token_ids(args.prompt_ids)
    streamed = model.tokenizer is not None and not common.quiet(args)
    result = model.generate(
        prompt,
        max_new_tokens=args.n,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        chat=args.chat,
        on_text=_show if streamed else None,
    )
    # Streamed text is already out: end its line; else the ids, one line.
    ids = " ".join(map(str, result.tokens))
    common.emit(args, _as_dict(result), lambda: "" if streamed else ids)
    if not common.quiet(args):
        print(
            f"lowbit generate: {len(result.prompt_tokens)} prompt tokens at "
            f"{result.prefill_tokens_per_second:.1f} t/s, {len(result.tokens)} new at "
            f"{result.decode_tokens_per_second:.1f} t/s "
            f"({result.finish_reason}, seed {result.seed})",
            file=sys.stderr,
        )
    return common.EXIT_OK
