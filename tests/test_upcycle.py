"""lowbit.moe.upcycle: dense checkpoints into MoE checkpoints that transformers and
lowbit's runtime both run, and the C++ kernels behind it."""

from __future__ import annotations

import json
from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit import _core
from lowbit.cli import main
from lowbit.formats.safetensors import Checkpoint
from lowbit.moe.split import _neuron_weights, split_layer, split_model
from lowbit.moe.upcycle import (
    UpcycleError,
    _as_windows,
    _ffn_inputs,
    _load_dense,
    load_moe,
    upcycle,
)
from runtime_helpers import hf_logits, prompt_ids, relative_error

# float32 summation-order differences over the logit scale (max |logit|).
EXACT = 1e-5
BASES = {
    "llama": "MixtralForCausalLM",
    "qwen2": "Qwen2MoeForCausalLM",
    "qwen3": "Qwen3MoeForCausalLM",
}


def _ids() -> np.ndarray:
    return prompt_ids()[None]


def _runtime_logits(moe: Path, tmp: Path, ids: np.ndarray) -> np.ndarray:
    conv = tmp / f"{moe.name}-f32"
    lowbit.convert(moe, conv, preset="f32", progress=False)
    return lowbit.load(conv).forward(ids)


# ---------------------------------------------------------------- kernels


def test_noise_is_standard_normal_and_deterministic() -> None:
    z = _core.gaussian_noise(200_001, 7, 3)
    assert z.dtype == np.float32
    assert z.shape == (200_001,)
    # Mean and std of 200k normals: standard errors 0.0022 and 0.0016.
    assert abs(float(z.mean())) < 0.01
    assert abs(float(z.std()) - 1.0) < 0.01
    # Tails of a normal, not of a uniform: about 0.27% beyond 3 sigma.
    assert 0.0015 < float((np.abs(z) > 3).mean()) < 0.004
    np.testing.assert_array_equal(z, _core.gaussian_noise(200_001, 7, 3))
    assert not np.array_equal(z[:100], _core.gaussian_noise(100, 7, 4))
    assert not np.array_equal(z[:100], _core.gaussian_noise(100, 8, 3))
    # Counter-based: a prefix is the same whatever the length.
    np.testing.assert_array_equal(z[:1001], _core.gaussian_noise(1001, 7, 3))


def test_noise_same_on_every_target_and_thread_count(simd_target: str, threads: int) -> None:
    z = _core.gaussian_noise(300_001, 1, 2)
    _core.force_target("SCALAR" if "SCALAR" in _core.available_targets() else simd_target)
    scalar = _core.gaussian_noise(300_001, 1, 2)
    _core.force_target(simd_target)
    # Log/Sin/Cos polynomials may round differently with and without FMA.
    np.testing.assert_allclose(z, scalar, rtol=0, atol=2e-6)
    x = np.ones(300_001, np.float32)
    _core.add_gaussian_noise(x, 0.5, 1, 2, "x")
    np.testing.assert_allclose(x, 1 + 0.5 * z, rtol=0, atol=1e-6)


def test_noise_rejects_bad_arrays() -> None:
    with pytest.raises(TypeError, match="x: expected a float32"):
        _core.add_gaussian_noise(np.zeros(4), 0.1, 0, 0, "x")
    with pytest.raises(ValueError, match="sigma"):
        _core.add_gaussian_noise(np.zeros(4, np.float32), -1.0, 0, 0, "x")


def test_balanced_kmeans_recovers_planted_groups() -> None:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 40))
    truth = np.repeat(np.arange(4), 16)
    rows = centers[truth] + 0.1 * rng.standard_normal((64, 40))
    perm = rng.permutation(64)
    labels = _core.balanced_kmeans(rows[perm].astype(np.float32), 4, 30, 0, "rows")
    assert np.bincount(labels).tolist() == [16] * 4
    # Every planted group lands in one cluster.
    for g in range(4):
        assert len(set(labels[truth[perm] == g].tolist())) == 1
    with pytest.raises(ValueError, match="3 clusters do not divide 64"):
        _core.balanced_kmeans(rows.astype(np.float32), 3, 5, 0, "rows")


def _captured(energy: np.ndarray, labels: np.ndarray, k: int, top_k: int) -> float:
    """Mean share of each token's energy in its top_k clusters."""
    per = np.stack([energy[labels == c].sum(axis=0) for c in range(k)], axis=1)
    return float((np.sort(per, axis=1)[:, -top_k:].sum(axis=1) / per.sum(axis=1)).mean())


def test_refine_for_top_k_moves_neurons_to_the_tokens_that_pick_them() -> None:
    rng = np.random.default_rng(1)
    # 4 planted groups of 8 neurons, each group busy on its own quarter of
    # the tokens; a random balanced start mixes them.
    truth = np.repeat(np.arange(4), 8)
    busy = np.repeat(np.arange(4), 50)
    energy = (0.05 + (truth[:, None] == busy[None]) * rng.uniform(1, 2, (32, 200))) ** 2
    energy = energy.astype(np.float32)
    start = rng.permutation(truth).astype(np.int32)
    labels = _core.refine_for_top_k(energy, start, 4, 1, 20, "energy")
    assert np.bincount(labels).tolist() == [8] * 4
    assert _captured(energy, labels, 4, 1) > _captured(energy, start, 4, 1)
    for g in range(4):
        assert len(set(labels[truth == g].tolist())) == 1
    again = _core.refine_for_top_k(energy, start, 4, 1, 20, "energy")
    assert np.array_equal(labels, again)
    with pytest.raises(ValueError, match="not a balanced partition"):
        _core.refine_for_top_k(energy, np.zeros(32, np.int32), 4, 1, 20, "energy")
    with pytest.raises(ValueError, match=r"4 clusters \(top 5\)"):
        _core.refine_for_top_k(energy, start, 4, 5, 20, "energy")


# ---------------------------------------------------------------- copy mode


@pytest.fixture(scope="module")
def copies(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory):
    """family -> (dense, moe with sigma 0, its report)."""
    out = {}
    for fam in BASES:
        src = tiny_checkpoint(fam)
        dst = tmp_path_factory.mktemp("copy") / fam
        rep = upcycle(src, dst, experts=4, top_k=2, calibration_ids=_ids(), eval_ids=_ids())
        out[fam] = (src, dst, rep)
    return out


@pytest.mark.parametrize("family", list(BASES))
def test_copy_without_noise_is_the_dense_model(copies, family: str, tmp_path: Path) -> None:
    src, moe, rep = copies[family]
    ids = prompt_ids()
    dense = hf_logits(src, ids)
    assert relative_error(hf_logits(moe, ids), dense) <= EXACT
    assert relative_error(_runtime_logits(moe, tmp_path, ids), dense) <= EXACT
    assert rep.model is not None
    assert rep.model["kld_mean"] < 1e-9
    assert abs(rep.model["delta_ppl_pct"]) < 1e-4


@pytest.mark.parametrize("family", list(BASES))
def test_copy_checkpoint_layout(copies, family: str) -> None:
    _src, moe, rep = copies[family]
    config = json.loads((moe / "config.json").read_text())
    assert config["architectures"] == [BASES[family]]
    assert config["num_experts_per_tok"] == 2
    experts = config.get("num_local_experts") or config.get("num_experts")
    assert experts == 4
    if family != "llama":
        assert config["norm_topk_prob"] is True
        assert config["moe_intermediate_size"] == 64
        assert config["decoder_sparse_step"] == 1
        assert config["mlp_only_layers"] == []
    # load_moe raises on any missing, unexpected or mismatched weight.
    model, info = load_moe(moe)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    names = Checkpoint(moe).names()
    assert not [n for n in names if ".mlp.gate_proj" in n or ".mlp.down_proj" in n]
    assert len([n for n in names if "experts.3." in n]) == 3 * 2  # 3 projections, 2 layers
    # Parameters: 4 copies of the FFN, 2 of them active per token.
    assert rep.total_params == sum(p.numel() for p in model.parameters()) - (
        model.lm_head.weight.numel() if model.config.tie_word_embeddings else 0
    )
    assert rep.ffn_flops_vs_dense == pytest.approx(2.0, abs=0.05)
    fractions = rep.load_balance["fraction_per_expert_mean"]
    assert len(fractions) == 4
    assert sum(fractions) == pytest.approx(1.0)


def test_copy_noise_is_reported_and_runtime_matches(tiny_checkpoint, tmp_path: Path) -> None:
    src = tiny_checkpoint("llama")
    moe = tmp_path / "noisy"
    rep = upcycle(src, moe, experts=4, top_k=2, noise=0.01, calibration_ids=_ids(), eval_ids=_ids())
    assert rep.model is not None
    assert rep.model["kld_mean"] > 1e-7
    ids = prompt_ids()
    ref = hf_logits(moe, ids)
    assert relative_error(ref, hf_logits(src, ids)) > EXACT  # the noise changed the model
    assert relative_error(_runtime_logits(moe, tmp_path, ids), ref) <= EXACT
    # The same seed gives the same checkpoint; another seed another one.
    again = tmp_path / "again"
    upcycle(src, again, experts=4, top_k=2, noise=0.01, evaluate=False)
    name = "model.layers.1.block_sparse_moe.experts.2.w1.weight"
    np.testing.assert_array_equal(Checkpoint(moe).get(name), Checkpoint(again).get(name))
    other = tmp_path / "other"
    upcycle(src, other, experts=4, top_k=2, noise=0.01, seed=1, evaluate=False)
    assert not np.array_equal(Checkpoint(moe).get(name), Checkpoint(other).get(name))


def test_relative_noise_scales_with_each_tensor(tiny_checkpoint, tmp_path: Path) -> None:
    src = tiny_checkpoint("qwen3")
    moe = tmp_path / "rel"
    upcycle(src, moe, experts=2, top_k=1, noise_relative=0.1, router="zero", evaluate=False)
    dense = Checkpoint(src).get("model.layers.0.mlp.up_proj.weight")
    expert = Checkpoint(moe).get("model.layers.0.mlp.experts.1.up_proj.weight")
    ratio = float((expert - dense).std() / dense.std())
    assert 0.08 < ratio < 0.12  # 2048 samples of a std of 0.1
    router = Checkpoint(moe).get("model.layers.0.mlp.gate.weight")
    assert not router.any()


def test_hidden_router_rows_are_unit_mean_hidden_states(tiny_checkpoint, tmp_path: Path) -> None:
    src = tiny_checkpoint("llama")
    moe = tmp_path / "hidden"
    upcycle(src, moe, experts=4, top_k=2, router="hidden", calibration_ids=_ids(), evaluate=False)
    r = Checkpoint(moe).get("model.layers.0.block_sparse_moe.gate.weight")
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0, rtol=1e-5)
    assert np.linalg.matrix_rank(r) == 4  # four different chunks of text


# ---------------------------------------------------------------- split mode


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_split_with_all_experts_is_the_dense_model(
    tiny_checkpoint, family: str, tmp_path: Path
) -> None:
    src = tiny_checkpoint(family)
    moe = tmp_path / "split"
    rep = upcycle(
        src, moe, experts=4, top_k=4, mode="split", calibration_ids=_ids(), evaluate=False
    )
    assert rep.expert_intermediate == 16
    ids = prompt_ids()
    dense = hf_logits(src, ids)
    assert relative_error(hf_logits(moe, ids), dense) <= EXACT
    assert relative_error(_runtime_logits(moe, tmp_path, ids), dense) <= EXACT


def test_split_partitions_neurons_and_halves_the_ffn(tiny_checkpoint, tmp_path: Path) -> None:
    src = tiny_checkpoint("llama")
    moe = tmp_path / "split"
    rep = upcycle(
        src, moe, experts=4, top_k=2, mode="split", calibration_ids=_ids(), eval_ids=_ids()
    )
    # Half the FFN's neurons plus the router's 4 x 32 multiply-adds.
    assert rep.ffn_flops_vs_dense == pytest.approx((2 * 3 * 32 * 16 + 4 * 32) / (3 * 32 * 64))
    assert rep.model is not None
    assert rep.model["kld_mean"] > 0
    ck, dense = Checkpoint(moe), Checkpoint(src).get("model.layers.0.mlp.gate_proj.weight")
    rows = np.concatenate(
        [ck.get(f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight") for e in range(4)]
    )
    # Every dense neuron in exactly one expert.
    assert sorted(map(bytes, rows)) == sorted(map(bytes, dense))
    ids = prompt_ids()
    assert relative_error(_runtime_logits(moe, tmp_path, ids), hf_logits(moe, ids)) <= EXACT


def test_split_refit_lowers_the_routed_error() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((512, 16)).astype(np.float32)
    gate, up = rng.standard_normal((2, 32, 16)).astype(np.float32)
    act = (gate @ x.T).T * (1 / (1 + np.exp(-(gate @ x.T).T))) * (up @ x.T).T
    down = rng.standard_normal((16, 32)).astype(np.float32)
    layer, _ = split_layer(x, act, down, 4, 2, 0, 0, "test")
    z = act * _neuron_weights(x, layer.router, layer.groups, None, 2, 32)
    dense = act @ down.T

    def err(d: np.ndarray) -> float:
        return float(np.square(z @ d.T - dense).sum() / np.square(dense).sum())

    assert err(layer.down) < 0.9 * err(down)  # 0.82 here


def test_split_calibrates_each_layer_on_the_split_layers_before_it(
    tiny_checkpoint, tmp_path: Path
) -> None:
    import torch

    src = tiny_checkpoint("qwen3")
    moe = tmp_path / "split"
    upcycle(src, moe, experts=4, top_k=2, mode="split", calibration_ids=_ids(), evaluate=False)
    layers = split_model(_load_dense(src), _ids(), 4, 2, 0, 0)
    # The FFN inputs the split saw are the MoE checkpoint's own (in
    # transformers), not the dense model's: the fit emulates the checkpoint.
    model, _ = load_moe(moe)
    seen: list[np.ndarray] = []
    hooks = [
        layer.mlp.register_forward_pre_hook(
            lambda _m, args: seen.append(args[0].reshape(-1, args[0].shape[-1]).numpy().copy())
        )
        for layer in model.model.layers
    ]
    with torch.inference_mode():
        model(torch.from_numpy(_ids()))
    for h in hooks:
        h.remove()
    assert len(seen) == len(layers) >= 2
    for split, x in zip(layers, seen, strict=True):
        assert relative_error(x, split.x) <= 1e-5
    # ... which differ from the dense model's after the first split layer.
    dense_x = _ffn_inputs(_load_dense(src), _as_windows(_ids(), "ids"))
    assert relative_error(layers[0].x, dense_x[0]) <= 1e-6
    assert relative_error(layers[-1].x, dense_x[-1]) > 1e-3


def test_split_shared_expert_qwen2(tiny_checkpoint, tmp_path: Path) -> None:
    src = tiny_checkpoint("qwen2")
    moe = tmp_path / "shared"
    rep = upcycle(
        src, moe, experts=3, top_k=3, mode="split", shared_expert=True,
        calibration_ids=_ids(), evaluate=False,
    )  # fmt: skip
    assert rep.shared_intermediate == 16
    assert rep.expert_intermediate == 16
    ids = prompt_ids()
    assert relative_error(hf_logits(moe, ids), hf_logits(src, ids)) <= EXACT


# ---------------------------------------------------------------- bad input


def test_bad_input(tiny_checkpoint, tmp_path: Path) -> None:
    llama = tiny_checkpoint("llama")
    with pytest.raises(UpcycleError, match="128 experts but the FFN has only 64"):
        upcycle(llama, tmp_path / "a", experts=128, top_k=2, mode="split")
    with pytest.raises(UpcycleError, match="top-k must be between 1 and the number of experts"):
        upcycle(llama, tmp_path / "a", experts=4, top_k=5)
    with pytest.raises(UpcycleError, match="top-k must be between 1"):
        upcycle(llama, tmp_path / "a", experts=4, top_k=0)
    with pytest.raises(UpcycleError, match="gemma has no MoE counterpart"):
        upcycle(tiny_checkpoint("gemma"), tmp_path / "a", experts=4, top_k=2)
    with pytest.raises(UpcycleError, match="already a Mixture-of-Experts"):
        upcycle(tiny_checkpoint("mixtral"), tmp_path / "a", experts=4, top_k=2)
    with pytest.raises(UpcycleError, match="shared expert needs the Qwen2-MoE layout"):
        upcycle(llama, tmp_path / "a", experts=4, top_k=2, mode="split", shared_expert=True)
    with pytest.raises(UpcycleError, match="need the tokenizer"):
        upcycle(llama, tmp_path / "a", experts=4, top_k=2, router="hidden")
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "a.partial").exists()


def test_cli(tiny_checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = str(tiny_checkpoint("qwen3"))
    out = str(tmp_path / "moe")
    args = ["upcycle", src, out, "--experts", "2", "--top-k", "1", "--noise", "0.01"]
    assert main([*args, "--no-eval", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["architecture"] == "Qwen3MoeForCausalLM"
    assert report["noise"]["sigma"] == 0.01
    assert main(args) == 2  # OUT exists
    assert "already exists" in capsys.readouterr().err
    assert main(["upcycle", src, out + "2", "--experts", "2", "--top-k", "3"]) == 2
    assert "top-k must be between 1" in capsys.readouterr().err


# ---------------------------------------------------------------- conversion


@pytest.mark.parametrize(
    ("family", "kw"),
    [
        ("llama", {"mode": "copy", "noise": 0.01, "experts": 4, "top_k": 2}),
        ("qwen2", {"mode": "split", "shared_expert": True, "experts": 3, "top_k": 2}),
    ],
)
def test_upcycled_model_converts_with_moe_q4_and_runs(
    tiny_checkpoint, family: str, kw: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lowbit.conversion.dequantized import write_dequantized

    moe = tmp_path / "moe"
    upcycle(tiny_checkpoint(family), moe, calibration_ids=_ids(), evaluate=False, **kw)
    out = tmp_path / "q4"
    capsys.readouterr()
    lowbit.convert(moe, out, preset="moe-q4", progress=False)
    notes = [line for line in capsys.readouterr().err.splitlines() if "lowbit convert" in line]
    weights = json.loads((out / "manifest.json").read_text())["weights"]
    schemes = {w["name"]: w["scheme"] for w in weights}
    router = next(n for n in schemes if n.endswith(("moe.gate.weight", "mlp.gate.weight")))
    # Expert matrices are int4 g32; split experts here have rows of 16
    # neurons in their down projections, which int4 g32 does not fit: those
    # fall back to int8 per row, and the manifest says so.
    experts = [w for w in weights if ".experts." in w["name"]]
    assert experts
    for w in experts:
        assert w["scheme"] == "int4" or (w["fallback"] and w["shape"][1] < 32), w
    fallbacks = [w for w in weights if w["fallback"]]
    # One line per reason, not per tensor: 2 layers x (3 experts + shared) share one.
    assert len(notes) == len({w["fallback"] for w in fallbacks})
    if fallbacks:
        assert f"and {len(fallbacks) - 3} more: " in notes[0]
    assert schemes["model.layers.0.self_attn.q_proj.weight"] == "int8"
    assert schemes[router] == "f32"
    ids = prompt_ids()
    ref = hf_logits(write_dequantized(out, tmp_path / "deq"), ids)
    assert relative_error(lowbit.load(out).forward(ids), ref) < 1e-4


def test_load_balance_pairs_each_router_with_its_own_layer() -> None:
    """Routers arrive in the checkpoint's name order (0, 1, 10, 11, ..., 2);
    each layer's router must meet that layer's FFN inputs."""
    from lowbit.eval.text import EvalWindows
    from lowbit.moe.upcycle import _load_balance

    rng = np.random.default_rng(0)
    layers, experts, hidden = 12, 4, 8
    stats = [rng.standard_normal((64, hidden)).astype(np.float32) for _ in range(layers)]
    routers = {i: rng.standard_normal((experts, hidden)).astype(np.float32) for i in range(layers)}
    calib = EvalWindows(np.zeros((1, 4), np.int64), 4, "test")
    in_order = _load_balance(routers, stats, 2, calib)
    by_name = sorted(routers, key=str)  # 0, 1, 10, 11, 2, ...
    shuffled = _load_balance({i: routers[i] for i in by_name}, stats, 2, calib)
    assert shuffled == in_order
    for i in (2, 10):
        alone = _load_balance({0: routers[i]}, [stats[i]], 2, calib)
        assert alone["cv_per_layer"][0] == pytest.approx(in_order["cv_per_layer"][i])
