"""llama.cpp, the peer, built for the benchmarks only (never by the test suite).

Its full source is vendored in the ``llama-cpp-python`` sdist on PyPI (the one
place this machine can get it from). ``ensure_built`` downloads that sdist once,
unpacks ``vendor/llama.cpp`` into the cache and builds the tools the benchmarks
run (llama-quantize, llama-imatrix, llama-bench, llama-perplexity,
llama-completion) with ``GGML_NATIVE``, in a build directory named after the
CPU: the machine kind changes between sessions, and a binary tuned for one may
not run on the other.

    python benchmarks/llama_cpp_tools.py   # build (about 10 minutes on 2 cores), print paths

Shared by bench_quality.py (K-quants, imatrix), and the export and speed
benchmarks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"
VERSION = SDIST.split("==")[1]
TOOLS = (
    "llama-quantize",
    "llama-imatrix",
    "llama-bench",
    "llama-perplexity",
    "llama-completion",
)
# Everything in the GGUF that is not a linear layer of a block.
EMBEDDING_TENSORS = ("token_embd.weight", "output.weight")


def _cache() -> Path:
    from lowbit.sources.default_model import cache_dir

    return cache_dir() / f"llama.cpp-{VERSION}"


def _cpu_tag() -> str:
    """Model name and ISA flags of this CPU, hashed: one build per machine kind."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    keep = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))][:2]
    return hashlib.sha256("\n".join(keep).encode()).hexdigest()[:12]


def source_dir() -> Path:
    """llama.cpp's source tree, unpacked from the sdist on first use."""
    src = _cache() / "src"
    if (src / "CMakeLists.txt").is_file():
        return src
    src.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=src.parent) as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "--no-binary",
                "llama-cpp-python",
                SDIST,
                "-d",
                tmp,
            ],
            check=True,
        )
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
        unpacked = Path(tmp) / "llama.cpp"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for m in members:
                m.name = m.name[len(prefix) :]
            # "data" refuses absolute paths, links out of the tree and devices.
            tar.extractall(unpacked, members=[m for m in members if m.name], filter="data")
        unpacked.replace(src)  # atomic: a half-unpacked tree is never used
    return src


def build_dir() -> Path:
    return _cache() / f"build-{_cpu_tag()}"


def ensure_built() -> Path:
    """The directory holding llama.cpp's tools, built for this CPU when missing."""
    build = build_dir()
    bin_dir = build / "bin"
    if all((bin_dir / t).is_file() for t in TOOLS):
        return bin_dir
    src = source_dir()
    print(f"llama.cpp: building {', '.join(TOOLS)} in {build} (once per CPU kind)", flush=True)
    subprocess.run(
        [
            "cmake",
            "-S",
            str(src),
            "-B",
            str(build),
            "-G",
            "Ninja" if shutil.which("ninja") else "Unix Makefiles",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DGGML_NATIVE=ON",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_OPENSSL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=OFF",
            "-DBUILD_SHARED_LIBS=OFF",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    jobs = str(os.cpu_count() or 2)
    subprocess.run(
        ["cmake", "--build", str(build), "-j", jobs, "--target", *TOOLS],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return bin_dir


def _ensure_python_tools() -> None:
    """requirements/bench-tools.txt, when missing."""
    import importlib.util

    if importlib.util.find_spec("sentencepiece") is None:
        req = Path(__file__).resolve().parents[1] / "requirements" / "bench-tools.txt"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(req)], check=True)


def to_gguf(hf_dir: Path, out: Path, outtype: str = "f32") -> Path:
    """``convert_hf_to_gguf.py``: a float GGUF of a HuggingFace checkpoint."""
    _ensure_python_tools()
    script = source_dir() / "convert_hf_to_gguf.py"
    subprocess.run(
        [sys.executable, str(script), str(hf_dir), "--outfile", str(out), "--outtype", outtype],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return out


def quantize(src: Path, out: Path, qtype: str, imatrix: Path | None = None) -> Path:
    """``llama-quantize``: ``src`` (a float GGUF) to ``qtype`` (Q4_K_M, IQ4_XS, ...)."""
    cmd = [str(ensure_built() / "llama-quantize")]
    if imatrix is not None:
        cmd += ["--imatrix", str(imatrix)]
    cmd += [str(src), str(out), qtype, str(os.cpu_count() or 2)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def compute_imatrix(model: Path, text: Path, out: Path, context: int, chunks: int) -> Path:
    """``llama-imatrix`` over the first ``chunks`` windows of ``context`` tokens of ``text``."""
    subprocess.run(
        [
            str(ensure_built() / "llama-imatrix"),
            "-m",
            str(model),
            "-f",
            str(text),
            "-o",
            str(out),
            "-c",
            str(context),
            "--chunks",
            str(chunks),
            "-t",
            str(os.cpu_count() or 2),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return out


def gguf_bits(path: Path) -> tuple[float, float]:
    """Stored bits per weight of a GGUF file: over all matrices, and over the
    linear layers of the blocks only (not the embedding or output)."""
    from gguf import GGUFReader

    bits = count = lin_bits = lin_count = 0
    for t in GGUFReader(path).tensors:
        if len(t.shape) < 2 or int(t.n_elements) < 2 or min(int(d) for d in t.shape) == 1:
            continue
        b, n = 8 * int(t.n_bytes), int(t.n_elements)
        bits, count = bits + b, count + n
        if t.name not in EMBEDDING_TENSORS:
            lin_bits, lin_count = lin_bits + b, lin_count + n
    return bits / count, lin_bits / lin_count


def main() -> None:
    bin_dir = ensure_built()
    print(f"llama.cpp {VERSION} source: {source_dir()}")
    for tool in TOOLS:
        print(f"  {bin_dir / tool}")


if __name__ == "__main__":
    main()
