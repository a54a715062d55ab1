"""Every public name has a docstring: the API reference (docs/reference.md) is built from them.

Walks ``syncfetch.__all__`` and the public submodules; for each public class, the public
methods and properties it defines itself (inherited ones from requests are documented
there). Run by the suite, so a public name added without a docstring fails CI.
"""

from __future__ import annotations

import importlib
import inspect
import types
from collections.abc import Iterator

import pytest

import syncfetch

PUBLIC_MODULES = [
    "syncfetch",
    "syncfetch.django",
    "syncfetch.flask",
    "syncfetch.otel",
    "syncfetch.prometheus",
    "syncfetch.testing",
]


def _module_names(module: types.ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return [n for n in names if n != "__version__"]
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
    ]


def _class_members(cls: type) -> Iterator[tuple[str, object]]:
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.isfunction(member) or isinstance(member, property):
            yield name, member


def _public_objects() -> Iterator[tuple[str, object]]:
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)  # the test extra has every optional dep
        yield module_name, module
        for name in _module_names(module):
            obj = getattr(module, name)
            qualified = f"{module_name}.{name}"
            if not (inspect.isclass(obj) or callable(obj)):
                obj = type(obj)  # a constant such as UNSET: its class says what it is
            yield qualified, obj
            if inspect.isclass(obj):
                for member_name, member in _class_members(obj):
                    yield f"{qualified}.{member_name}", member


def _own_doc(obj: object) -> str | None:
    return obj.__doc__ if isinstance(obj, type) else getattr(obj, "__doc__", None)


def test_every_public_name_has_a_docstring() -> None:
    missing = [name for name, obj in _public_objects() if not (_own_doc(obj) or "").strip()]
    assert not missing, f"public names without a docstring: {missing}"


def test_the_walk_sees_the_public_api() -> None:
    seen = {name for name, _ in _public_objects()}
    assert {"syncfetch.Session", "syncfetch.Session.map", "syncfetch.flask.init_app"} <= seen
    assert all(f"syncfetch.{n}" in seen for n in syncfetch.__all__ if n != "__version__")


@pytest.mark.parametrize("undocumented", [lambda: None, type("Bare", (), {})])
def test_the_check_catches_a_missing_docstring(undocumented: object) -> None:
    assert not (_own_doc(undocumented) or "").strip()


def test_the_api_reference_renders_every_public_module() -> None:
    from pathlib import Path

    reference = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
    directives = {
        line.split()[1] for line in reference.read_text().splitlines() if line.startswith(":::")
    }
    assert set(PUBLIC_MODULES) <= directives
