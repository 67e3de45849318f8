"""The package's layers and the directions its imports may take.

Each subpackage of ``lowbit`` sits on a layer; a module may import from its
own subpackage and from lower layers, never from a higher one, and never from
a peer on the same layer (conversion and runtime do not know each other).
Every import counts, also the ones inside functions, since they are still
dependencies. Only the top (``lowbit/__init__``, ``lowbit.testing``, the
``python -m lowbit`` entry) may import the command line or the package root.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "lowbit"

# Low to high. Subpackages in one tuple are peers: neither imports the other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_core", "_version"),
    ("util",),
    ("models",),
    ("quant",),
    ("formats",),
    ("sources",),
    ("conversion", "runtime"),
    ("eval", "exports"),
    ("moe",),
    ("cli",),
    ("__init__", "__main__", "testing"),
)
LAYER_OF = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _part(module: str) -> str:
    """The subpackage (or top-level module) that ``lowbit.x.y`` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, lowbit module) for every import of lowbit in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "lowbit"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "lowbit":
                # `from lowbit import x`: x is a subpackage or module of the root.
                out += [(node.lineno, f"lowbit.{a.name}") for a in node.names]
            elif node.module.split(".")[0] == "lowbit":
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: relative import; write lowbit.x.y")
    return out


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1] if len(parts) > 2 else [*parts[:-1], "__init__"]
    return ".".join(parts)


def test_every_part_has_a_layer():
    parts = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    parts |= {p.stem for p in PACKAGE.glob("*.py")}
    assert parts - set(LAYER_OF) == set(), "give the new subpackage a layer in LAYERS"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down(path):
    here = _part(_module_name(path))
    wrong = []
    for line, target in _imports(path):
        there = _part(target)
        if there == here:
            continue
        if LAYER_OF[there] >= LAYER_OF[here]:
            wrong.append(f"line {line}: {target} ({there}, layer {LAYER_OF[there]})")
    name = path.relative_to(PACKAGE)
    assert not wrong, f"{name} ({here}, layer {LAYER_OF[here]}) imports up or sideways: {wrong}"
