"""lowbit._core refuses every out-of-range size, count and array, naming it.

Every binding in src/bindings/*.cc that takes a size, a count, a range or an
output array is fed 0, -1, 2**31-1, 2**32, 2**62 and 2**63-1 (and wrong
dtypes, read-only and mis-shaped arrays): each must raise a Python exception
whose message names the argument, or (where the value is valid) return. The
cases run in child processes with a memory limit, so that a crash (the
SIGSEGV, SIGFPE and abort these inputs used to cause) fails its case instead
of killing pytest, and a huge allocation fails instead of swapping.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lowbit
import numpy as np
import pytest
from lowbit import _core
from lowbit.runtime import model as runtime
from lowbit.util.errors import ArgumentError

ROOT = Path(__file__).resolve().parents[1]
BAD = (0, -1, 2**31 - 1, 2**32, 2**62, 2**63 - 1)
# Address space of a child: enough for NumPy and the tiny arrays here, far
# below the gigabytes a wrapped or unchecked size would ask for.
CHILD_MEMORY = 3 << 30
CHILD_TIMEOUT = 240

# Defines the inputs the cases use; runs once per child.
SETUP = """
import numpy as np
from lowbit import _core

F32 = _core.DType.F32
RNG = np.random.default_rng(0)

def p8():
    return _core.QuantParams()  # int8, absmax / 127: valid as built

def p4():
    p = _core.QuantParams()
    p.bits, p.qmin, p.qmax, p.code_offset = 4, -8, 7, 8
    p.rule, p.scale_divisor, p.group_size = _core.ScaleRule.SIGNEDMAX, -8.0, 32
    return p

X = RNG.standard_normal((4, 64)).astype(np.float32)
CODES, SCALES, ZEROS = _core.quantize(X, F32, p4(), "w")
W = _core.Weight.quantized(CODES, SCALES, ZEROS, 4, 64, p4(), "w")

def parts():
    # A one-layer dense model: hidden 16, 2 heads of 8, 1 kv head, vocab 32.
    c = _core.ModelConfig()
    c.hidden, c.heads, c.kv_heads, c.head_dim, c.vocab = 16, 2, 1, 8, 32
    layer = _core.LayerConfig()
    layer.inv_freq = [1.0, 0.1, 0.01, 0.001]
    c.layers = [layer]
    shapes = {"embed": (32, 16), "L0.q": (16, 16), "L0.k": (8, 16), "L0.v": (8, 16),
              "L0.o": (16, 16), "L0.gate": (32, 16), "L0.up": (32, 16), "L0.down": (16, 32)}
    weights = {
        name: _core.Weight.floats(RNG.standard_normal(s).astype(np.float32),
                                  _core.WeightFormat.F32, name)
        for name, s in shapes.items()
    }
    vectors = {n: np.ones(16, np.float32) for n in ("final_norm", "L0.attn_norm", "L0.ffn_norm")}
    return c, weights, vectors

def model(context=16):
    return _core.Model(*parts(), context)

FEATURES = RNG.standard_normal((8, 4)).astype(np.float32)
ENERGY = RNG.random((8, 5)).astype(np.float32)
LABELS = _core.balanced_kmeans(FEATURES, 2, 5, 0, "f")
"""

# Runs the cases read from stdin; one line per event, flushed, so that the
# parent knows which case a crash happened in.
RUNNER = """
import json, sys
ns = {}
exec(SETUP, ns)
for case_id, code in json.loads(sys.stdin.read()):
    print(json.dumps(["start", case_id]), flush=True)
    try:
        exec(code, dict(ns))
    except Exception as e:
        print(json.dumps(["raised", case_id, type(e).__name__, str(e)]), flush=True)
    else:
        print(json.dumps(["returned", case_id]), flush=True)
"""


def size_cases(
    label: str, template: str, name: str, ok: tuple[int, ...] = (), values: tuple = BAD
) -> Iterator[tuple[str, str, str | None]]:
    """(id, code, regex the message must match, or None: must return)."""
    for v in values:
        yield f"{label}={v}", template.format(v=v), None if v in ok else name


def all_cases() -> list[tuple[str, str, str | None]]:
    cases: list[tuple[str, str, str | None]] = []
    add = cases.extend
    # --- module.cc
    add(size_cases("row_bytes.cols", "_core.row_bytes({v}, 4)", r"\bcols\b", ok=(2**31 - 1,)))
    add(size_cases("row_bytes.bits", "_core.row_bytes(32, {v})", r"\bbits\b", values=(*BAD, 7)))
    quantize = "p = {p}(); p.{field} = {{v}}; _core.quantize(X, F32, p, 'w')"
    add(size_cases("QuantParams.bits", quantize.format(p="p8", field="bits"), r"\bbits\b"))
    add(size_cases("QuantParams.qmin", quantize.format(p="p4", field="qmin"), "qmin", ok=(0, -1)))
    add(size_cases("QuantParams.qmax", quantize.format(p="p4", field="qmax"), "qmax", ok=(0, -1)))
    offset = quantize.format(p="p4", field="code_offset")
    add(size_cases("QuantParams.code_offset", offset, "code_offset"))
    group = quantize.format(p="p4", field="group_size")
    add(size_cases("QuantParams.group_size", group, r"group.size", ok=(0,)))
    add(
        [
            # bits=8 with qmin=-300 was accepted: int8 codes cannot hold it.
            ("int8 qmin=-300", "p = p8(); p.qmin = -300; _core.quantize(X, F32, p, 'w')", "qmin"),
            (
                "int8 qmin=-300 qmax=-100",
                "p = p8(); p.qmin, p.qmax = -300, -100; _core.quantize(X, F32, p, 'w')",
                "qmin",
            ),
            ("QuantParams.bits=True", "p = p8(); p.bits = True", r"\bbits\b"),
            ("QuantParams.bits=8.0", "p = p8(); p.bits = 8.0", r"\bbits\b"),
            (
                "scale_divisor=0",
                "p = p8(); p.scale_divisor = 0.0; _core.quantize(X, F32, p, 'w')",
                "scale_divisor",
            ),
            (
                "scale_divisor=nan",
                "p = p8(); p.scale_divisor = float('nan'); _core.quantize(X, F32, p, 'w')",
                "scale_divisor",
            ),
            (
                "minmax qmax=0",
                "p = p8(); p.rule, p.qmin, p.qmax = _core.ScaleRule.MINMAX, 0, 0\n"
                "_core.quantize(X, F32, p, 'w')",
                "qmax",
            ),
            (
                "unknown rule",
                "p = p8(); p.rule = _core.ScaleRule(9)\n_core.quantize(X, F32, p, 'w')",
                "rule",
            ),
            (
                "unknown method",
                "p = p8(); p.method = _core.Method(9)\n_core.quantize(X, F32, p, 'w')",
                "method",
            ),
            ("unknown dtype", "_core.quantize(X, _core.DType(7), p8(), 'w')", "dtype"),
            ("quantize 3-D", "_core.quantize(X[None], F32, p8(), 'w')", "2-D"),
            (
                "quantize big-endian",
                "_core.quantize(X.astype('>f4'), F32, p8(), 'w')",
                "byte order",
            ),
        ]
    )
    deq = "_core.dequantize(CODES, SCALES, ZEROS, {rows}, {cols}, p4(), 'w'{out})"
    add(size_cases("dequantize.rows", deq.format(rows="{v}", cols=64, out=""), r"\brows\b"))
    add(size_cases("dequantize.cols", deq.format(rows=4, cols="{v}", out=""), r"\bcols\b"))
    for label, out in {
        "float64": "np.zeros((4, 64))",
        "float16": "np.zeros((4, 64), np.float16)",
        "int32": "np.zeros((4, 64), np.int32)",
        "big-endian": "np.zeros((4, 64), '>f4')",
        "read-only": "np.zeros((4, 64), np.float32); o.flags.writeable = False",
        "wrong shape": "np.zeros((4, 65), np.float32)",
        "1-D": "np.zeros(256, np.float32)",
        "Fortran order": "np.zeros((4, 64), np.float32, order='F')",
        "strided": "np.zeros((4, 128), np.float32)[:, ::2]",
        "list": "[[0.0] * 64] * 4",
    }.items():
        add(
            [
                (
                    f"dequantize out {label}",
                    f"o = {out}\n" + deq.format(rows=4, cols=64, out=", o"),
                    r"\bout\b",
                )
            ]
        )
    add(
        [
            (
                "dequantize out float32 is filled",
                "o = np.zeros((4, 64), np.float32)\n"
                + deq.format(rows=4, cols=64, out=", o")
                + "\nassert np.array_equal(o, "
                + deq.format(rows=4, cols=64, out="")
                + ")",
                None,
            ),
            (
                "reconstruction_error codes mis-shaped",
                "_core.reconstruction_error(X, F32, CODES[:3], SCALES, ZEROS, p4(), 'w')",
                "codes",
            ),
            ("cast unknown in_type", "_core.cast(X, _core.DType(7), F32, 'x')", "in_type"),
            ("cast unknown out_type", "_core.cast(X, F32, _core.DType(7), 'x')", "out_type"),
            ("cast strided", "_core.cast(X[:, ::2], F32, F32, 'x')", "contiguous"),
            ("force_target unknown", "_core.force_target('NO_SUCH_TARGET')", "target"),
        ]
    )
    add(size_cases("set_num_threads.n", "_core.set_num_threads({v})", r"\bn\b", ok=BAD[2:]))
    # --- py_weight.cc
    wq = "_core.Weight.quantized(CODES, SCALES, ZEROS, {rows}, {cols}, p4(), 'w')"
    add(size_cases("Weight.quantized.rows", wq.format(rows="{v}", cols=64), r"\brows\b"))
    add(size_cases("Weight.quantized.cols", wq.format(rows=4, cols="{v}"), r"\bcols\b"))
    add(size_cases("Weight.row.r", "W.row({v})", r"\brow\b", ok=(0,)))
    floats = "_core.Weight.floats({a}, {f}, 'w')"
    add(
        [
            (
                "Weight.floats unknown format",
                floats.format(a="X", f="_core.WeightFormat(9)"),
                "format",
            ),
            (
                "Weight.floats int32 as F32",
                floats.format(a="X.view(np.int32)", f="_core.WeightFormat.F32"),
                "dtype",
            ),
            ("Weight.floats 3-D", floats.format(a="X[None]", f="_core.WeightFormat.F32"), "2-D"),
            ("Weight.floats empty", floats.format(a="X[:0]", f="_core.WeightFormat.F32"), "empty"),
            (
                "Weight.floats float32 as F16",
                floats.format(a="X", f="_core.WeightFormat.F16"),
                "2-byte",
            ),
            ("Weight.matmul wrong width", "W.matmul(np.zeros((2, 63), np.float32))", "input"),
            ("Weight.matmul 1-D", "W.matmul(np.zeros(64, np.float32))", "input"),
            ("sum_floats float64", "_core.sum_floats(np.zeros(4))", "sum_floats"),
        ]
    )
    # --- py_model.cc
    add(size_cases("Model.context", "model({v})", r"\bcontext\b"))
    add(
        [
            (
                "Model.context=2**59 then forward",
                "model(2**59).forward(np.array([1], np.int32))",
                r"\bcontext\b",
            )
        ]
    )
    for field in ("hidden", "heads", "kv_heads", "head_dim", "vocab"):
        code = f"c, w, v = parts(); c.{field} = {{v}}; _core.Model(c, w, v, 16)"
        add(size_cases(f"ModelConfig.{field}", code, rf"\b{field}\b|config"))
    add(
        size_cases(
            "ModelConfig.experts_per_token",
            "c, w, v = parts(); c.experts_per_token = {v}; _core.Model(c, w, v, 16)",
            "experts_per_token",
            ok=(0, *BAD[2:]),  # a dense model does not read it
        )
    )
    add(
        size_cases(
            "LayerConfig.sliding_window",
            "c, w, v = parts(); c.layers[0].sliding_window = {v}\n"
            "m = _core.Model(c, w, v, 16); m.forward(np.arange(8, dtype=np.int32))",
            "sliding_window",
            ok=(0, *BAD[2:]),  # any window at least 1 is valid
        )
    )
    fwd = "model().forward({ids})"
    add(
        [
            # int64 ids of 2**32 + 1 were forcecast to the valid token 1.
            ("forward id 2**32+1", fwd.format(ids="np.array([2**32 + 1], np.int64)"), "token id"),
            ("forward id -1", fwd.format(ids="np.array([-1], np.int64)"), "token id"),
            (
                "forward id uint64 max",
                fwd.format(ids="np.array([2**64 - 1], np.uint64)"),
                "token id",
            ),
            (
                "forward id big-endian uint64 max",
                fwd.format(ids="np.array([2**64 - 1], '>u8')"),
                "token id",
            ),
            ("forward id big-endian int64", fwd.format(ids="np.array([1, 2], '>i8')"), None),
            ("forward id beyond int64", fwd.format(ids="[2**70]"), "token ids"),
            ("forward float ids", fwd.format(ids="np.array([1.0])"), "token ids"),
            ("forward 2-D ids", fwd.format(ids="np.zeros((1, 2), np.int32)"), "token ids"),
            ("forward no ids", fwd.format(ids="np.zeros(0, np.int32)"), "no tokens"),
            ("forward list", fwd.format(ids="[1, 2]"), None),
            ("forward float list", fwd.format(ids="[1.0]"), "token ids"),
            ("forward past context", "model(4).forward(np.arange(5, dtype=np.int32))", "context"),
            (
                "Model weight of another type",
                "c, w, v = parts(); w['L0.q'] = np.zeros((16, 16)); _core.Model(c, w, v, 16)",
                "L0.q",
            ),
        ]
    )
    add(size_cases("Model.rewind.position", "model().rewind({v})", "position", ok=(0,)))
    # Layer by layer (GPTQ's calibration): hidden states [n, 16] of the one-layer model.
    layers = "m = model(); x = m.embed(np.arange(4, dtype=np.int32)); m.forward_layers(x, {v})"
    add(size_cases("forward_layers.first", layers.format(v="{v}, 1"), "layer", ok=(0,)))
    # last = 0: an empty range of layers, which runs none.
    add(size_cases("forward_layers.last", layers.format(v="0, {v}"), "layer", ok=(0,)))
    add(
        [
            ("embed id past vocab", "model().embed(np.array([40]))", "token id"),
            ("embed no ids", "model().embed(np.zeros(0, np.int32))", None),
            (
                "forward_layers float64",
                layers.format(v="0, 1")
                .replace("x, 0", "x * 1.0, 0")
                .replace("m.forward_layers(x", "m.forward_layers(x.astype(np.float64)"),
                "float32",
            ),
            (
                "forward_layers read-only",
                layers.format(v="0, 1").replace(
                    "m.forward_layers", "x.flags.writeable = False; m.forward_layers"
                ),
                "writeable",
            ),
            (
                "forward_layers wrong width",
                layers.format(v="0, 1").replace(
                    "forward_layers(x", "forward_layers(x[:, :8].copy()"
                ),
                r"\(n, 16\)",
            ),
            ("forward_layers not an array", "model().forward_layers([1.0], 0, 1)", "hidden"),
            # The last layer's outputs to logits: read only, any n.
            ("logits", layers.format(v="0, 1") + "; m.logits(x)", None),
            ("logits none", "model().logits(np.zeros((0, 16), np.float32))", None),
            ("logits float64", "model().logits(np.zeros((2, 16)))", "float32"),
            ("logits wrong width", "model().logits(np.zeros((2, 8), np.float32))", r"\(n, 16\)"),
            ("logits not an array", "model().logits([1.0])", "hidden"),
            (
                "forward_layers past context",
                "m = model(4); m.forward_layers(np.zeros((5, 16), np.float32), 0, 1)",
                "context",
            ),
            (
                "input_gram collected",
                "m = model(); m.collect_input_stats(True, True)\n"
                "m.forward(np.arange(4, dtype=np.int32))\n"
                "assert all(g.shape[0] == g.shape[1] for g, _ in m.input_gram().values())",
                None,
            ),
        ]
    )
    # GPTQ: u must be the [cols, cols] factor with a positive, finite diagonal.
    gptq = "u = np.eye(64, dtype=np.float32); {prep}; _core.gptq({x}, u, p4(), 'w')"
    add(
        [
            ("gptq valid", gptq.format(prep="pass", x="X"), None),
            (
                "gptq u wrong shape",
                gptq.format(prep="u = u[:32, :32].copy()", x="X"),
                "gptq factor",
            ),
            ("gptq u zero diagonal", gptq.format(prep="u[3, 3] = 0", x="X"), "diagonal entry 3"),
            ("gptq u nan", gptq.format(prep="u[2, 9] = np.nan", x="X"), "NaN"),
            ("gptq float64 x", gptq.format(prep="pass", x="X.astype(np.float64)"), "w"),
            ("gptq 1-D x", gptq.format(prep="pass", x="X[0]"), "2-D"),
            (
                "gptq inf x",
                gptq.format(prep="Y = X.copy(); Y[1, 5] = np.inf", x="Y"),
                "row 1, column 5",
            ),
            (
                "gptq importance wrong length",
                "_core.gptq(X, np.eye(64, dtype=np.float32), p4(), 'w', np.ones(3, np.float32))",
                "importance",
            ),
        ]
    )
    int32 = (0, 2**31 - 1)
    add(size_cases("WeightKey.layer", "_core.WeightKey(_core.Tensor.Q, {v})", r"\blayer\b", int32))
    expert = "_core.WeightKey(_core.Tensor.EXPERT_UP, 0, {v})"
    add(size_cases("WeightKey.expert", expert, r"\bexpert\b", ok=int32))
    parts_keyed = "c, w, v = parts(); w = {_core.WeightKey.parse(k): x for k, x in w.items()}"
    add(
        [
            ("WeightKey unknown tensor", "_core.WeightKey(_core.Tensor(99), 0)", "tensor"),
            ("WeightKey.parse unknown", "_core.WeightKey.parse('L3.x')", r"L3\.x"),
            ("WeightKey.parse huge layer", "_core.WeightKey.parse('L4294967296.q')", "L4294967296"),
            ("WeightKey.parse not a str", "_core.WeightKey.parse(3)", "parse"),
            (
                "WeightKey __eq__ __hash__ __repr__ __str__",
                "k = _core.WeightKey(_core.Tensor.Q, 3)\n"
                "assert k == _core.WeightKey.parse('L3.q') and k != 'L3.q'\n"
                "assert hash(k) == hash(_core.WeightKey.parse('L3.q'))\n"
                "assert str(k) == 'L3.q' and repr(k) == \"WeightKey('L3.q')\"",
                None,
            ),
            ("Model keyed by WeightKey", parts_keyed + "; _core.Model(c, w, v, 16)", None),
            (
                "Model key of another type",
                "c, w, v = parts(); w[3] = w.pop('L0.q'); _core.Model(c, w, v, 16)",
                "weight keys",
            ),
            (
                "Model key unknown",
                "c, w, v = parts(); w['L0.x'] = w['L0.q']; _core.Model(c, w, v, 16)",
                r"L0\.x",
            ),
            (
                "Model weight missing",
                parts_keyed + "; del w[_core.WeightKey.parse('L0.q')]; _core.Model(c, w, v, 16)",
                r"L0\.q: weight is missing",
            ),
        ]
    )
    # --- py_moe.cc
    add(size_cases("gaussian_noise.n", "_core.gaussian_noise({v}, 0, 0)", r"\bn\b", ok=(0,)))
    big = (-1, 2**64, 2**70)
    add(size_cases("gaussian_noise.seed", "_core.gaussian_noise(4, {v}, 0)", "seed", values=big))
    add(
        size_cases("gaussian_noise.stream", "_core.gaussian_noise(4, 0, {v})", "stream", values=big)
    )
    noise = "_core.add_gaussian_noise({x}, {sigma}, {seed}, 0, 'x')"
    add(
        size_cases(
            "add_gaussian_noise.seed",
            noise.format(x="X.copy()", sigma=0.1, seed="{v}"),
            "seed",
            values=big,
        )
    )
    add(
        [
            (
                "add_gaussian_noise read-only",
                "x = X.copy(); x.flags.writeable = False\n"
                + noise.format(x="x", sigma=0.1, seed=0),
                "read-only",
            ),
            (
                "add_gaussian_noise float64",
                noise.format(x="X.astype(np.float64)", sigma=0.1, seed=0),
                "float32",
            ),
            (
                "add_gaussian_noise sigma nan",
                noise.format(x="X.copy()", sigma="float('nan')", seed=0),
                "sigma",
            ),
        ]
    )
    km = "_core.balanced_kmeans(FEATURES, {k}, {iters}, 0, 'f')"
    add(size_cases("balanced_kmeans.k", km.format(k="{v}", iters=5), r"\bk\b"))
    add(size_cases("balanced_kmeans.iters", km.format(k=2, iters="{v}"), "iters", ok=(0,)))
    add(
        size_cases(
            "balanced_kmeans.seed",
            "_core.balanced_kmeans(FEATURES, 2, 5, {v}, 'f')",
            "seed",
            values=big,
        )
    )
    add(
        [
            (
                "balanced_kmeans float64",
                "_core.balanced_kmeans(FEATURES.astype(np.float64), 2, 5, 0, 'f')",
                "float32",
            )
        ]
    )
    rf = "_core.refine_for_top_k(ENERGY, {labels}, {k}, {top_k}, {iters}, 'f')"
    add(
        size_cases(
            "refine_for_top_k.k", rf.format(labels="LABELS", k="{v}", top_k=1, iters=5), r"\bk\b"
        )
    )
    add(
        size_cases(
            "refine_for_top_k.top_k", rf.format(labels="LABELS", k=2, top_k="{v}", iters=5), "top_k"
        )
    )
    add(
        size_cases(
            "refine_for_top_k.iters",
            rf.format(labels="LABELS", k=2, top_k=1, iters="{v}"),
            "iters",
            ok=(0,),
        )
    )
    for label, labels in {
        # int64 labels >= 2**32 were forcecast to int32: 2**32 + 1 became 1.
        "int64 2**32 + 1": "LABELS.astype(np.int64) + np.int64(2**32) * (LABELS == 1)",
        "uint64 max": "np.where(LABELS == 1, np.uint64(2**64 - 1), np.uint64(0))",
        "-1": "LABELS.astype(np.int64) - 1",
        "float": "LABELS.astype(np.float32)",
        "bool": "LABELS.astype(bool)",
        "wrong length": "LABELS[:6]",
        "unbalanced": "np.zeros(8, np.int32)",
        "float list": "[0.0] * 4 + [1.0] * 4",
    }.items():
        add(
            [
                (
                    f"refine_for_top_k labels {label}",
                    rf.format(labels=labels, k=2, top_k=1, iters=5),
                    "labels",
                )
            ]
        )
    for label, labels in {"int64": "LABELS.astype(np.int64)", "list": "LABELS.tolist()"}.items():
        add(
            [
                (
                    f"refine_for_top_k labels {label} valid",
                    rf.format(labels=labels, k=2, top_k=1, iters=5),
                    None,
                )
            ]
        )
    return cases


CASES = all_cases()


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def run_cases(cases: list[tuple[str, str]]) -> dict[str, tuple]:
    """Runs cases in children: {id: ("raised", type, message) | ("returned",)
    | ("crashed", how)}. A crash ends its child; the rest run in a new one."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    results: dict[str, tuple] = {}
    todo = list(cases)
    while todo:
        try:
            proc = subprocess.run(
                [sys.executable, "-c", f"SETUP = {SETUP!r}\n{RUNNER}"],
                input=json.dumps(todo),
                capture_output=True,
                text=True,
                env=env,
                preexec_fn=_limit_memory,
                timeout=CHILD_TIMEOUT,
                check=False,
            )
            stdout, stderr, status = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:  # a hang: its case fails
            out = e.stdout or ""
            stdout = out.decode() if isinstance(out, bytes) else out
            stderr, status = f"no answer in {CHILD_TIMEOUT} s", None
        started = None
        for line in stdout.splitlines():
            event = json.loads(line)
            if event[0] == "start":
                started = event[1]
            else:
                results[event[1]] = (event[0], *event[2:])
                started = None
        if status == 0:
            break
        if started is None:  # the setup itself failed
            raise AssertionError(f"child failed before any case:\n{stderr}")
        results[started] = ("crashed", f"exit status {status}: {stderr.strip()[-300:]}")
        todo = [c for c in todo if c[0] not in results]
    return results


@pytest.fixture(scope="module")
def results() -> dict[str, tuple]:
    return run_cases([(case_id, code) for case_id, code, _ in CASES])


@pytest.mark.parametrize(("case_id", "code", "name"), CASES, ids=[c[0] for c in CASES])
def test_binding_refuses_bad_argument(results, case_id, code, name):
    got = results[case_id]
    assert got[0] != "crashed", f"{case_id} crashed the process ({got[1]})"
    if name is None:
        assert got == ("returned",), f"{case_id}: a valid call raised {got}"
        return
    assert got[0] == "raised", f"{case_id}: accepted, should raise an error naming {name!r}"
    kind, message = got[1], got[2]
    assert kind in {"ValueError", "TypeError", "IndexError", "MemoryError"}, got
    assert re.search(name, message), f"{case_id}: {kind}({message!r}) does not name {name!r}"


# How src/bindings/*.cc names what it binds: functions, methods, properties,
# IntField properties and the ModelConfig size fields.
BINDING_PATTERNS = (
    re.compile(r'\.def(?:_static|_property|_property_readonly)?\(\s*"(\w+)"'),
    re.compile(r'IntField\(\w+, "\w+", "(\w+)"'),
    re.compile(r'std::pair\{"(\w+)", &'),
)
# Bindings without a size, count, range or output array to feed.
NO_SIZE_ARGUMENTS = {
    "num_threads",
    "max_threads",
    "available_targets",
    "dispatched_target",
    "upcycle_target",
    "shape",
    "position",
    "context",
    "name",
    "collect_input_stats",  # a bool: on or off
    "input_stats",  # no arguments
    "input_gram",  # no arguments
}


def _binding_names() -> set[str]:
    names: set[str] = set()
    for path in sorted((ROOT / "src" / "bindings").glob("*.cc")):
        text = path.read_text()
        for pattern in BINDING_PATTERNS:
            names.update(pattern.findall(text))
    return names


def test_every_binding_is_covered():
    """Enumerated from the sources, so that a new binding needs its cases."""
    names = _binding_names()
    assert {"row_bytes", "dequantize", "refine_for_top_k", "forward", "hidden"} <= names
    ids = [case_id for case_id, _, _ in CASES]
    missing = {
        n for n in names - NO_SIZE_ARGUMENTS if not any(re.search(rf"\b{n}\b", i) for i in ids)
    }
    assert not missing, f"bindings with no case in this file: {sorted(missing)}"


def test_max_context_is_the_cores():
    assert runtime.MAX_CONTEXT == _core.MAX_CONTEXT == 2**24


# ------------------------------------------------------------ Python callers


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("native-limits") / "model"
    lowbit.convert(tiny_checkpoint("llama"), out, preset="q8", progress=False)
    return out


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "64", 2**24 + 1, 2**59, 2**63 - 1])
def test_load_refuses_context_length(model_dir, value):
    with pytest.raises(ArgumentError, match="context_length"):
        lowbit.load(model_dir, context_length=value)


def test_load_refuses_a_kv_cache_larger_than_memory(model_dir, monkeypatch):
    monkeypatch.setattr(runtime, "physical_memory", lambda: 1 << 10)
    with pytest.raises(ArgumentError, match=r"context_length=4096: .* KV cache .* memory"):
        lowbit.load(model_dir, context_length=4096)
    # int8 is about 4 times smaller, but still more than 1 KiB here.
    with pytest.raises(ArgumentError, match="context_length=4096"):
        lowbit.load(model_dir, context_length=4096, kv_cache="int8")


def test_kv_cache_bytes_match_the_core_layout():
    m = {"num_layers": 3, "num_kv_heads": 2, "head_dim": 8}
    assert runtime.kv_cache_bytes(m, 10) == 2 * 3 * 2 * 10 * 8 * 4
    assert runtime.kv_cache_bytes(m, 10, int8=True) == 2 * 3 * 2 * 10 * (8 + 4)


def _child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        preexec_fn=_limit_memory,
        timeout=300,
        check=False,
    )


def test_load_context_2_59_then_forward_is_a_clean_error(model_dir):
    """The reproducer: this was a SIGSEGV in the forward pass."""
    proc = _child(
        "import lowbit\n"
        "from lowbit.util.errors import ArgumentError\n"
        "try:\n"
        f"    lowbit.load({str(model_dir)!r}, context_length=2**59).forward([1, 2])\n"
        "except ArgumentError as e:\n"
        "    print('ArgumentError', e)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ArgumentError")
    assert "context_length" in proc.stdout


def test_cli_generate_with_a_huge_context_exits_2(model_dir):
    """The reproducer: this was an abort in free()."""
    proc = _child(
        "import sys\nfrom lowbit.cli import main\n"
        f"sys.exit(main(['generate', {str(model_dir)!r}, '--prompt-ids', '1,2', '-n', '2', "
        "'--context', '576460752303423488']))"
    )
    assert proc.returncode == 2, proc.stderr
    assert "--context" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["generate", "inspect"])
def test_cli_context_flags_have_an_upper_bound(model_dir, command, capsys):
    from lowbit.cli import main

    args = [command, str(model_dir), "--context", str(2**24 + 1)]
    if command == "generate":
        args += ["--prompt-ids", "1"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "--context" in capsys.readouterr().err


def test_load_at_a_sane_context_still_runs(model_dir):
    m = lowbit.load(model_dir, context_length=64)
    assert m.context_length == 64
    assert m.forward([1, 2, 3]).shape[0] == 3


def test_bench_lengths_have_an_upper_bound(model_dir):
    from lowbit.runtime.bench import run_bench

    with pytest.raises(ArgumentError, match="prompt_tokens"):
        run_bench(model_dir, prompt_tokens=2**62, gen_tokens=1, repetitions=1)


def test_physical_memory_is_known_on_linux():
    if sys.platform.startswith("linux"):
        assert (runtime.physical_memory() or 0) > 1 << 20


@pytest.mark.parametrize("value", [-1, 10**6, True, 1.5])
def test_forward_start_is_checked_first(model_dir, value):
    m = lowbit.load(model_dir, context_length=16)
    m.forward([1, 2])
    with pytest.raises(ArgumentError, match="start"):
        m.forward([3], start=value)


@pytest.mark.parametrize("value", [0, -1, 2**31, True, "2"])
def test_set_num_threads_names_n(value):
    before = lowbit.num_threads()
    with pytest.raises(ArgumentError, match=r"\bn\b"):
        lowbit.set_num_threads(value)
    assert lowbit.num_threads() == before


@pytest.mark.parametrize("scheme", ["int4", "f16"])
@pytest.mark.parametrize(
    "out",
    [
        np.zeros((8, 64)),
        np.zeros((8, 64), ">f4"),
        np.zeros((8, 65), np.float32),
        np.zeros((8, 128), np.float32)[:, ::2],
        np.zeros((8, 64), np.float32, order="F"),
        [[0.0] * 64] * 8,
    ],
    ids=["float64", "big-endian", "shape", "strided", "fortran", "list"],
)
def test_quantized_tensor_dequantize_refuses_an_out_it_cannot_fill(scheme, out):
    qt = lowbit.quantize(np.ones((8, 64), np.float32), scheme)
    with pytest.raises(ArgumentError, match="out"):
        qt.dequantize(out=out)


def test_quantized_tensor_dequantize_fills_a_good_out():
    qt = lowbit.quantize(np.ones((8, 64), np.float32), "int4")
    out = np.zeros((8, 64), np.float32)
    assert qt.dequantize(out=out) is out
    np.testing.assert_array_equal(out, qt.dequantize())
