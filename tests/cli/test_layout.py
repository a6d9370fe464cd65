"""The tree shows the pipeline: every module sits in a wing, a wing imports only the wings below it, and there is
no import circle anywhere (lazy imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Lowest first. A module may import its own wing and the wings before it, never one after it.
WINGS: list[tuple[str, ...]] = [
    ("bake", "bake.errors"),
    ("bake.io",),
    ("bake.gates",),
    ("bake.fold",),
    ("bake.write",),
    ("export", "export.options", "export.install"),
    ("export.onnx", "export.gguf", "export.mlx"),  # the export formats: none needs another
    ("export.runtime",),
    ("bake.verify",),
    ("bake.eval",),
    ("bake.plots",),
    ("bake.hub",),
    ("bake.demo",),
    ("bake.commands", "bake.cli"),
]
MAX_MODULES_PER_WING = 12


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in ("bake", "export") for p in (REPO / pkg).rglob("*.py")}


def wing_of(module: str) -> int:
    """The rank of the wing holding ``module``: its longest matching prefix."""
    best = None
    for rank, prefixes in enumerate(WINGS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module} is in no wing"
    return best[0]


def imports_of(module: str) -> set[str]:
    """The project modules ``module`` imports, at module level or inside functions."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found - {module}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_is_in_a_wing_and_no_wing_is_overfull() -> None:
    counts: dict[str, list[str]] = {}
    for m, path in MODULES.items():
        wing_of(m)
        if path.name != "__init__.py":
            counts.setdefault(module_name(path.parent), []).append(m)
    assert MODULES.keys() >= {"bake.gates.gate_math", "bake.fold.plan", "bake.verify.reference", "export.onnx.exporter"}
    full = {folder: len(ms) for folder, ms in counts.items() if len(ms) > MAX_MODULES_PER_WING}
    assert not full, f"folders with more than {MAX_MODULES_PER_WING} modules: {full}"


def test_no_wing_imports_a_higher_one() -> None:
    upward = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() for d in deps if wing_of(d) > wing_of(m))
    assert not upward, "imports of a higher wing:\n" + "\n".join(upward)


def test_no_import_circle() -> None:
    """Tarjan's strongly connected components over every import; each must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_detector_sees_lazy_and_relative_imports() -> None:
    """The checks above would pass vacuously if the import walk missed lazy imports; it does not."""
    assert "bake.hub.sources" in GRAPH["bake.commands.verify_cmd"]  # imported inside run()
    assert "export.onnx.folder" in GRAPH["bake.verify.weights.weight_check"]  # inside check_export_weights()
    assert wing_of("bake.verify.weights.weight_check") > wing_of("export.onnx.folder") > wing_of("bake.write.manifest")


def test_the_export_formats_stand_alone() -> None:
    """ONNX, GGUF and MLX share a rank; no format's code may lean on another's."""
    formats = ("export.onnx", "export.gguf", "export.mlx")
    crossing = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() for d in deps
                      for a in formats for b in formats if a != b and m.startswith(a) and d.startswith(b))
    assert not crossing, "\n".join(crossing)
    assert {"export.gguf.writer", "export.onnx.exporter", "export.mlx.writer"} <= MODULES.keys()


def third_party_imports(module: str) -> set[str]:
    """The top-level names of every package ``module`` imports (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_vllm_plugin_imports_vllm() -> None:
    """vLLM runs lambda-bake's plugin in its own processes; nothing else of the package may import vLLM (the eval
    harness hands lm-eval a backend name), and only vLLM imports the model class (by name, through the plugin)."""
    plugin = {"export.runtime.vllm_plugin", "export.runtime.vllm_qwen3"}
    assert plugin <= MODULES.keys()
    importers = {m for m in MODULES if "vllm" in third_party_imports(m)}
    assert importers == plugin, sorted(importers ^ plugin)
    assert not [m for m, deps in GRAPH.items() if "export.runtime.vllm_qwen3" in deps]
    from export.runtime.vllm_plugin import MODEL_CLASS

    module, _, name = MODEL_CLASS.partition(":")
    assert module == "export.runtime.vllm_qwen3" and f"class {name}(" in MODULES[module].read_text()


def test_the_installed_package_declares_the_vllm_plugin() -> None:
    """`pip install lambda-bake` is all vLLM needs: the entry point is in the package's metadata."""
    from importlib.metadata import entry_points

    ours = [e for e in entry_points(group="vllm.general_plugins") if e.name == "lambda_bake"]
    assert [e.value for e in ours] == ["export.runtime.vllm_plugin:register"]
