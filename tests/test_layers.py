"""The layers the package tree shows are the layers the code keeps.

``daemon/`` has six packages, each allowed to import only from the ones before it (and from
``fastpath`` and the standard library): core, codec, runtime, client, gateway, tools. The core, besides, does
no I/O and reads no clock: it imports nothing that could. The rules are read from every
module's import statements (those inside functions too), so a lazy import cannot hide a
layer violation.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

DAEMON = pathlib.Path(__file__).resolve().parent.parent / "daemon"
LAYERS = ["core", "codec", "runtime", "client", "gateway", "tools"]
ALLOWED = {layer: set(LAYERS[: i + 1]) for i, layer in enumerate(LAYERS)}
# What the IO-free core may import from outside the project: no sockets, files, threads,
# processes, clocks or event loops.
CORE_STDLIB = {"__future__", "collections", "dataclasses", "typing", "bisect", "heapq",
               "itertools", "enum", "math", "functools", "hashlib", "operator",
               "sortedcontainers"}  # pure in-memory sorted containers: the store's key index


def modules():
    for path in sorted(DAEMON.rglob("*.py")):
        rel = path.relative_to(DAEMON)
        if len(rel.parts) == 1:
            assert rel.name == "__init__.py", f"daemon/{rel} is outside every layer package"
            continue
        yield rel.parts[0], rel, path


def imports(path: pathlib.Path):
    """Every module name ``path`` imports (top-level and inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; name the layer")
            if node.module == "daemon":
                for alias in node.names:
                    yield f"daemon.{alias.name}", node.lineno
            else:
                yield node.module, node.lineno


def test_every_module_belongs_to_a_layer():
    layers = {layer for layer, _, _ in modules()}
    assert layers == set(LAYERS), f"packages in daemon/: {sorted(layers)}, expected {LAYERS}"


@pytest.mark.parametrize("layer", LAYERS)
def test_no_module_imports_a_later_layer(layer):
    wrong = []
    for own, rel, path in modules():
        if own != layer:
            continue
        for name, line in imports(path):
            parts = name.split(".")
            if parts[0] == "daemon":
                if len(parts) < 2 or parts[1] not in ALLOWED[layer]:
                    wrong.append(f"daemon/{rel}:{line} imports {name}")
    assert not wrong, f"{layer} may import only {sorted(ALLOWED[layer])}:\n" + "\n".join(wrong)


# Runtime modules the simulator drives as they are: they must be as free of I/O as the core.
IO_FREE_RUNTIME = {"durability.py"}


def test_the_core_does_no_io_and_reads_no_clock():
    wrong = []
    for own, rel, path in modules():
        if own != "core" and not (own == "runtime" and rel.name in IO_FREE_RUNTIME):
            continue
        for name, line in imports(path):
            top = name.split(".")[0]
            if top not in ("daemon", "fastpath") and top not in CORE_STDLIB:
                wrong.append(f"daemon/{rel}:{line} imports {name}")
    assert not wrong, "the core imports only the core, fastpath and pure standard modules:\n" + \
        "\n".join(wrong)


def test_fastpath_knows_nothing_of_the_daemon():
    pyx = pathlib.Path(DAEMON.parent, "fastpath")
    for path in list(pyx.glob("*.py")) + list(pyx.glob("*.pyx")) + list(pyx.glob("*.pxd")):
        for number, text in enumerate(path.read_text().splitlines(), 1):
            stripped = text.strip()
            if stripped.startswith(("import daemon", "from daemon", "cimport daemon")):
                raise AssertionError(f"{path.name}:{number}: fastpath imports the daemon")


def test_the_readme_map_names_every_package_and_module():
    readme = (DAEMON.parent / "README.md").read_text()
    section = readme[readme.index("## How it works"):readme.index("## Testing")]
    missing = [f"daemon/{layer}/" for layer in LAYERS if f"daemon/{layer}/" not in section]
    missing += [str(rel) for _, rel, _ in modules()
                if rel.name != "__init__.py" and rel.name not in section]
    assert not missing, f"README's 'How it works' does not name: {missing}"
