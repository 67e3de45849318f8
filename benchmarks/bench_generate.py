"""Generation speed on the embedded default model (SmolLM2-135M-Instruct).

For each preset (f32, q8, q4 by default): ``lowbit bench`` in a child process
(prompt processing of a 512-token prompt, then decode of single tokens),
with the child's peak RSS; next to it, in the same run, transformers float32
on the original checkpoint (prefill of the same prompt, then decode with its
KV cache), and the memory roofline of decode: bytes of weights read per token
divided by a memory-read bandwidth measured here (NumPy sums over a 1 GiB
array on every thread). Targets (issue 4): decode >= 5x transformers and
>= 60% of the roofline at q8 and q4 with 2 threads; prefill >= transformers;
peak RSS <= weights + KV cache + 150 MB. Writes benchmarks/results/generate.json.

    python benchmarks/bench_generate.py [--presets f32,q8,q4] [--prompt 512] [--gen 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json

MiB = 1 << 20


def read_bandwidth_gbps(threads: int, nbytes: int = 1 << 30, repeats: int = 7) -> float:
    """Memory-read rate: each thread sums its share of a float32 array far
    larger than the caches (NumPy releases the GIL in reductions)."""
    a = np.ones(nbytes // 4, np.float32)
    parts = np.array_split(a, threads)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.sum, parts))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))
            times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e9


def weight_bytes_per_token(model_dir: Path) -> int:
    """Bytes of weights one decode step reads: every matrix once, except an
    untied embedding (one row is looked up); tied, it is the lm_head too."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    tied = manifest["model"]["tie_word_embeddings"]
    total = 0
    for w in manifest["weights"]:
        if len(w["shape"]) < 2 or (w["role"] == "embed" and not tied):
            continue
        total += round(float(np.prod(w["shape"])) * w["bits_per_weight"] / 8)
    return total


def run_child(code: str, args: list[str], threads: int) -> dict:
    """Runs ``code`` in a fresh Python with ``args``; returns the JSON it prints
    (each child script adds its own peak RSS, ``peak_rss``, in bytes)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, env=env, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args}: exit {proc.returncode}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Peak RSS from /proc/self/status VmHWM (KiB): unlike ru_maxrss, which Linux
# carries across exec from the forking parent, it covers this process only.
PEAK_RSS = "int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024"
LOWBIT_CHILD = r"""
import json, sys
from lowbit import _core
from lowbit.runtime.bench import run_bench
out, prompt_len, gen, reps, threads = sys.argv[1], *map(int, sys.argv[2:6])
_core.set_num_threads(min(threads, _core.max_threads()))
r = run_bench(out, prompt_len, gen, reps).as_dict()
r["peak_rss"] = PEAK_RSS
print(json.dumps(r))
""".replace("PEAK_RSS", PEAK_RSS)

TRANSFORMERS_CHILD = r"""
import json, statistics, sys, time
import numpy as np, torch, transformers
src, prompt_len, gen, reps, threads = sys.argv[1], *map(int, sys.argv[2:6])
torch.set_num_threads(threads)
model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
vocab = model.config.vocab_size
ids = torch.tensor(np.random.default_rng(0).integers(0, vocab, prompt_len))[None]
pp, tg = [], []
with torch.inference_mode():
    model(ids[:, :16])
    for _ in range(reps):
        t0 = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1)
        pp.append(prompt_len / (time.perf_counter() - t0))
        past = None
        token = ids[:, :1]
        t0 = time.perf_counter()
        for i in range(gen):
            out = model(token, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1:].argmax(-1)
        tg.append(gen / (time.perf_counter() - t0))
rss = PEAK_RSS
print(json.dumps({"pp": statistics.median(pp), "tg": statistics.median(tg), "peak_rss": rss}))
""".replace("PEAK_RSS", PEAK_RSS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="f32,q8,q4")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lowbit-bench-generate"))
    args = ap.parse_args()

    import lowbit
    from lowbit.sources.default_model import default_model_path

    src = default_model_path()
    bandwidth = read_bandwidth_gbps(args.threads)
    sizes = [str(args.prompt), str(args.gen), str(args.repeats), str(args.threads)]
    hf = run_child(TRANSFORMERS_CHILD, [str(src), *sizes], args.threads)
    rows = []
    for preset in args.presets.split(","):
        out = args.workdir / f"smollm2-{preset}"
        if not (out / "manifest.json").is_file():
            lowbit.convert(src, out, preset=preset, force=True, progress=False)
        r = run_child(LOWBIT_CHILD, [str(out), *sizes], args.threads)
        per_token = weight_bytes_per_token(out)
        roofline = bandwidth * 1e9 / per_token
        manifest = json.loads((out / "manifest.json").read_text())
        m = manifest["model"]
        context = max(args.prompt, args.gen)
        kv = 2 * m["num_layers"] * m["num_kv_heads"] * m["head_dim"] * context * 4
        weights = sum(f["size"] for f in manifest["files"])
        rows.append(
            {
                "preset": preset,
                "weight_mb_per_token": per_token / 1e6,
                "pp_tps": r["pp_tokens_per_second"],
                "pp_vs_transformers": r["pp_tokens_per_second"] / hf["pp"],
                "tg_tps": r["tg_tokens_per_second"],
                "tg_vs_transformers": r["tg_tokens_per_second"] / hf["tg"],
                "roofline_tps": roofline,
                "tg_fraction_of_roofline": r["tg_tokens_per_second"] / roofline,
                "peak_rss_mb": r["peak_rss"] / MiB,
                "rss_budget_mb": (weights + kv) / MiB + 150,
            }
        )
    print(
        f"read bandwidth {bandwidth:.1f} GB/s ({args.threads} threads); transformers f32: "
        f"pp{args.prompt} {hf['pp']:.1f} t/s, tg {hf['tg']:.1f} t/s, "
        f"peak RSS {hf['peak_rss'] / MiB:.0f} MiB"
    )
    print(
        "| preset | MB/token | pp t/s | vs HF | tg t/s | vs HF | roofline t/s | of roofline "
        "| peak RSS MiB | budget MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['weight_mb_per_token']:.0f} | {r['pp_tps']:.1f} | "
            f"{r['pp_vs_transformers']:.2f} | {r['tg_tps']:.1f} | {r['tg_vs_transformers']:.2f} | "
            f"{r['roofline_tps']:.0f} | {r['tg_fraction_of_roofline']:.0%} | "
            f"{r['peak_rss_mb']:.0f} | {r['rss_budget_mb']:.0f} |"
        )
    path = write_json(
        "generate.json",
        {
            "threads": args.threads,
            "prompt_tokens": args.prompt,
            "gen_tokens": args.gen,
            "read_bandwidth_gbps": bandwidth,
            "transformers": hf,
            "lowbit": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
