"""The layer table of docs/architecture.md, enforced on the source: which package may import
what. A module that breaks a rule is named with the import that breaks it."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import easel

PACKAGE = Path(easel.__file__).parent
IO_LIBRARIES = ("sqlalchemy", "asyncpg", "alembic", "obstore", "httpx", "fastapi", "starlette")


def modules(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import of ``path``, at any depth (a lazy import counts)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def breaches(layer: str, *forbidden: str) -> list[str]:
    return [
        f"{path.relative_to(PACKAGE)}:{line} imports {module}"
        for path in modules(layer)
        for line, module in imports(path)
        if under(module, *forbidden)
    ]


def test_the_api_reaches_the_database_only_through_services() -> None:
    """``api/`` parses, authenticates, calls a service and renders: no store module, no
    SQLAlchemy, no worker, no backend, and no ``runtime.store`` or ``runtime.router`` (the
    store's and the backends' handles) either."""
    forbidden = ("easel.store", "easel.worker", "easel.backends", "sqlalchemy", "asyncpg")
    assert breaches("api", *forbidden) == []
    reaching = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in modules("api")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and (
            node.attr == "store" or (node.attr == "router" and ast.unparse(node.value) == "runtime")
        )
    ]
    assert reaching == []


def test_the_domain_is_pure() -> None:
    """``domain/`` imports nothing of Easel outside it, and no library that does I/O."""
    easel_outside = [
        f"{path.relative_to(PACKAGE)}:{line} imports {module}"
        for path in modules("domain")
        for line, module in imports(path)
        if under(module, "easel") and not under(module, "easel.domain")
    ]
    assert easel_outside == []
    assert breaches("domain", *IO_LIBRARIES) == []


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("store", ("easel.api", "easel.services", "easel.worker", "easel.backends")),
        ("services", ("easel.api", "easel.worker")),
        ("backends", ("easel.api", "easel.services", "easel.store", "easel.worker")),
        ("storage", ("easel.api", "easel.services", "easel.store", "easel.worker")),
        (
            "client",
            ("easel.api", "easel.services", "easel.store", "easel.worker", "easel.backends"),
        ),
    ],
)
def test_lower_layers_do_not_import_upper_ones(layer: str, forbidden: tuple[str, ...]) -> None:
    assert breaches(layer, *forbidden) == []


def test_the_top_level_holds_entry_points_and_wiring_only() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in {"__init__", "__main__"})
    assert top == ["cli", "config", "logs", "runtime", "server", "supervise"]


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if "migrations" not in path.parts and (n := len(path.read_text().splitlines())) > 400
    }
    assert long == {}


def test_the_store_port_and_the_memory_store_need_no_sql() -> None:
    """The port, its records and words, and the in-memory store import no SQL library: the
    services and the fake can rely on them without a database."""
    plain = [
        "ports.py",
        "records.py",
        "refusals.py",
        *(f"memory/{p.name}" for p in modules("store/memory")),
    ]
    found = [
        f"store/{name}:{line} imports {module}"
        for name in plain
        for line, module in imports(PACKAGE / "store" / name)
        if under(module, *IO_LIBRARIES)
        or (under(module, "easel.store") and not under(module, *SQL_FREE))
    ]
    assert found == []


SQL_FREE = (
    "easel.store.ports",
    "easel.store.records",
    "easel.store.refusals",
    "easel.store.memory",
)


def test_the_layer_table_names_every_module() -> None:
    """Each module of a layer's package is named (in backticks, or its folder is) on that
    layer's row of docs/architecture.md: the file list reads like the table."""
    doc = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)/` \|(.*)$", doc, re.M))
    unnamed = [
        f"{layer}/{path.relative_to(PACKAGE / layer)}"
        for layer, row in rows.items()
        for path in modules(layer)
        if path.stem != "__init__"
        and "migrations" not in path.parts
        and f"`{path.stem}`" not in row
        and f"`{path.relative_to(PACKAGE / layer).parts[0]}/`" not in row
    ]
    assert sorted(rows) == sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert unnamed == []
