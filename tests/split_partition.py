"""Prints the split-mode partition of the reference model as JSON, for
tests/test_split_determinism.py: run as a child process so that each run
gets its own SIMD target, thread counts and BLAS threads (OpenBLAS reads
OPENBLAS_NUM_THREADS once, at import).

    python tests/split_partition.py TARGET THREADS TOKENS LAYERS

TARGET: a lowbit SIMD target ("" for the best one); THREADS: lowbit's and
torch's threads; TOKENS: calibration tokens; LAYERS: the first layers kept.
"""

from __future__ import annotations

import hashlib
import json
import sys


def main() -> None:
    target, threads, tokens, n_layers = sys.argv[1], *map(int, sys.argv[2:5])
    import torch
    from lowbit import _core
    from lowbit.moe.split import split_model
    from lowbit.moe.upcycle import (
        DEFAULT_CONTEXT,
        DEFAULT_TOKENS,
        _encode_text,
        _load_dense,
        _windows_from_text,
    )
    from lowbit.sources.default_model import default_model_path

    _core.force_target(target)
    _core.set_num_threads(threads)
    torch.set_num_threads(threads)
    src = default_model_path()
    model = _load_dense(src)
    del model.model.layers[n_layers:]  # a prefix of the chain of layers
    calib = _windows_from_text(_encode_text(src, None), DEFAULT_TOKENS, tokens, DEFAULT_CONTEXT)
    layers = split_model(model, calib.windows, experts=8, top_k=4, shared=0, seed=0)
    labels = []
    for layer in layers:
        owner = [0] * sum(len(g) for g in layer.groups)
        for e, group in enumerate(layer.groups):
            for j in group:
                owner[int(j)] = e
        labels.append(owner)
    router = hashlib.sha256(b"".join(layer.router.tobytes() for layer in layers)).hexdigest()
    result = {"target": _core.upcycle_target(), "threads": threads}
    print(json.dumps({**result, "labels": labels, "router_sha256": router}))


if __name__ == "__main__":
    main()
