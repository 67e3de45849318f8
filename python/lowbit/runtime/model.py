"""Running a converted model on the CPU: ``lowbit.load(dir)``, forward, generate.

The weights stay where they are: each stored tensor is memory-mapped from the
directory's safetensors files and handed to the C++ core as it is stored
(quantized codes, or float16/bfloat16/float32 values), never copied to
float32. Only the small vectors (norms, biases) are read into memory.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lowbit import _core
from lowbit.formats.inspect_model import inspect_model, kv_cache_bytes
from lowbit.formats.layout import stored_tensor
from lowbit.formats.manifest import WeightEntry
from lowbit.formats.manifest import read as read_manifest
from lowbit.formats.npz import NPZ_FORMAT_VERSION
from lowbit.formats.safetensors import Checkpoint, CheckpointError, refuse_custom_code
from lowbit.models.config import check_layers, read_config
from lowbit.models.families import family_of
from lowbit.models.tokenizer import TOKENIZER_FILE, Tokenizer, TokenizerError
from lowbit.quant.dtypes import cast
from lowbit.quant.quantize import QuantizedTensor
from lowbit.runtime.config import CoreTensor, core_config, core_tensor, norm_plus_one
from lowbit.runtime.sampling import SamplingParams, sample
from lowbit.util.errors import (
    ArgumentError,
    ArgumentTypeError,
    LowbitError,
    check_argument,
    check_int,
)
from lowbit.util.outdir import side_files

# Default KV cache length when none is asked for: the model's own context,
# capped so that a 128k-context model does not reserve gigabytes up front.
DEFAULT_CONTEXT = 4096
KV_CACHE_TYPES = ("f32", "int8")
# Most KV cache positions: rotary angles take the position as a float32,
# exact up to 2^24 (the core refuses more too).
MAX_CONTEXT: int = _core.MAX_CONTEXT


class ModelLoadError(LowbitError):
    """A model directory that cannot be run: names the file or tensor."""


@dataclass
class Generation:
    """What ``Model.generate`` produced, with its timings."""

    prompt_tokens: list[int]
    tokens: list[int] = field(default_factory=list)
    text: str | None = None
    finish_reason: str = "length"  # "length" or "eos"
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    seed: int | None = None

    @property
    def prefill_tokens_per_second(self) -> float:
        return len(self.prompt_tokens) / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        # The first new token comes from the prefill's logits.
        steps = max(len(self.tokens) - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds else 0.0


def load(
    model_dir: str | Path,
    context_length: int | None = None,
    kv_cache: str = "f32",
    verify: bool = False,
) -> Model:
    """Open a converted model directory for inference.

    ``context_length``: KV cache positions (default: the model's context,
    at most 4096). ``kv_cache``: ``f32`` or ``int8``. ``verify``: also check
    every file's SHA-256 against the manifest (reads all weights once).
    """
    return Model(Path(model_dir), context_length, kv_cache, verify)


class Model:
    """A converted model, ready to run. See ``load``."""

    def __init__(self, path: Path, context_length: int | None, kv_cache: str, verify: bool) -> None:
        if kv_cache not in KV_CACHE_TYPES:
            raise ArgumentError(
                f"kv_cache must be one of {', '.join(KV_CACHE_TYPES)}, got {kv_cache!r}"
            )
        if not path.is_dir():
            raise ModelLoadError(f"{path}: no such model directory")
        self.path = path
        refuse_custom_code(path)
        side_files(path)  # config and tokenizer files: no symlink out of the directory
        self._manifest = read_manifest(path)
        self.manifest = self._manifest.document
        if self._manifest.format_version == NPZ_FORMAT_VERSION:
            raise ModelLoadError(
                f"{path}: the NPZ layout is for exchange; convert with --format lowbit to run it"
            )
        report = inspect_model(path, verify=verify)
        if not report.ok:
            raise ModelLoadError(f"{path}: " + "; ".join(report.problems))
        config_file = path / "config.json"
        self.config = read_config(config_file)
        check_layers(self.config, (w.name for w in self._manifest.weights), config_file)
        self.family = family_of(self.config).name
        model_ctx = int(self.manifest["model"]["context_length"])
        if context_length is None:
            ctx = max(1, min(model_ctx, DEFAULT_CONTEXT))
        else:
            ctx = check_context(context_length)
        check_kv_cache_fits(self.manifest["model"], ctx, kv_cache)
        weights, vectors = self._read_weights()
        try:
            self._core = _core.Model(
                core_config(self.config), weights, vectors, ctx, kv_cache == "int8"
            )
        except LowbitError:
            raise
        except ValueError as e:
            # The core checks the weights against the config (a tensor the
            # layers need and the manifest does not list, a wrong size).
            raise ModelLoadError(f"{path}: {e}") from None
        self.context_length = ctx
        self.kv_cache = kv_cache
        self.vocab_size = int(self.config["vocab_size"])
        self.tokenizer = Tokenizer(path) if (path / TOKENIZER_FILE).is_file() else None
        self.eos_token_ids = _eos_ids(path, self.config)

    def _read_weights(
        self,
    ) -> tuple[dict[_core.WeightKey, _core.Weight], dict[_core.WeightKey, np.ndarray]]:
        try:
            # Only the files the manifest lists (and inspect checked), never
            # the index: what --verify hashed is all that is read.
            ck = Checkpoint(self.path, files=[f.name for f in self._manifest.files])
        except CheckpointError as e:
            raise ModelLoadError(str(e)) from None
        weights: dict[_core.WeightKey, _core.Weight] = {}
        vectors: dict[_core.WeightKey, np.ndarray] = {}
        plus_one = norm_plus_one(self.family)
        for w in self._manifest.weights:
            place = core_tensor(w.name, self.family)
            if place is None:
                continue
            try:
                self._read_weight(ck, w, place, plus_one, weights, vectors)
            except LowbitError:
                raise
            except ValueError as e:
                # The core's checks of stored data (NaN or Inf in a vector,
                # codes that do not fit the shape): bad input, from this file.
                raise ModelLoadError(f"{self.path / w.stored.file}: {e}") from None
        return weights, vectors

    @staticmethod
    def _read_weight(
        ck: Checkpoint,
        w: WeightEntry,
        place: CoreTensor,
        plus_one: bool,
        weights: dict[_core.WeightKey, _core.Weight],
        vectors: dict[_core.WeightKey, np.ndarray],
    ) -> None:
        name, shape = w.name, w.shape
        if len(shape) == 1:
            v = cast(ck.get(w.stored.values), np.float32, name)
            if plus_one and place.kind.is_norm:
                v = (np.float32(1.0) + v).astype(np.float32)
            if place.key is not None:  # (a 1-D fused stack: nothing the core reads)
                vectors[place.key] = v
            return
        qt = stored_tensor(ck, w)
        if len(shape) == 3 and place.key is None:
            _split_experts(place, qt, shape, weights)
        elif place.key is not None:
            weights[place.key] = qt.weight(name)

    # ------------------------------------------------------------ running

    def forward(self, token_ids: Sequence[int] | np.ndarray, start: int = 0) -> np.ndarray:
        """Logits float32 ``[n, vocab]`` for ``token_ids``, placed at positions
        ``start ..``; the cache keeps positions before ``start`` from earlier
        calls (``start=0``: a fresh sequence)."""
        ids = self._ids(token_ids)
        start = check_argument(start, "start", 0, self._core.position)
        self._core.rewind(start)
        return self._core.forward(ids, True)

    def _last_logits(self, ids: np.ndarray, start: int) -> np.ndarray:
        self._core.rewind(start)
        return self._core.forward(ids, False)[0]

    def _ids(self, token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or ids.size == 0:
            raise ArgumentError(
                f"token ids must be a non-empty 1-D sequence, got shape {ids.shape}"
            )
        if not np.issubdtype(ids.dtype, np.integer):
            raise ArgumentTypeError(f"token ids must be integers, got {ids.dtype}")
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            i = int(np.argmax(bad))
            raise ArgumentError(
                f"token id {int(ids[i])} at index {i} is outside the vocabulary "
                f"[0, {self.vocab_size})"
            )
        return ids.astype(np.int32)

    def encode_prompt(self, prompt: str | Sequence[int], chat: bool = False) -> list[int]:
        """Token ids of a prompt: a string (tokenized, optionally through the
        chat template) or token ids as they are."""
        if not isinstance(prompt, str):
            if chat:
                raise ArgumentError("chat needs a text prompt, not token ids")
            return [int(t) for t in self._ids(list(prompt))]
        if self.tokenizer is None:
            raise TokenizerError(f"{self.path}: no {TOKENIZER_FILE}; give the prompt as token ids")
        if chat:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
            return self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.encode(prompt)

    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        chat: bool = False,
        stop_at_eos: bool = True,
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """Generate up to ``max_new_tokens`` after ``prompt``.

        Greedy when ``temperature`` is 0; otherwise sampled with top-k/top-p
        from a generator seeded with ``seed`` (the same seed, the same tokens).
        Stops at the generation config's EOS tokens. ``on_text`` receives the
        text as it is produced (streaming).
        """
        result = Generation(prompt_tokens=self.encode_prompt(prompt, chat))
        for _ in self._generate(
            result,
            max_new_tokens,
            SamplingParams(temperature, top_k, top_p),
            seed,
            stop_at_eos,
            on_text,
        ):
            pass
        return result

    def stream(self, prompt: str | Sequence[int], **kwargs: Any) -> Iterator[int]:
        """Like ``generate``, yielding each new token id as it is produced."""
        chat = kwargs.pop("chat", False)
        result = Generation(prompt_tokens=self.encode_prompt(prompt, chat))
        sampling = SamplingParams(
            kwargs.pop("temperature", 0.0), kwargs.pop("top_k", 0), kwargs.pop("top_p", 1.0)
        )
        yield from self._generate(
            result,
            kwargs.pop("max_new_tokens", 64),
            sampling,
            kwargs.pop("seed", None),
            kwargs.pop("stop_at_eos", True),
            kwargs.pop("on_text", None),
        )

    def _generate(
        self,
        result: Generation,
        max_new_tokens: int,
        sampling: SamplingParams,
        seed: int | None,
        stop_at_eos: bool,
        on_text: Callable[[str], None] | None,
    ) -> Iterator[int]:
        if max_new_tokens < 0:
            raise ArgumentError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        prompt = result.prompt_tokens
        if not prompt:
            raise ArgumentError("the prompt is empty (no tokens)")
        needed = len(prompt) + max(max_new_tokens - 1, 0)
        if needed > self.context_length:
            raise ArgumentError(
                f"prompt ({len(prompt)} tokens) + {max_new_tokens} new tokens exceed the context "
                f"of {self.context_length}; load with a larger context_length"
            )
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (1 << 63))
        result.seed = seed
        rng = np.random.default_rng(seed)
        if max_new_tokens == 0:
            result.text = self._decode(result.tokens)
            return
        t0 = time.perf_counter()
        logits = self._last_logits(np.asarray(prompt, np.int32), 0)
        result.prefill_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        shown = ""
        position = len(prompt)
        while True:
            token = sample(logits, sampling, rng)
            if stop_at_eos and token in self.eos_token_ids:
                result.finish_reason = "eos"
                break
            result.tokens.append(token)
            if on_text is not None and self.tokenizer is not None:
                text = self._decode(result.tokens) or ""
                # Emit only complete characters: a partial UTF-8 sequence
                # decodes to U+FFFD until its last byte arrives.
                if not text.endswith("\ufffd") and text.startswith(shown):
                    on_text(text[len(shown) :])
                    shown = text
            yield token
            if len(result.tokens) >= max_new_tokens:
                break
            logits = self._last_logits(np.asarray([token], np.int32), position)
            position += 1
        result.decode_seconds = time.perf_counter() - t0
        result.text = self._decode(result.tokens)
        if on_text is not None and result.text is not None and result.text.startswith(shown):
            rest = result.text[len(shown) :]
            if rest:
                on_text(rest)

    def _decode(self, ids: list[int]) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode(ids)


def check_context(value: object) -> int:
    """``context_length`` as an int in [1, MAX_CONTEXT], else an ArgumentError."""
    return check_argument(value, "context_length", 1, MAX_CONTEXT)


def physical_memory() -> int | None:
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_kv_cache_fits(model: dict[str, Any], context: int, kv_cache: str) -> None:
    """Refuse a KV cache larger than the machine's RAM, naming context_length.

    The cache is reserved at its full size up front (its pages are taken as
    the sequence grows), so a context far beyond what the machine holds would
    only fail later, deep in a forward pass.
    """
    need = kv_cache_bytes(model, context, int8=kv_cache == "int8")
    have = physical_memory()
    if have is not None and need > have:
        raise ArgumentError(
            f"context_length={context}: the {kv_cache} KV cache would take "
            f"{need / 2**30:.1f} GiB, more than this machine's {have / 2**30:.1f} GiB "
            "of memory; ask for a smaller context_length"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def _eos_ids(path: Path, config: dict[str, Any]) -> set[int]:
    """EOS tokens: generation_config.json's, else config.json's."""
    gen = path / "generation_config.json"
    value, source = None, gen
    if gen.is_file():
        value = _read_json(gen).get("eos_token_id")
    if value is None:
        value, source = config.get("eos_token_id"), path / "config.json"
    if value is None:
        return set()
    values = value if isinstance(value, list) else [value]
    return {check_int(v, path=source, field="eos_token_id", hi=2**31) for v in values}


def _split_experts(
    place: CoreTensor,
    qt: QuantizedTensor,
    shape: tuple[int, ...],
    out: dict[_core.WeightKey, _core.Weight],
) -> None:
    """Per-expert matrices from a fused [experts, rows, cols] tensor (gate and
    up stacked in the rows of ``gate_up``, gate first)."""
    experts, rows = shape[0], shape[1]
    for e in range(experts):
        part = qt.rows(e * rows, (e + 1) * rows)
        keys = place.expert_keys(e)
        if len(keys) == 1:
            out[keys[0]] = part.weight(f"{place.name}[{e}]")
            continue
        for j, key in enumerate(keys):
            lo, hi = j * rows // len(keys), (j + 1) * rows // len(keys)
            label = key.name.rsplit(".", 1)[1]  # gate, up
            out[key] = part.rows(lo, hi).weight(f"{place.name}[{e}] {label}")
