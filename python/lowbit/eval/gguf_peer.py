"""llama.cpp's formats as a peer: the same float weights quantized with the
``gguf`` package's Q8_0 / Q4_0 (bit-exact with llama.cpp), dequantized, and
written as a float32 HuggingFace checkpoint that lowbit converts (f32) and
validates through the very code it validates its own presets with.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lowbit.formats.safetensors import Checkpoint, StreamingWriter, TensorSpec
from lowbit.models.families import role_of
from lowbit.util.outdir import copy_side_files, writing

# Stored bits per weight: a float16 scale per block of 32, plus the codes.
GGUF_BITS = {"Q8_0": 8.5, "Q4_0": 4.5}
BLOCK = 32


def gguf_roundtrip(
    src: str | Path, out: str | Path, linear: str, embeddings: str = "Q8_0"
) -> dict[str, float]:
    """Write ``src`` with every 2-D weight round-tripped through a GGUF type:
    ``embeddings`` for the embedding and lm_head, ``linear`` for the rest (a
    matrix whose rows do not split into blocks of 32 stays float32). Returns
    bits per weight over all matrices and over the linear layers (not the
    embeddings or lm_head)."""
    from gguf import GGMLQuantizationType, quants

    src, out = Path(src), Path(out)
    ck = Checkpoint(src)
    specs = [TensorSpec(n, np.dtype(np.float32), ck.info(n).shape) for n in ck.names()]
    bits = count = lin_bits = lin_count = 0.0
    with writing(out, force=True) as partial:
        with StreamingWriter(partial / "model.safetensors", specs, {"format": "pt"}) as writer:
            for name in ck.names():
                x = np.ascontiguousarray(ck.get_float(name), dtype=np.float32)
                if x.ndim >= 2:
                    is_embedding = role_of(name) in ("embed", "lm_head")
                    qtype = embeddings if is_embedding else linear
                    b = 32.0
                    if x.shape[-1] % BLOCK == 0:
                        t = GGMLQuantizationType[qtype]
                        x = quants.dequantize(quants.quantize(x, t), t).reshape(x.shape)
                        b = GGUF_BITS[qtype]
                    bits += b * x.size
                    count += x.size
                    if not is_embedding:
                        lin_bits += b * x.size
                        lin_count += x.size
                writer.write(name, np.ascontiguousarray(x, dtype=np.float32))
        copy_side_files(src, partial)
    return {
        "bits_per_weight": bits / count if count else math.nan,
        "linear_bits_per_weight": lin_bits / lin_count if lin_count else math.nan,
    }
