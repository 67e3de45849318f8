"""A converted model directory written back as a float32 HuggingFace checkpoint.

Every weight is reconstructed exactly as the runtime sees it (codes times
scales), under its original name and shape, so that transformers can run the
quantized model: comparing lowbit's runtime with it isolates kernel error
from quantization error, and validation can ask PyTorch about the quantized
weights. Written one tensor at a time, atomically (``OUT.partial`` renamed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lowbit.formats.layout import stored_tensor
from lowbit.formats.manifest import read as read_manifest
from lowbit.formats.safetensors import Checkpoint, StreamingWriter, TensorSpec
from lowbit.util.outdir import copy_side_files, writing


def write_dequantized(model_dir: str | Path, out: str | Path, *, force: bool = True) -> Path:
    """Write ``model_dir``'s weights as float32 safetensors into ``out``
    (``force``: replace an existing ``out`` directory)."""
    src = Path(model_dir)
    out = Path(out)
    manifest = read_manifest(src)
    ck = Checkpoint(src, files=[f.name for f in manifest.files])
    weights = manifest.weights
    specs = [TensorSpec(w.name, np.dtype(np.float32), w.shape) for w in weights]
    with writing(out, force=force) as partial:
        with StreamingWriter(partial / "model.safetensors", specs, {"format": "pt"}) as writer:
            for w in weights:
                values = stored_tensor(ck, w).dequantize() if len(w.shape) > 1 else None
                if values is None:
                    values = ck.get(w.stored.values).astype(np.float32)
                writer.write(w.name, np.ascontiguousarray(values.reshape(w.shape)))
        copy_side_files(src, partial)
    return out
