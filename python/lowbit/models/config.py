"""config.json, read once and checked: every field lowbit uses, by type and range.

A HuggingFace config.json is untrusted input: a missing key, a list where a
number belongs, ``1e308``, ``inf`` or ``head_dim: 0`` would otherwise surface
as a KeyError or ZeroDivisionError deep in the converter or the runtime, and
``num_hidden_layers: 1e8`` would make them loop for hours. ``read_config``
parses the file and ``check_config`` validates the fields lowbit reads (other
fields pass through untouched, as transformers may need them); declared counts
are then compared with the tensors the checkpoint really holds
(``check_layers``). Errors are ``ConfigError``s naming the file and the field.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lowbit.util.errors import LowbitError, check_float, check_int, where

CONFIG_FILE = "config.json"

# Upper bounds far above any real model, low enough that products of them fit
# in 64 bits and that loops over them end.
MAX_DIM = 1 << 20  # hidden, intermediate sizes
MAX_HEADS = 1 << 14
MAX_LAYERS = 1 << 12
MAX_VOCAB = 1 << 24
MAX_EXPERTS = 1 << 12
MAX_CONTEXT = 1 << 31

# field -> (lo, hi); all optional unless listed in REQUIRED.
INT_FIELDS: dict[str, tuple[int, int]] = {
    "hidden_size": (1, MAX_DIM),
    "num_attention_heads": (1, MAX_HEADS),
    "num_hidden_layers": (1, MAX_LAYERS),
    "vocab_size": (1, MAX_VOCAB),
    "num_key_value_heads": (1, MAX_HEADS),
    "head_dim": (1, MAX_DIM),
    "intermediate_size": (1, MAX_DIM),
    "moe_intermediate_size": (1, MAX_DIM),
    "shared_expert_intermediate_size": (1, MAX_DIM),
    "max_position_embeddings": (1, MAX_CONTEXT),
    "num_experts_per_tok": (0, MAX_EXPERTS),
    "num_local_experts": (0, MAX_EXPERTS),
    "num_experts": (0, MAX_EXPERTS),
    "sliding_window": (0, MAX_CONTEXT),
}
REQUIRED = ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
# field -> (lo, hi, lo_open)
FLOAT_FIELDS: dict[str, tuple[float, float, bool]] = {
    "rms_norm_eps": (0.0, 1.0, True),
    "rope_theta": (0.0, 1e30, True),
    "rope_local_base_freq": (0.0, 1e30, True),
    "query_pre_attn_scalar": (0.0, 1e30, True),
    "attn_logit_softcapping": (0.0, 1e30, False),
    "final_logit_softcapping": (0.0, 1e30, False),
}
BOOL_FIELDS = (
    "tie_word_embeddings",
    "norm_topk_prob",
    "use_sliding_window",
    "mlp_bias",
    "attention_bias",
)
STR_FIELDS = ("model_type", "hidden_act", "hidden_activation", "_name_or_path")
LAYER_TYPES = ("full_attention", "sliding_attention")
# rope parameter -> (lo, hi, lo_open); "factor" and friends of linear / llama3.
ROPE_FLOATS: dict[str, tuple[float, float, bool]] = {
    "rope_theta": (0.0, 1e30, True),
    "factor": (0.0, 1e6, True),
    "low_freq_factor": (0.0, 1e6, True),
    "high_freq_factor": (0.0, 1e6, True),
    "partial_rotary_factor": (0.0, 1.0, True),
    "attention_factor": (0.0, 1e6, True),
    "beta_fast": (0.0, 1e6, True),
    "beta_slow": (0.0, 1e6, True),
}


class ConfigError(LowbitError):
    """A config.json that is missing, unreadable, or has a field out of range."""


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """config.json (or a directory holding it), parsed and checked."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing; a checkpoint needs its config.json") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: unreadable ({e})") from None
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return check_config(config, path)


def _present(config: dict[str, Any], key: str) -> bool:
    # HF writes null for unset optional fields; lowbit reads those as absent.
    return config.get(key) is not None


def check_config(config: Any, path: str | os.PathLike[str] | None = CONFIG_FILE) -> dict[str, Any]:
    """``config`` itself after checking every field lowbit reads; ConfigError otherwise."""
    if not isinstance(config, dict):
        raise ConfigError(f"{where(path)}: expected a JSON object, got {type(config).__name__}")
    for key in REQUIRED:
        if key not in config:
            raise ConfigError(f"{where(path, key)}: missing")
    for key, (lo, hi) in INT_FIELDS.items():
        if key in REQUIRED or _present(config, key):
            config[key] = _int(config.get(key), path, key, lo, hi)
    for key, (lo, hi, lo_open) in FLOAT_FIELDS.items():
        if _present(config, key):
            config[key] = _float(config[key], path, key, lo, hi, lo_open)
    for key in BOOL_FIELDS:
        if _present(config, key) and not isinstance(config[key], bool):
            raise ConfigError(f"{where(path, key)}: expected true or false, got {config[key]!r}")
    for key in STR_FIELDS:
        if _present(config, key) and not isinstance(config[key], str):
            raise ConfigError(f"{where(path, key)}: expected a string, got {config[key]!r}")
    _check_architectures(config, path)
    _check_heads(config, path)
    _check_layer_types(config, path)
    _check_rope(config, path)
    _check_token_ids(config, path)
    return config


def _int(value: Any, path: Any, field: str, lo: int, hi: int) -> int:
    try:
        return check_int(value, path=path, field=field, lo=lo, hi=hi)
    except LowbitError as e:
        raise ConfigError(str(e)) from None


def _float(value: Any, path: Any, field: str, lo: float, hi: float, lo_open: bool) -> float:
    try:
        return check_float(value, path=path, field=field, lo=lo, hi=hi, lo_open=lo_open)
    except LowbitError as e:
        raise ConfigError(str(e)) from None


def _check_architectures(config: dict[str, Any], path: Any) -> None:
    archs = config.get("architectures")
    if archs is None:
        return
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ConfigError(
            f"{where(path, 'architectures')}: expected a list of names, got {archs!r}"
        )


def _check_heads(config: dict[str, Any], path: Any) -> None:
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    if heads % kv:
        raise ConfigError(
            f"{where(path, 'num_key_value_heads')}: {kv} does not divide "
            f"num_attention_heads ({heads})"
        )
    if not _present(config, "head_dim") and config["hidden_size"] < heads:
        raise ConfigError(
            f"{where(path, 'hidden_size')}: {config['hidden_size']} is smaller than "
            f"num_attention_heads ({heads}) and there is no head_dim"
        )
    experts = config.get("num_local_experts") or config.get("num_experts") or 0
    per_token = config.get("num_experts_per_tok") or 0
    if experts and per_token > experts:
        raise ConfigError(
            f"{where(path, 'num_experts_per_tok')}: {per_token} is more than the {experts} experts"
        )


def _check_layer_types(config: dict[str, Any], path: Any) -> None:
    types = config.get("layer_types")
    if types is None:
        return
    n = config["num_hidden_layers"]
    if not isinstance(types, list) or not all(t in LAYER_TYPES for t in types):
        raise ConfigError(
            f"{where(path, 'layer_types')}: expected a list of {' or '.join(LAYER_TYPES)}"
        )
    if types and len(types) != n:
        raise ConfigError(
            f"{where(path, 'layer_types')}: {len(types)} entries for {n} layers (num_hidden_layers)"
        )


def _check_rope_dict(params: Any, path: Any, field: str) -> None:
    if not isinstance(params, dict):
        raise ConfigError(f"{where(path, field)}: expected an object, got {params!r}")
    for key in ("rope_type", "type"):
        if key in params and params[key] is not None and not isinstance(params[key], str):
            raise ConfigError(f"{where(path, f'{field}.{key}')}: expected a string")
    for key, (lo, hi, lo_open) in ROPE_FLOATS.items():
        if params.get(key) is not None:
            _float(params[key], path, f"{field}.{key}", lo, hi, lo_open)
    if params.get("original_max_position_embeddings") is not None:
        _int(
            params["original_max_position_embeddings"],
            path,
            f"{field}.original_max_position_embeddings",
            1,
            MAX_CONTEXT,
        )
    kind = params.get("rope_type") or params.get("type")
    if kind in ("linear", "llama3") and params.get("factor") is None:
        raise ConfigError(f"{where(path, field + '.factor')}: missing for rope type {kind!r}")
    if kind == "llama3":
        if params.get("original_max_position_embeddings") is None:
            raise ConfigError(
                f"{where(path, field + '.original_max_position_embeddings')}: missing "
                "for rope type 'llama3'"
            )
        low = params.get("low_freq_factor") or 1.0
        high = params.get("high_freq_factor") or 4.0
        if not high > low:
            raise ConfigError(
                f"{where(path, field + '.high_freq_factor')}: {high} must exceed "
                f"low_freq_factor ({low})"
            )


def _check_rope(config: dict[str, Any], path: Any) -> None:
    params = config.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise ConfigError(
                f"{where(path, 'rope_parameters')}: expected an object, got {params!r}"
            )
        per_type = [k for k in LAYER_TYPES if isinstance(params.get(k), dict)]
        for kind in per_type:
            _check_rope_dict(params[kind], path, f"rope_parameters.{kind}")
        if not per_type:
            _check_rope_dict(params, path, "rope_parameters")
    if config.get("rope_scaling") is not None:
        _check_rope_dict(config["rope_scaling"], path, "rope_scaling")


def _check_token_ids(config: dict[str, Any], path: Any) -> None:
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        value = config.get(key)
        if value is None:
            continue
        for v in value if isinstance(value, list) else [value]:
            _int(v, path, key, 0, MAX_VOCAB)


_LAYER_INDEX = re.compile(r"^model\.layers\.(\d+)\.")


def check_layers(config: dict[str, Any], names: Iterable[str], path: Any = CONFIG_FILE) -> None:
    """num_hidden_layers against the ``model.layers.N.`` tensors really present."""
    present = {int(m.group(1)) for n in names if (m := _LAYER_INDEX.match(n))}
    declared = config["num_hidden_layers"]
    if present != set(range(declared)):
        found = f"layers 0..{max(present)}" if present else "no layer tensors"
        missing = sorted(set(range(declared)) - present)[:3]
        extra = sorted(present - set(range(declared)))[:3]
        detail = f"missing {missing}" if missing else f"extra {extra}"
        raise ConfigError(
            f"{where(path, 'num_hidden_layers')}: says {declared} but the weights hold "
            f"{found} ({detail})"
        )


def head_dim(config: dict[str, Any]) -> int:
    """head_dim, or hidden_size // num_attention_heads (checked non-zero)."""
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
