"""The layer rule (docs/pages/architecture.md), checked on the source.

ground < pg (engine) < operations < planning < management (commands): a module
may import its own layer and the ones below it, never one above. Every import
counts, relative or absolute, at module level or inside a function.
``apps.py`` is Django's entry point: its ``ready()`` wires
the layers together, so it may import any of them (and nothing imports it).
"""

import ast
from pathlib import Path

import safemigrate

PACKAGE = Path(safemigrate.__file__).parent
LAYERS = ["ground", "pg", "operations", "planning", "management"]
#: Django's entry points: ``apps.py`` (``ready()`` wires the layers) and ``admin.py``
#: (autodiscovered; its actions call the engine). Nothing imports them.
ENTRY_POINTS = {"safemigrate.apps", "safemigrate.admin"}


def module_name(path):
    parts = ["safemigrate", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        found[module_name(path)] = (path, path.read_text())
    return found


def layer(module):
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "ground"


def imports(module, path, source, known):
    """Every safemigrate module ``module`` imports, resolved to a module name."""
    is_package = path.name == "__init__.py"
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "safemigrate"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
                target = ".".join(base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "safemigrate":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in known else target)
    return found


def graph():
    modules = sources()
    edges = {}
    for module, (path, source) in modules.items():
        edges[module] = imports(module, path, source, modules)
    return modules, edges


def test_every_module_imports_only_its_own_layer_and_below():
    modules, edges = graph()
    violations = []
    for module, targets in edges.items():
        if module in ENTRY_POINTS:
            continue
        for target in sorted(targets):
            if LAYERS.index(layer(target)) > LAYERS.index(layer(module)):
                violations.append(f"{module} ({layer(module)}) imports {target} ({layer(target)})")
    assert not violations, "\n".join(violations)


def test_no_import_cycles_among_the_real_modules():
    _, edges = graph()
    # A package's __init__ importing its own submodules is how a package
    # re-exports; the other way round (a submodule importing its package for
    # those names) would be a cycle and is reported.
    cycles = []
    state = {}

    def visit(module, stack):
        state[module] = "open"
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            if target not in edges:
                continue
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                if not (len(cycle) == 3 and cycle[0].startswith(cycle[1] + ".") or
                        len(cycle) == 3 and cycle[1].startswith(cycle[0] + ".")):
                    cycles.append(" -> ".join(cycle))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(cycles)


def test_the_layer_map_knows_every_module():
    """A new top-level module is ground unless it says otherwise; list it here when it is."""
    modules, _ = graph()
    ground = {name for name in modules if layer(name) == "ground"}
    assert ground - ENTRY_POINTS == {
        "safemigrate", "safemigrate.checks", "safemigrate.conf",
        "safemigrate.exceptions", "safemigrate.stage_settings", "safemigrate.stages",
        "safemigrate.models", "safemigrate.signals", "safemigrate.migrations", "safemigrate.migrations.0001_initial",
    }


def test_no_module_is_an_alias_of_another():
    """0.1 keeps no old import paths alive: a module is where its code is."""
    modules, _ = graph()
    aliases = [name for name, (_, source) in modules.items() if "sys.modules[" in source]
    assert not aliases


def test_operations_refine_djangos_own_or_say_they_have_none():
    """Each public operation either subclasses the Django operation it stands in for,
    taking its state change and deconstruction as they are, or is a StandaloneOperation
    (Django has no operation for that step). Never a third, hand-rolled kind."""
    from django.db.migrations import operations as django_operations

    from safemigrate import operations as safe
    from safemigrate.operations.base import SafeOperation, StandaloneOperation

    django_classes = tuple(getattr(django_operations, name) for name in django_operations.__all__)
    for name in safe.__all__:
        cls = getattr(safe, name)
        assert issubclass(cls, SafeOperation), name
        refines = [base for base in cls.__mro__ if base in django_classes]
        if issubclass(cls, StandaloneOperation):
            assert not refines, f"{name} is standalone but also subclasses {refines}"
        else:
            assert refines, f"{name} neither subclasses a Django operation nor is a StandaloneOperation"
            # Django's deconstruct (or one extending it through super()) writes the file.
            assert "deconstruct_kwargs" not in vars(cls), name
