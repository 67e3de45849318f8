"""Conversion speed and memory on synthetic checkpoints with real model shapes.

Writes a bf16, sharded checkpoint with the tensor shapes of a 7B Llama and of a
0.5B Qwen2.5 (random values; speed does not depend on them), then for each:
reads its files once (``cat`` to /dev/null: the peer, in the same run and
page-cache state), converts it with ``lowbit convert --preset q4`` in a child
process, and reports time, source MB/s and the child's peak RSS. Targets:
peak RSS under 2 GB for the 7B shapes; conversion at most 3x the read time.
Writes benchmarks/results/convert.json.

    python benchmarks/bench_convert.py [--workdir DIR] [--models 7b,0.5b] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json
from safetensors.numpy import save_file

# name -> (hidden, intermediate, layers, vocab, heads, kv heads, tied)
SHAPES = {
    "7b": (4096, 11008, 32, 32000, 32, 32, False),
    "0.5b": (896, 4864, 24, 151936, 14, 2, True),
}
SHARD_BYTES = 2 << 30


def tensor_shapes(name: str) -> dict[str, tuple[int, ...]]:
    hidden, inter, layers, vocab, heads, kv, tied = SHAPES[name]
    head_dim = hidden // heads
    out = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    out["model.norm.weight"] = (hidden,)
    if not tied:
        out["lm_head.weight"] = (vocab, hidden)
    return out


def write_checkpoint(name: str, path: Path) -> int:
    """A sharded bf16 checkpoint with ``name``'s shapes; returns its size in bytes."""
    hidden, inter, layers, vocab, heads, kv, tied = SHAPES[name]
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for i, (tname, shape) in enumerate(tensor_shapes(name).items()):
        n = int(np.prod(shape))
        # Slices of one random pool (repeated where a tensor is larger):
        # generating 7B random values would take longer than the benchmark.
        arr = np.resize(pool[(i * 7919) % pool.size :], n)
        if shards[-1] and size + 2 * n > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][tname] = np.ascontiguousarray(arr.reshape(shape))
        size += 2 * n
    weight_map = {}
    total = 0
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / fname)
        total += (path / fname).stat().st_size
        weight_map |= dict.fromkeys(shard, fname)
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": tied,
    }
    (path / "config.json").write_text(json.dumps(config))
    return total


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only), so reads come from the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def run_child(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process, measured alone.

    os.wait4 gives this child's own rusage (RUSAGE_CHILDREN would report the
    largest of all children so far).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed with exit code {proc.returncode}")
    return seconds, usage.ru_maxrss * 1024


def time_read(path: Path, cold: bool) -> float:
    """Seconds to read the checkpoint's files once with ``dd`` (1 MiB reads).

    ``cat FILE > /dev/null`` is not a read with coreutils 9: it splices into
    /dev/null and skips the copy to user space that any consumer pays, so it
    would flatter the peer. dd's read() calls are the honest "read once".
    """
    if cold:
        drop_page_cache()
    script = "".join(
        f"dd if={shlex.quote(str(p))} of=/dev/null bs=1M status=none\n"
        for p in sorted(path.glob("*.safetensors"))
    )
    return run_child(["sh", "-c", script])[0]


def time_convert(src: Path, out: Path, cold: bool) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of ``lowbit convert --preset q4`` in a child."""
    if cold:
        drop_page_cache()
    cmd = [sys.executable, "-m", "lowbit", "convert", str(src), str(out), "--quiet", "--force"]
    return run_child(cmd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lowbit-bench-convert"))
    ap.add_argument("--models", default="0.5b,7b")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints written")
    ap.add_argument("--write-only", metavar="MODEL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_only:  # the child that writes a checkpoint (keeps the parent small)
        write_checkpoint(args.write_only, args.workdir / f"{args.write_only}-bf16")
        return
    can_drop = drop_page_cache()
    results = []
    for name in args.models.split(","):
        src, out = args.workdir / f"{name}-bf16", args.workdir / f"{name}-q4"
        made, _ = run_child(
            [sys.executable, __file__, "--workdir", str(args.workdir), "--write-only", name]
        )
        size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        # Cold: page cache emptied before each step, the files come from the
        # disk (a model just downloaded or copied in). Warm: from memory.
        for cache in ("cold", "warm") if can_drop else ("warm",):
            cold = cache == "cold"
            if not cold:
                time_read(src, cold=False)  # fill the page cache
            read_s = statistics.median(time_read(src, cold) for _ in range(3))
            conv_s, rss = time_convert(src, out, cold)
            r = {
                "model": name,
                "page_cache": cache,
                "source_bytes": size,
                "write_seconds": made,
                "read_seconds": read_s,
                "convert_seconds": conv_s,
                "convert_vs_read": conv_s / read_s,
                "source_mb_per_s": size / conv_s / 1e6,
                "peak_rss_bytes": rss,
                "output_bytes": sum(p.stat().st_size for p in out.glob("*.safetensors")),
            }
            results.append(r)
            print(
                f"{name:>5} {cache}: {size / 1e9:5.2f} GB bf16 -> {r['output_bytes'] / 1e9:5.2f} GB"
                f" q4 | read {read_s:5.1f} s, convert {conv_s:5.1f} s "
                f"({r['convert_vs_read']:.1f}x read), {r['source_mb_per_s']:5.0f} MB/s, "
                f"peak RSS {rss / 2**20:5.0f} MiB",
                flush=True,
            )
        if not args.keep:
            shutil.rmtree(src)
            shutil.rmtree(out)
    print(f"wrote {write_json('convert.json', {'results': results})}")


if __name__ == "__main__":
    main()
