"""How much of split upcycling's loss is the partition and how much the router,
on the embedded default model (SmolLM2-135M-Instruct), 8 experts, top-4.

Runs transformers float32 with every FFN's activations masked per token and
reports ΔPPL against the dense model on the evaluation text for:

- ``neuron oracle``: each token keeps its own best half of the neurons by
  output mass (|activation| x ||down column||): the bound of any selection
  of half the FFN, with no partition at all;
- ``group oracle``: each token keeps its best 4 of lowbit's 8 groups (no
  router error, no refit): the bound of the partition;
- ``routed``: lowbit's router picks the 4 groups (no refit).

The groups and routers are split_layer's, fitted on the dense model's inputs
(not layer by layer), so ``routed`` is close to but not the checkpoint that
``lowbit upcycle`` writes. Writes benchmarks/results/split_bounds.json.

    python benchmarks/bench_split_bounds.py [--calibration-tokens 4096]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json

EXPERTS, TOP_K = 8, 4


def main() -> None:
    import numpy as np
    import torch
    from lowbit.eval.text import DEFAULT_CONTEXT, DEFAULT_TOKENS
    from lowbit.moe.split import split_layer, topk_mask
    from lowbit.moe.upcycle import _encode_text, _load_dense, _windows_from_text
    from lowbit.sources.default_model import default_model_path

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calibration-tokens", type=int, default=4096)
    args = ap.parse_args()
    src = default_model_path()
    model = _load_dense(src)
    layers = model.model.layers
    text = _encode_text(src, None)
    ev = _windows_from_text(text, 0, DEFAULT_TOKENS, DEFAULT_CONTEXT)
    cal = _windows_from_text(text, DEFAULT_TOKENS, args.calibration_tokens, DEFAULT_CONTEXT)

    def run(mask=None) -> float:
        """Mean NLL on the evaluation windows, FFN activations times mask(i, x, act)."""
        for i, layer in enumerate(layers):
            mlp = layer.mlp

            def forward(h, mlp=mlp, i=i):
                act = mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h)
                if mask is not None:
                    flat = act.reshape(-1, act.shape[-1])
                    act = (flat * mask(i, h.reshape(-1, h.shape[-1]), flat)).reshape(act.shape)
                return mlp.down_proj(act)

            mlp.forward = forward
        try:
            nll = []
            with torch.inference_mode():
                for w in ev.windows:
                    logp = torch.log_softmax(model(torch.from_numpy(w)[None]).logits[0, :-1], -1)
                    nll.append(-logp[torch.arange(len(w) - 1), torch.from_numpy(w[1:])])
            return float(torch.cat(nll).mean())
        finally:
            for layer in layers:
                layer.mlp.__dict__.pop("forward", None)

    # Calibration inputs and activations of the dense model, and each layer's split.
    grabbed: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for w in cal.windows:
        _grab_window(model, layers, torch.from_numpy(w)[None], grabbed)
    down_norm = [layer.mlp.down_proj.weight.detach().norm(dim=0) for layer in layers]
    splits = [
        split_layer(*grabbed[i], layers[i].mlp.down_proj.weight.detach().numpy(),
                    EXPERTS, TOP_K, 0, i, f"layer {i}")[0]
        for i in range(len(layers))
    ]  # fmt: skip
    member = []
    for s in splits:
        m = np.zeros((down_norm[0].shape[0], EXPERTS), np.float32)
        for e, g in enumerate(s.groups):
            m[g, e] = 1.0
        member.append(torch.from_numpy(m))

    def neuron_oracle(i, x, act):
        mass = act.abs() * down_norm[i]
        keep = mass.shape[1] // 2
        return (mass >= mass.topk(keep, dim=1).values[:, -1:]).float()

    def group_oracle(i, x, act):
        energy = torch.square(act.abs() * down_norm[i]) @ member[i]
        pick = torch.from_numpy(topk_mask(energy.numpy(), TOP_K))
        return pick @ member[i].T

    def routed(i, x, act):
        pick = torch.from_numpy(topk_mask(x.numpy() @ splits[i].router.T, TOP_K))
        return pick @ member[i].T

    dense = run()
    rows = {"dense_ppl": math.exp(dense)}
    for name, mask in (
        ("neuron oracle", neuron_oracle),
        ("group oracle", group_oracle),
        ("routed", routed),
    ):
        rows[name] = 100.0 * (math.exp(run(mask) - dense) - 1.0)
        print(f"{name:14s} ΔPPL {rows[name]:+8.2f}%", flush=True)
    write_json("split_bounds.json", {"experts": EXPERTS, "top_k": TOP_K, **rows})


def _grab_window(model, layers, ids, grabbed) -> None:
    """Appends each layer's FFN inputs and activations on one window."""
    import numpy as np
    import torch

    seen: dict[int, tuple] = {}

    def hook(i):
        def pre(mlp, args):
            h = args[0].reshape(-1, args[0].shape[-1])
            act = mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h)
            seen[i] = (h.numpy().copy(), act.numpy().copy())

        return pre

    handles = [layer.mlp.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    for i, (x, act) in seen.items():
        if i in grabbed:
            grabbed[i] = (np.concatenate([grabbed[i][0], x]), np.concatenate([grabbed[i][1], act]))
        else:
            grabbed[i] = (x, act)


if __name__ == "__main__":
    main()
