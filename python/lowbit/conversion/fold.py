"""Per-input-channel scales folded into the operation before a matrix (AWQ, SINQ).

A matrix W that reads x can be stored as W diag(s) when its input arrives as
x / s: the product is the same. Where x comes from an RMSNorm the division
goes into the norm's weight (n / s; Gemma's (1 + n) / s - 1); where it comes
from another matrix's rows (o reads v's rows through attention's weighted
sums; down reads up's rows through the gated activation, which is linear in
up) those rows, and their bias, are divided instead. The folded model is
exactly the original in real arithmetic, so the runtime and every export run
it as they run any model; only quantization sees different matrices: columns
with a large s are kept more precisely (AWQ, by measured activations), or
every column is balanced (SINQ, by the weights alone).

A site is one such input: the matrices reading it (its readers) and where
its 1 / s goes. Per layer: the attention input (q, k, v; the attention
norm), the FFN input (gate, up, the router and every expert's gate and up,
the shared expert's; the FFN norm), o's input (v's rows; the query heads of
one kv head read the same v rows, so their scales are tied), down's input
(up's rows; per expert, and the shared expert's). Fused 3-D expert stacks'
down inputs are not folded.

The scales are saved with the model (``FOLD_FILE``: one float32 vector per
site); ``lowbit validate`` divides them back out before comparing a weight
with the float checkpoint's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lowbit.formats.safetensors import Checkpoint, CheckpointError, StreamingWriter, TensorSpec
from lowbit.models.families import family_of
from lowbit.models.tensors import match
from lowbit.util.errors import LowbitError

FOLD_FILE = "lowbit-fold.safetensors"
FOLD_METHODS = ("none", "awq", "sinq")


class FoldError(LowbitError):
    """A fold record that does not fit the model it came with."""


@dataclass(frozen=True)
class Site:
    """One folded input: ``readers`` (columns times s), ``norm`` (divided by
    s), ``producers`` and ``biases`` (rows divided by the scale of the row
    they make). ``tie``: (query heads per kv head, head dim) when the input
    is o's, whose columns of one kv head's query heads share a v row."""

    name: str
    readers: tuple[str, ...]
    norm: str | None = None
    producers: tuple[str, ...] = ()
    biases: tuple[str, ...] = ()
    tie: tuple[int, int] | None = None

    def tied(self, s: np.ndarray) -> np.ndarray:
        """``s`` over the readers' columns with the tie applied: the mean (in
        log space) of each kv head's query heads, repeated."""
        if self.tie is None:
            return s
        group, head_dim = self.tie
        per_row = np.exp(np.log(s).reshape(-1, group, head_dim).mean(axis=1))
        return np.repeat(per_row[:, None, :], group, axis=1).reshape(-1)

    def row_scale(self, s: np.ndarray) -> np.ndarray:
        """The scale of each producer row: a kv row's for o's input."""
        if self.tie is None:
            return s
        group, head_dim = self.tie
        return s.reshape(-1, group, head_dim)[:, 0, :].reshape(-1)

    def role(self, name: str) -> str | None:
        """What this site does to tensor ``name``: "columns", "rows", "bias",
        "norm", or None."""
        if name in self.readers:
            return "columns"
        if name in self.producers:
            return "rows"
        if name in self.biases:
            return "bias"
        return "norm" if name == self.norm else None

    @property
    def tensors(self) -> tuple[str, ...]:
        """Every tensor this site changes."""
        return (*self.readers, *self.producers, *self.biases, *((self.norm,) if self.norm else ()))

    def transform(
        self, name: str, x: np.ndarray, s: np.ndarray, plus_one: bool, inverse: bool = False
    ) -> np.ndarray:
        """Tensor ``name`` with scales ``s`` folded in (``inverse``: out)."""
        out = np.asarray(x, np.float32)
        how = self.role(name)
        if how == "columns":
            return out / s if inverse else out * s
        if how in ("rows", "bias"):
            r = self.row_scale(s)
            r = r if how == "bias" else r.reshape(-1, *([1] * (out.ndim - 1)))
            return out * r if inverse else out / r
        if how == "norm" and plus_one:
            return (1 + out) * s - 1 if inverse else (1 + out) / s - 1
        if how == "norm":
            return out * s if inverse else out / s
        return out


def sites(names: Iterable[str], config: Mapping) -> list[Site]:
    """Every site of the model whose checkpoint has the tensors ``names``."""
    family = family_of(dict(config))
    by_layer: dict[int, dict[str, list[tuple[int | None, str]]]] = {}
    for name in names:
        m = match(name)
        if m is None or m.layer is None:
            continue
        slot = m.kind.slot
        if family.post_norms and m.kind.post_norm_slot:
            slot = m.kind.post_norm_slot
        key = slot or m.kind.name
        by_layer.setdefault(m.layer, {}).setdefault(key, []).append((m.expert, name))
    heads = int(config.get("num_attention_heads") or 0)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    hidden = int(config.get("hidden_size") or 0)
    head_dim = int(config.get("head_dim") or (hidden // heads if heads else 0))
    out = []
    for layer in sorted(by_layer):
        t = by_layer[layer]

        def one(key: str, t: dict = t) -> str | None:
            found = t.get(key, [])
            return found[0][1] if len(found) == 1 else None

        def every(*keys: str, t: dict = t) -> tuple[str, ...]:
            return tuple(n for k in keys for _, n in sorted(t.get(k, []), key=_by_expert))

        p = f"L{layer}."
        attn = every("Q", "K", "V")
        if len(attn) == 3 and one("ATTN_NORM"):
            out.append(Site(p + "attn", attn, one("ATTN_NORM")))
        ffn = every(
            "GATE", "UP", "ROUTER", "EXPERT_GATE", "EXPERT_UP", "experts_gate_up",
            "SHARED_GATE", "SHARED_UP", "SHARED_ROUTER",
        )  # fmt: skip
        if ffn and one("FFN_NORM"):
            out.append(Site(p + "ffn", ffn, one("FFN_NORM")))
        o, v = one("O"), one("V")
        if o and v and heads and kv_heads and heads % kv_heads == 0:
            bias = (one("V_BIAS"),) if one("V_BIAS") else ()
            tie = (heads // kv_heads, head_dim)
            out.append(Site(p + "o", (o,), producers=(v,), biases=bias, tie=tie))
        if one("DOWN") and one("UP"):
            out.append(Site(p + "down", (one("DOWN"),), producers=(one("UP"),)))
        ups = dict(t.get("EXPERT_UP", []))
        for e, down in sorted(t.get("EXPERT_DOWN", []), key=_by_expert):
            if e in ups:
                out.append(Site(f"{p}E{e}.down", (down,), producers=(ups[e],)))
        if one("SHARED_DOWN") and one("SHARED_UP"):
            out.append(
                Site(p + "shared_down", (one("SHARED_DOWN"),), producers=(one("SHARED_UP"),))
            )
    return out


# Sinkhorn rounds of SINQ's balancing: the scales change by under 1% after
# about ten on SmolLM2-135M's matrices.
SINQ_ROUNDS = 16


def sinq_scales(site: Site, ck: Checkpoint, rounds: int = SINQ_ROUNDS) -> np.ndarray:
    """SINQ's column scales (Mueller et al., 2025) for ``site``, by the weights
    alone: the readers' rows stacked as one matrix M, each round divides M's
    columns, then its rows, by their standard deviations; s is the product of
    the column divisors, inverted (folding multiplies columns by s) and
    scaled to geometric mean 1, then tied. The site's matrices are held in
    float32 (a dense FFN's gate and up of a 7B model: 360 MB)."""
    m = np.concatenate(
        [ck.get_float(n).reshape(-1, ck.info(n).shape[-1]) for n in site.readers]
    ).astype(np.float32)
    c = np.ones(m.shape[1], np.float32)
    r = np.ones(m.shape[0], np.float32)
    for _ in range(rounds):
        b = m / r[:, None] / c[None, :]
        c *= b.std(axis=0, dtype=np.float64).astype(np.float32) + np.float32(1e-12)
        b = m / r[:, None] / c[None, :]
        r *= b.std(axis=1, dtype=np.float64).astype(np.float32) + np.float32(1e-12)
    s = 1.0 / c.astype(np.float64)
    return site.tied(s / np.exp(np.log(s).mean())).astype(np.float32)


def sinq_fold(ck: Checkpoint, config: Mapping) -> Fold:
    """SINQ's scales for every site of checkpoint ``ck``."""
    fold = Fold("sinq", family_of(dict(config)).norm_plus_one)
    for site in sites({n: ck.info(n).shape for n in ck.names()}, config):
        fold.add(site, sinq_scales(site, ck))
    return fold


def _by_expert(item: tuple[int | None, str]) -> int:
    return -1 if item[0] is None else item[0]


@dataclass
class Fold:
    """Scales per site, and what they do to each tensor."""

    method: str
    plus_one: bool  # the family's norms act as (1 + n)
    scales: dict[str, np.ndarray] = field(default_factory=dict)  # site name -> s
    # tensor name -> the sites that change it
    _uses: dict[str, list[Site]] = field(default_factory=dict)

    def add(self, site: Site, s: np.ndarray) -> None:
        s = np.asarray(s, np.float64)
        if not np.all(np.isfinite(s)) or not np.all(s > 0):
            raise FoldError(f"{site.name}: scales must be positive and finite")
        self.scales[site.name] = s.astype(np.float32)
        for n in site.tensors:
            self._uses.setdefault(n, []).append(site)

    def __contains__(self, name: str) -> bool:
        return name in self._uses

    def apply(self, name: str, x: np.ndarray) -> np.ndarray:
        """Tensor ``name`` of the checkpoint as the folded model has it."""
        return self._transform(name, x, inverse=False)

    def undo(self, name: str, x: np.ndarray) -> np.ndarray:
        """The inverse of ``apply``: a stored tensor back in the checkpoint's terms."""
        return self._transform(name, x, inverse=True)

    def column_scale(self, name: str) -> np.ndarray | None:
        """The s that multiplies the columns of reader ``name`` (None: none)."""
        for site in self._uses.get(name, []):
            if site.role(name) == "columns":
                return self.scales[site.name]
        return None

    def _transform(self, name: str, x: np.ndarray, inverse: bool) -> np.ndarray:
        out = np.asarray(x, np.float32)
        for site in self._uses.get(name, []):
            s = self.scales[site.name]
            out = site.transform(name, out, s, self.plus_one, inverse)
        return out.astype(np.float32)

    def save(self, path: Path) -> None:
        """One float32 vector per site, by its name (written atomically by the
        caller's output directory)."""
        items = sorted(self.scales.items())
        specs = [TensorSpec(n, np.dtype(np.float32), v.shape) for n, v in items]
        with StreamingWriter(path, specs, {"what": "lowbit fold", "method": self.method}) as w:
            for n, v in items:
                w.write(n, v)


def read_fold(
    path: Path, method: str, shapes: Mapping[str, tuple[int, ...]], config: Mapping
) -> Fold:
    """The fold record saved with a model (``FOLD_FILE``) of the tensors
    ``shapes``, checked against its sites: FoldError naming the file and the
    site otherwise."""
    if method not in FOLD_METHODS:
        raise FoldError(f"{path}: unknown fold method {method!r}")
    try:
        ck = Checkpoint(path)
        vectors = {n: ck.get(n) for n in ck.names()}
    except CheckpointError as e:
        raise FoldError(str(e)) from None
    fold = Fold(method, family_of(dict(config)).norm_plus_one)
    known = {s.name: s for s in sites(shapes, config)}
    for name, v in vectors.items():
        site = known.get(name)
        if site is None:
            raise FoldError(f"{path}: {name}: no such site in this model")
        cols = shapes[site.readers[0]][-1]
        if v.dtype != np.float32 or v.shape != (cols,):
            raise FoldError(f"{path}: {name}: expected float32 [{cols}], got {v.dtype} {v.shape}")
        try:
            fold.add(site, v)
        except FoldError as e:
            raise FoldError(f"{path}: {e}") from None
    return fold


__all__ = [
    "FOLD_FILE",
    "FOLD_METHODS",
    "Fold",
    "FoldError",
    "Site",
    "read_fold",
    "sinq_fold",
    "sinq_scales",
    "sites",
]
