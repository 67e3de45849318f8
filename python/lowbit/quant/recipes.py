"""Recipes: which scheme each tensor gets, from a preset plus ``REGEX=SCHEME`` rules.

Rules are tried in the order given, on the tensor's checkpoint name (``re.search``),
before the preset, in the manner of llama.cpp's ``--tensor-type``. A rule reads
``REGEX=SCHEME[:GROUP][:METHOD]``, for example ``mlp\\.down_proj=int4:128:mse`` or
``embed_tokens=int8``; GROUP is a size or ``row``. Norms, biases and other 1-D
tensors stay float32 whatever the recipe says. When a group size does not divide
a tensor's rows the recipe's fallback is used and the plan says why.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from lowbit.models.families import role_of
from lowbit.quant.schemes import STATISTICS_METHODS, fitting_group_sizes, get_scheme
from lowbit.util.errors import ArgumentError

FLOAT32_ROLES = frozenset({"norm", "attn_q_norm", "attn_k_norm", "bias"})
ATTENTION = ("attn_q", "attn_k", "attn_v", "attn_o")
FFN = ("ffn_gate", "ffn_up", "ffn_down", "shared_gate", "shared_up", "shared_down")
EXPERTS = ("expert_gate", "expert_up", "expert_gate_up", "expert_down")
ROUTERS = ("router", "shared_router")
EMBEDDINGS = ("embed", "lm_head")


@dataclass(frozen=True)
class Choice:
    scheme: str
    group_size: int | None = None
    method: str = "rtn"

    def describe(self) -> str:
        if not get_scheme(self.scheme).takes_group_size:
            group = ""
        else:
            group = " per row" if self.group_size is None else f" group {self.group_size}"
        method = "" if self.method == "rtn" else f" {self.method}"
        return f"{self.scheme}{group}{method}"


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    default: Choice
    by_role: dict[str, Choice] = field(default_factory=dict)
    fallback: Choice = Choice("int8")
    # A bit budget (lowbit convert --target-bpw): each matrix's scheme chosen
    # by measured sensitivity; ``default`` and ``by_role`` are then only what
    # a conversion without calibration statistics falls back to.
    target_bpw: float | None = None
    # Input-channel scales folded in before quantizing (lowbit.conversion.fold):
    # "awq", "sinq" or "none".
    fold: str = "none"


def _roles(roles: tuple[str, ...], choice: Choice) -> dict[str, Choice]:
    return dict.fromkeys(roles, choice)


_F32 = Choice("f32")
_INT8 = Choice("int8")
# int8 in groups of 32 (float16 scales, 8.5 bits per weight, as llama.cpp's
# Q8_0). On SmolLM2-135M it cuts per-row int8's mean KL divergence from
# 0.0049 to 0.0016 (benchmarks/bench_quality.py).
_INT8_G32 = Choice("int8", 32)
_INT4 = Choice("int4", 32)
_UINT4_GPTQ = Choice("uint4", 64, "gptq")
_UINT4_HQQ = Choice("uint4", 64, "hqq")

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("f32", "no quantization: the exact baseline", _F32),
        Preset("f16", "float16 everywhere (norms float32)", Choice("f16")),
        Preset("bf16", "bfloat16 everywhere (norms float32)", Choice("bf16")),
        Preset("q8", "int8 group 32 everywhere (per row where 32 does not fit)", _INT8_G32),
        # 4.5 bits per linear weight, as llama.cpp's Q4_0. Mean KLD on 8192
        # tokens of the license texts (benchmarks/bench_quality.py), SmolLM2-135M /
        # Gemma 3 270M: uint4 g64 gptq 0.118 / 0.200; whqq (weighted hqq) 0.122 /
        # 0.298; uncalibrated hqq 0.273 / 0.634; int4 g32 rtn 0.351 (GGUF Q4_0
        # 0.349 / 0.796). AWQ's scales before GPTQ (--fold awq) measure 0.119 /
        # 0.243, no better, cost 50 s more on SmolLM2 and push six of its
        # matrices past the default 10% weight error: not the default. Calibrated: conversion runs
        # the float model over the calibration text first (lowbit.eval.calibration,
        # lowbit.eval.gptq).
        Preset(
            "q4",
            "uint4 group 64 by GPTQ (calibrated) for linear layers; "
            "int8 group 32 embeddings and lm_head",
            _UINT4_GPTQ,
            {**_roles(EMBEDDINGS, _INT8_G32), **_roles(ROUTERS, _F32)},
        ),
        Preset(
            "q4-nocal",
            "q4 without calibration: uint4 group 64 hqq for linear layers; "
            "int8 group 32 embeddings and lm_head",
            _UINT4_HQQ,
            {**_roles(EMBEDDINGS, _INT8_G32), **_roles(ROUTERS, _F32)},
        ),
        Preset(
            "q4-int4",
            "int4 group 32 (round to nearest, as llama.cpp's Q4_0) for linear layers; "
            "int8 group 32 embeddings and lm_head",
            _INT4,
            {**_roles(EMBEDDINGS, _INT8_G32), **_roles(ROUTERS, _F32)},
        ),
        # A bit budget of 5.5 bits per weight over all matrices, the embedding
        # included (llama.cpp's Q4_K_S file is 5.96 on SmolLM2-135M, Q4_K_M
        # 6.16), spent by measured sensitivity (lowbit.eval.budget).
        Preset(
            "q5",
            "each matrix's scheme by measured sensitivity (uint2 to uint6 whqq, int8 g32), "
            "5.5 bits per weight over all matrices; calibrated",
            Choice("uint4", 32, "whqq"),
            {**_roles(EMBEDDINGS, _INT8_G32), **_roles(ROUTERS, _F32)},
            target_bpw=5.5,
        ),
        # 6.5 bits per linear weight (llama.cpp's Q6_K: 6.56). SmolLM2-135M: mean
        # KLD 0.0080 on 8192 tokens, against 0.040 for Q4_K_M with an imatrix.
        Preset(
            "q6",
            "uint6 group 64 by GPTQ (calibrated) for linear layers; "
            "int8 group 32 embeddings and lm_head",
            Choice("uint6", 64, "gptq"),
            {**_roles(EMBEDDINGS, _INT8_G32), **_roles(ROUTERS, _F32)},
        ),
        Preset(
            "moe-q4",
            "int8 attention, int4 group-32 experts and FFNs, int8 embeddings and lm_head",
            _INT4,
            {**_roles(ATTENTION, _INT8), **_roles(EMBEDDINGS, _INT8), **_roles(ROUTERS, _F32)},
        ),
        Preset(
            "q2",
            "uint2 group 32 (hqq) for linear layers; int8 group 32 embeddings and lm_head",
            Choice("uint2", 32, "hqq"),
            {**_roles(EMBEDDINGS, _INT8_G32), **_roles(ROUTERS, _F32)},
        ),
        Preset(
            "ternary",
            "ternary per row for linear layers; int8 group 32 embeddings and lm_head",
            Choice("ternary"),
            {**_roles(EMBEDDINGS, _INT8_G32), **_roles(ROUTERS, _F32)},
        ),
        *(
            Preset(f"bits{b}", f"uint{b} per row with zero points everywhere", Choice(f"uint{b}"))
            for b in (1, 2, 4, 8)
        ),
    )
}


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    choice: Choice
    text: str


def parse_rule(text: str) -> Rule:
    """``REGEX=SCHEME[:GROUP][:METHOD]``; a ValueError says what is wrong."""
    regex, sep, spec = text.rpartition("=")
    if not sep or not regex or not spec:
        raise ArgumentError(f"scheme rule {text!r}: expected REGEX=SCHEME[:GROUP][:METHOD]")
    try:
        pattern = re.compile(regex)
    except re.error as e:
        raise ArgumentError(f"scheme rule {text!r}: bad regular expression ({e})") from None
    parts = spec.split(":")
    if len(parts) > 3:
        raise ArgumentError(f"scheme rule {text!r}: expected SCHEME[:GROUP][:METHOD]")
    scheme = get_scheme(parts[0])
    group: int | None = scheme.default_group_size
    if len(parts) > 1 and parts[1] != "":
        if parts[1] == "row":
            group = None
        elif parts[1].isdigit() and int(parts[1]) > 0:
            group = int(parts[1])
        else:
            raise ArgumentError(f"scheme rule {text!r}: group {parts[1]!r} is not a size or 'row'")
    method = parts[2] if len(parts) > 2 else "rtn"
    if not scheme.applies(method):
        raise ArgumentError(
            f"scheme rule {text!r}: method {method!r} does not apply to {scheme.name}"
        )
    if not scheme.takes_group_size:
        group = None
    return Rule(pattern, Choice(scheme.name, group, method), text)


@dataclass(frozen=True)
class TensorPlan:
    """What happens to one tensor; ``fallback`` says why the first choice was replaced."""

    name: str
    role: str
    shape: tuple[int, ...]
    choice: Choice
    source: str  # "preset", "rule: <text>" or "float32 tensor"
    fallback: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "shape": list(self.shape),
            "scheme": self.choice.scheme,
            "group_size": self.choice.group_size,
            "method": self.choice.method,
            "source": self.source,
            "fallback": self.fallback,
        }


@dataclass(frozen=True)
class Recipe:
    preset: Preset
    rules: tuple[Rule, ...] = ()

    @classmethod
    def from_args(cls, preset: str = "q4", rules: list[str] | tuple[str, ...] = ()) -> Recipe:
        if preset not in PRESETS:
            raise ArgumentError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        return cls(PRESETS[preset], tuple(parse_rule(r) for r in rules))

    def uses(self, *methods: str) -> bool:
        """Whether any tensor may get one of ``methods``."""
        p = self.preset
        choices = [p.default, p.fallback, *p.by_role.values(), *(r.choice for r in self.rules)]
        return any(c.method in methods for c in choices)

    @property
    def calibrated(self) -> bool:
        """Whether any tensor may get a method that needs calibration
        statistics (wmse, whqq, gptq)."""
        return self.uses(*STATISTICS_METHODS)

    def plan(self, name: str, shape: tuple[int, ...]) -> TensorPlan:
        role = role_of(name)
        if len(shape) < 2 or role in FLOAT32_ROLES:
            return TensorPlan(name, role, shape, _F32, "float32 tensor")
        choice, source = self.preset.by_role.get(role, self.preset.default), "preset"
        for rule in self.rules:
            if rule.pattern.search(name):
                choice, source = rule.choice, f"rule: {rule.text}"
                break
        cols = shape[-1]
        gs = choice.group_size
        grouped = get_scheme(choice.scheme).takes_group_size
        if not grouped or gs is None or gs in fitting_group_sizes(cols):
            return TensorPlan(name, role, shape, choice, source)
        # First a smaller group of the same scheme (a divisor of the size
        # asked for, at least 32: more bits per weight, never fewer), then
        # the preset's fallback.
        fits = fitting_group_sizes(cols)
        smaller = [g for g in fits if 32 <= g < gs and gs % g == 0]
        fallback = (
            dataclasses.replace(choice, group_size=max(smaller))
            if smaller
            else self.preset.fallback
        )
        why = (
            f"{choice.describe()} does not fit rows of {cols} "
            f"({math.prod(shape[:-1])} rows); using {fallback.describe()}"
        )
        return TensorPlan(name, role, shape, fallback, source, why)

    def as_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset.name,
            "rules": [r.text for r in self.rules],
            "fallback": self.preset.fallback.describe(),
        }
