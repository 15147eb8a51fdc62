"""The package's imports run one way: leaves for helpers, tools on top (docs/architecture.md)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "itnet_keras"


def package_imports():
    """{module: modules of the package it imports (anywhere in the file)}."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    imports = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("itnet_keras"):
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("itnet_keras")}
        imports[name] = found - {name}
    return imports


def floors(imports):
    """{module: floor}: 0 imports nothing of the package, k imports up to floor k - 1."""
    floor = {}

    def of(module, path=()):
        if module in path:
            raise AssertionError(f"import cycle: {' -> '.join(path + (module,))}")
        if module not in floor:
            floor[module] = 1 + max((of(m, path + (module,)) for m in imports[module]), default=-1)
        return floor[module]

    for module in imports:
        of(module)
    return floor


def test_imports_have_no_cycle_and_helpers_are_leaves():
    imports = package_imports()
    floor = floors(imports)
    assert floor["itnet_keras.files"] == floor["itnet_keras.cli"] == floor["itnet_keras.devices"] == 0
    assert floor["itnet_keras.image_files"] == 0
    assert floor["itnet_keras.presets"] == 0
    assert floor["itnet_keras.model"] < floor["itnet_keras.evaluate"] < floor["itnet_keras.fit"]
    assert floor["itnet_keras.model"] < floor["itnet_keras.batch_norm"] < floor["itnet_keras.fit"]


def test_tools_and_measurement_are_imported_by_nothing_below_them():
    imports = package_imports()
    for module, names in imports.items():
        if not module.startswith("itnet_keras.lab"):
            assert not {n for n in names if n.startswith("itnet_keras.lab")}, module
        if module.startswith("itnet_keras.export") and not module.startswith("itnet_keras.export.measure"):
            assert not {n for n in names if n.startswith("itnet_keras.export.measure")}, module
    # the converters write files through `files` (with their sidecars: `artifacts.write_export`),
    # not through the evaluation module
    assert "itnet_keras.files" in imports["itnet_keras.export.artifacts"]
    for converter in ("itnet_keras.export.tflite", "itnet_keras.export.onnx"):
        assert "itnet_keras.evaluate" not in imports[converter]
        assert "itnet_keras.export.artifacts" in imports[converter]


def test_no_private_name_is_imported_across_modules():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("itnet_keras"):
                assert not [a.name for a in node.names if a.name.startswith("_")], f"{path}: {node.module}"


def floor_listing(imports):
    """The floors as docs/architecture.md lists them: `floor k:`, then its modules (without
    the package's name) and what of the package each imports."""
    floor = floors(imports)

    def short(module):
        return "itnet_keras (__init__)" if module == "itnet_keras" else module[len("itnet_keras."):]

    lines = []
    for k in range(max(floor.values()) + 1):
        lines.append(f"floor {k}:")
        for module in sorted((m for m in floor if floor[m] == k), key=lambda m: (m != "itnet_keras", short(m))):
            uses = ", ".join(sorted(short(m) for m in imports[module]))
            lines.append(f"  {short(module)}" + (f" <- {uses}" if uses else ""))
    return "\n".join(lines) + "\n"


def test_docs_list_the_floors_as_they_are():
    docs = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    start = docs.index("```\nfloor 0:") + len("```\n")
    assert docs[start:docs.index("```", start)] == floor_listing(package_imports()), \
        "docs/architecture.md: its floors differ from the package's imports (print tests/test_imports.floor_listing)"
