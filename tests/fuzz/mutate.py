"""Seeded mutations of input files: bytes, JSON documents, safetensors headers,
TOML text and GGUF metadata. Every function takes a ``random.Random`` so that
a campaign is reproducible from its seed."""

from __future__ import annotations

import copy
import json
import random
import re
import struct
from typing import Any

# Values that break parsers: huge and negative integers, 1e308, non-finite
# numbers, zero, wrong types.
INTERESTING: tuple[Any, ...] = (
    0, -1, 1, 2, 3, 255, 256, 65535, 2**31 - 1, 2**31, 2**32, 2**53, 2**62, 2**63, 2**64,
    8126466, 1e8, 1e308, -1e308, float("inf"), float("-inf"), float("nan"), 0.5, -0.0,
    True, False, None, "", "x", "F32", "../x", [], [1], [[]], {}, {"a": 1}, [0, 0],
)  # fmt: skip
TOML_VALUES = (
    "0", "-1", "1e308", "inf", "-inf", "nan", "9223372036854775807", "5", "true",
    '"x"', "[1, 2]", "{a = 1}", "[]", "1979-05-27", "0.5",
)  # fmt: skip


def mutate_bytes(data: bytes, rng: random.Random, donor: bytes = b"") -> bytes:
    """One of: flip bits, set bytes, insert, delete, truncate, splice, repeat."""
    buf = bytearray(data)
    op = rng.randrange(8)
    n = len(buf)
    if n == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    pos = _position(rng, n)
    if op == 0:  # flip a few bits
        for _ in range(rng.randint(1, 8)):
            i = _position(rng, n)
            buf[i] ^= 1 << rng.randrange(8)
    elif op == 1:  # set bytes to extremes
        for _ in range(rng.randint(1, 4)):
            buf[_position(rng, n)] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    elif op == 2:  # overwrite a little-endian integer
        size = rng.choice((1, 2, 4, 8))
        value = rng.choice((0, 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1, rng.getrandbits(64)))
        buf[pos : pos + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    elif op == 3:  # insert random bytes
        buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif op == 4:  # delete a range
        del buf[pos : pos + rng.randint(1, max(1, n // 8))]
    elif op == 5:  # truncate
        del buf[rng.randrange(n) :]
    elif op == 6 and donor:  # splice in part of another file
        start = rng.randrange(len(donor))
        buf[pos : pos + rng.randint(1, 256)] = donor[start : start + rng.randint(1, 256)]
    else:  # repeat a chunk
        chunk = buf[pos : pos + rng.randint(1, 64)]
        buf[pos:pos] = chunk * rng.randint(1, 8)
    return bytes(buf)


def _position(rng: random.Random, n: int) -> int:
    # Headers sit at the start of every format: favour the first bytes.
    return rng.randrange(min(n, 4096)) if rng.random() < 0.7 else rng.randrange(n)


def _interesting(rng: random.Random) -> Any:
    # A copy: the lists and dicts of INTERESTING must not be mutated in place.
    return copy.deepcopy(rng.choice(INTERESTING))


def _nodes(doc: Any, path: tuple = ()) -> list[tuple]:
    """Paths of the nodes of a JSON document (limited, for big or deep documents)."""
    out = [path]
    if len(path) > 32:
        return out
    if isinstance(doc, dict):
        items = list(doc.items())
    elif isinstance(doc, list):
        items = list(enumerate(doc))
    else:
        return out
    for k, v in items[:200]:
        out += _nodes(v, (*path, k))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def mutate_json_doc(doc: Any, rng: random.Random) -> Any:
    """Replace a node with an interesting value, delete it, wrap it, or duplicate it."""
    for _ in range(rng.randint(1, 3)):
        nodes = _nodes(doc)
        path = rng.choice(nodes)
        if not path:
            doc = rng.choice((_interesting(rng), [doc], {"x": doc}, doc))
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        op = rng.randrange(6)
        if op == 0 and isinstance(parent, dict):
            del parent[key]
        elif op == 0 and isinstance(parent, list):
            parent.pop(key)
        elif op == 1:
            parent[key] = [parent[key]]
        elif op == 2:
            parent[key] = {"x": parent[key]}
        elif op == 3 and isinstance(parent[key], int | float) and not isinstance(parent[key], bool):
            parent[key] = rng.choice((parent[key] * 2**20, -parent[key], parent[key] + 1, 0))
        else:
            parent[key] = _interesting(rng)
    return doc


def mutate_json(data: bytes, rng: random.Random) -> bytes:
    """A JSON file mutated as a document (or as bytes when it is not JSON)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return mutate_bytes(data, rng)
    return json.dumps(mutate_json_doc(doc, rng)).encode()


def mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    """A safetensors file with its JSON header mutated and its length prefix fixed."""
    if len(data) < 8:
        return mutate_bytes(data, rng)
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError:
        return mutate_bytes(data, rng)
    raw = json.dumps(mutate_json_doc(header, rng)).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


_TOML_VALUE = re.compile(r"(=\s*)([^\n]+)")


def mutate_toml(data: bytes, rng: random.Random) -> bytes:
    """TOML text with a value replaced, a line duplicated or moved, or a table added."""
    text = data.decode("utf-8", "replace")
    lines = text.splitlines()
    op = rng.randrange(5)
    if op <= 1 and lines:
        i = rng.randrange(len(lines))
        lines[i] = _TOML_VALUE.sub(lambda m: m.group(1) + rng.choice(TOML_VALUES), lines[i])
    elif op == 2 and lines:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(lines))
    elif op == 3:
        table = rng.choice(("[weights]", "[model]", "[presets]", "[presets.q4]", "[x]"))
        key = rng.choice(("max_rel_error", "max_kld_mean", "4", "model", "weights"))
        lines.insert(rng.randrange(len(lines) + 1), f"{table}\n{key} = {rng.choice(TOML_VALUES)}")
    else:
        return mutate_bytes(data, rng)
    return "\n".join(lines).encode()


def gguf_parts(path: str) -> list[tuple[int, int]]:
    """(offset, size) of every metadata value and tensor-info field of a GGUF file,
    for mutations that keep the file's framing and change what it declares."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    out = []
    fields = list(reader.fields.values()) + [t.field for t in reader.tensors]
    for f in fields:
        offset = f.offset
        for i, part in enumerate(f.parts):
            if i in f.data and part.dtype.kind in "iuf":
                out.append((offset, part.nbytes))
            offset += part.nbytes
    return out


def mutate_gguf(data: bytes, rng: random.Random, parts: list[tuple[int, int]]) -> bytes:
    """A GGUF file with a declared count, size, type or offset replaced."""
    if not parts or rng.random() < 0.3:
        return mutate_bytes(data, rng)
    buf = bytearray(data)
    for _ in range(rng.randint(1, 2)):
        offset, size = rng.choice(parts)
        size = min(size, 8)
        value = rng.choice(
            (0, 1, 2, 3, 8126466, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1, rng.getrandbits(64))
        )
        if size == 4 and rng.random() < 0.3:  # a float32 field
            raw = struct.pack("<f", rng.choice((0.0, -1.0, float("inf"), float("nan"), 1e38)))
        else:
            raw = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        buf[offset : offset + size] = raw
    return bytes(buf)
