"""lowbit's GGUF export run by llama.cpp itself: does llama.cpp see the model
lowbit validated?

For the default model (SmolLM2-135M-Instruct) at each preset: ``lowbit
convert``, ``lowbit export --to gguf``, then llama.cpp (built from the
``llama-cpp-python`` sdist by benchmarks/llama_cpp_tools.py, never by the
tests):

- ``llama-perplexity --kl-divergence`` of the export against llama.cpp's own
  F32 GGUF of the same float checkpoint (convert_hf_to_gguf.py), on the
  evaluation text ``lowbit validate`` uses, in windows of 512 tokens.
  llama.cpp scores the second half of each window only, so lowbit's KLD is
  computed here on the same windows and positions (lowbit's runtime on the
  directory against its float32 runtime), next to ``lowbit validate``'s own
  figure over every position of its 1024 tokens;
- ``llama-completion`` greedy, 16 tokens, against ``lowbit generate``'s.

    python benchmarks/bench_export.py [--presets q8,q4-int4,q4] [--chunks 8]

Writes benchmarks/results/export.json.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json
from llama_cpp_tools import ensure_built, quantize, to_gguf

CONTEXT = 512
# The llama.cpp type each preset's export matches, for llama.cpp's own file of
# it next to lowbit's: llama.cpp's Q8_0 and Q4_0 kernels quantize the
# activations to 8 bits too, so its KLD against its F32 is its kernels' as
# much as the weights'; its own file of the same type shows that share.
PEER_TYPES = {"q8": "Q8_0", "q4-int4": "Q4_0"}
PROMPT = "The three most important things about the GNU General Public License are"


def _perplexity(
    bin_dir: Path, model: Path, text: Path, base: Path, chunks: int, *extra: str
) -> str:
    """llama-perplexity over ``chunks`` windows of ``text``, with ``base`` as
    its saved logits file; what it printed."""
    cmd = [str(bin_dir / "llama-perplexity"), "-m", str(model), "-f", str(text)]
    cmd += ["-c", str(CONTEXT), "--chunks", str(chunks), "--kl-divergence-base", str(base)]
    cmd += [*extra, "-t", "2"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def _llama_kld(bin_dir: Path, model: Path, text: Path, base: Path, chunks: int) -> dict:
    """llama-perplexity's KLD of ``model`` against the logits saved in ``base``."""
    out = _perplexity(bin_dir, model, text, base, chunks, "--kl-divergence")
    kld = re.search(r"Mean\s+KLD:\s+([-\d.]+)\s+±\s+([\d.]+)", out)
    same = re.search(r"Same top p:\s+([\d.]+)\s+±\s+([\d.]+)", out)
    if kld is None or same is None:
        raise RuntimeError(f"llama-perplexity printed no KLD:\n{out[-2000:]}")
    return {
        "kld_mean": float(kld.group(1)),
        "kld_se": float(kld.group(2)),
        "same_top": float(same.group(1)) / 100,
    }


def _lowbit_kld_second_halves(model_dir: Path, f32_dir: Path, ids: np.ndarray) -> float:
    """lowbit's mean KLD over the positions llama-perplexity scores: the
    predictions of tokens CONTEXT/2 + 1 .. CONTEXT - 1 of each window."""
    import lowbit
    from lowbit.eval.validate import LogitComparison

    ours, base = lowbit.load(model_dir), lowbit.load(f32_dir)
    cmp = LogitComparison()
    first = CONTEXT // 2
    for window in ids:
        b = base.forward(window)[first:-1]
        base._core.rewind(0)
        o = ours.forward(window)[first:-1]
        ours._core.rewind(0)
        cmp.add(b, o, window[first + 1 :])
    return cmp.metrics("base")["kld_mean"]


def _greedy_llama(bin_dir: Path, model: Path, n: int) -> str:
    out = subprocess.run(
        [
            str(bin_dir / "llama-completion"),
            "-m",
            str(model),
            "-p",
            PROMPT,
            "-n",
            str(n),
            "--temp",
            "0",
            "--no-warmup",
            "-no-cnv",
            "-t",
            "2",
        ],
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    return out.split(PROMPT, 1)[-1]


def main() -> None:
    import lowbit
    from lowbit.eval.text import default_text_files, read_text
    from lowbit.eval.validate import validate
    from lowbit.exports.gguf import export_gguf
    from lowbit.sources.default_model import default_model_path

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="q8,q4-int4,q4")
    ap.add_argument("--chunks", type=int, default=8, help="windows of 512 tokens")
    args = ap.parse_args()
    bin_dir = ensure_built()
    src = default_model_path()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lowbit-bench-export-") as tmp:
        tmp = Path(tmp)
        text = tmp / "text.txt"
        text.write_text(read_text(default_text_files()))
        f32_gguf = to_gguf(src, tmp / "f32.gguf")
        base = tmp / "base.kld"
        _perplexity(bin_dir, f32_gguf, text, base, args.chunks)  # saves the F32 logits
        f32_dir = tmp / "f32"
        lowbit.convert(src, f32_dir, preset="f32", progress=False)
        tok = lowbit.load(f32_dir).tokenizer
        ids = np.asarray(tok.encode(text.read_text())[: args.chunks * CONTEXT], np.int32)
        ids = ids.reshape(args.chunks, CONTEXT)
        for preset in args.presets.split(","):
            out = tmp / preset
            lowbit.convert(src, out, preset=preset, progress=False)
            gguf_file = tmp / f"{preset}.gguf"
            exported = export_gguf(out, gguf_file)
            peer = _llama_kld(bin_dir, gguf_file, text, base, args.chunks)
            ours = _lowbit_kld_second_halves(out, f32_dir, ids)
            report = validate(out, src)
            if preset in PEER_TYPES:
                own = quantize(f32_gguf, tmp / f"own-{preset}.gguf", PEER_TYPES[preset])
                row_own = _llama_kld(bin_dir, own, text, base, args.chunks)
            else:
                row_own = None
            llama_text = _greedy_llama(bin_dir, gguf_file, 16)
            our_text = lowbit.load(out).generate(PROMPT, 16, stop_at_eos=False).text or ""
            row = {
                "preset": preset,
                "types": exported.types,
                "llama_cpp_kld": peer,
                "llama_cpp_own_type_kld": row_own,
                "lowbit_kld_same_positions": ours,
                "lowbit_validate_kld": report.model["kld_mean"],
                "greedy_same": llama_text.strip().startswith(our_text.strip()),
                "greedy_llama_cpp": llama_text.strip(),
                "greedy_lowbit": our_text.strip(),
            }
            rows.append(row)
            print(
                f"{preset}: llama.cpp KLD {peer['kld_mean']:.5f} ± {peer['kld_se']:.5f} "
                f"(same top {peer['same_top']:.1%}); llama.cpp's own "
                f"{PEER_TYPES.get(preset, '-')}: "
                f"{row_own['kld_mean'] if row_own else float('nan'):.5f}; "
                f"lowbit on the same positions {ours:.5f}; "
                f"lowbit validate {report.model['kld_mean']:.5f}; greedy 16 "
                f"tokens {'equal' if row['greedy_same'] else 'DIFFER'}",
                flush=True,
            )
            if not row["greedy_same"]:
                print(f"  llama.cpp: {row['greedy_llama_cpp']!r}\n  lowbit:    {our_text!r}")
    print(f"wrote {write_json('export.json', {'model': str(src), 'rows': rows})}")


if __name__ == "__main__":
    main()
