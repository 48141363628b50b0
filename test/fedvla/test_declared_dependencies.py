"""Every third-party module the core (src/fedvla) imports is declared by its setup.py, in
install_requires or an extra, and every declared distribution is pinned for the pip-only install.

This stands in for building a venv from the declared requirements alone (several GB of torch): the
imports are read from the source, and each is mapped to the installed distribution that provides
it, as pip would need to install it."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "src" / "fedvla"
PINNED = (REPO / "src" / "requirements.txt", REPO / ".ci" / "requirements-ros.txt")
# Imported only where present, never required: the reason is the declaration.
UNDECLARED_OPTIONAL = {"triton": "imported only if installed (torch's CUDA build brings it) to order LLVM loads"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalize(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0])


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    tree = ast.parse((CORE / "setup.py").read_text())
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    required = {_requirement_name(r) for r in values["INSTALL_REQUIRES"]}
    extras = {name: {_requirement_name(r) for r in reqs} for name, reqs in values["EXTRAS_REQUIRE"].items()}
    return required, extras


def _imported_modules() -> dict[str, set[str]]:
    imported: dict[str, set[str]] = {}
    for path in sorted((CORE / "fedvla").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top != "fedvla" and top not in sys.stdlib_module_names:
                    imported.setdefault(top, set()).add(str(path.relative_to(CORE)))
    return imported


def _providers(modules: set[str]) -> dict[str, set[str]]:
    """Module → the installed distributions whose RECORD lists it: .py packages and modules, and
    also compiled modules (``rtde_control.cpython-311-....so``) and modules under a nested
    site-packages (pin's ``cmeel.prefix/lib/python3.11/site-packages/pinocchio``), which
    ``importlib.metadata.packages_distributions`` does not see."""
    providers: dict[str, set[str]] = {m: set() for m in modules}
    for distribution in importlib.metadata.distributions():
        record = distribution.read_text("RECORD") or ""
        provided = set()
        for line in record.splitlines():
            path = line.split(",", 1)[0]
            if "site-packages/" in path:
                path = path.rsplit("site-packages/", 1)[1]
            provided.add(re.split(r"[/.]", path, maxsplit=1)[0])
        for top in provided & set(providers):
            providers[top].add(_normalize(distribution.metadata["Name"]))
    return providers


def test_every_imported_module_is_declared() -> None:
    required, extras = _declared()
    declared = required | {d for reqs in extras.values() for d in reqs}
    imported = _imported_modules()
    providers = _providers(set(imported))
    problems = []
    for module, where in sorted(imported.items()):
        if module in UNDECLARED_OPTIONAL:
            continue
        distributions = providers.get(module, set())
        if not distributions:
            problems.append(f"{module} (imported in {sorted(where)[0]}) is provided by no installed distribution")
        elif not distributions & declared:
            problems.append(f"{module} (imported in {sorted(where)[0]}) comes from {sorted(distributions)}, "
                            "which src/fedvla/setup.py does not declare")
    assert not problems, "\n".join(problems)


def test_every_declared_distribution_is_pinned() -> None:
    required, extras = _declared()
    pinned = set()
    for path in PINNED:
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                pinned.add(_requirement_name(line))
    declared = required | {d for reqs in extras.values() for d in reqs}
    assert not declared - pinned, f"declared but not pinned in src/requirements.txt: {sorted(declared - pinned)}"
