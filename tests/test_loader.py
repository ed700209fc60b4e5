"""Loading an app from ``module:attribute``, as ``titan-bus run --app`` does.

Each test writes a real module to its own directory and imports it under a
unique name, so no test sees another's module.
"""

from __future__ import annotations

import importlib
import secrets
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from titan_bus import AppLoadError, ConfigError, EventBus
from titan_bus.loader import load_app, split_spec

pytestmark = pytest.mark.timeout(20)

WriteModule = Callable[[str], str]


@pytest.fixture
def write_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WriteModule]:
    """Write a module with the given source to ``tmp_path``; return its name.

    ``sys.path`` is restored and the modules are forgotten after the test.
    """
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    names: list[str] = []

    def write(source: str) -> str:
        name = f"app_{secrets.token_hex(4)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), "utf-8")
        importlib.invalidate_caches()
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


BUS_MODULE = """
    from titan_bus import EventBus

    bus = EventBus(source="loader-test")
"""


def test_attribute_that_is_a_bus_is_returned(write_module: WriteModule) -> None:
    name = write_module(BUS_MODULE)

    bus = load_app(f"{name}:bus")

    assert bus is sys.modules[name].bus


def test_zero_argument_factory_is_called(write_module: WriteModule) -> None:
    name = write_module(
        """
        from titan_bus import EventBus

        def make_bus():
            return EventBus(source="from-factory")
        """
    )

    bus = load_app(f"{name}:make_bus")

    assert isinstance(bus, EventBus)
    assert bus.factory.source == "from-factory"


def test_dotted_attribute_is_followed(write_module: WriteModule) -> None:
    name = write_module(
        """
        from types import SimpleNamespace
        from titan_bus import EventBus

        holder = SimpleNamespace(inner=SimpleNamespace(bus=EventBus()))
        """
    )

    assert load_app(f"{name}:holder.inner.bus") is sys.modules[name].holder.inner.bus


def test_module_alone_uses_its_bus_then_its_app(write_module: WriteModule) -> None:
    with_bus = write_module(BUS_MODULE)
    with_app = write_module("from titan_bus import EventBus\napp = EventBus()\n")

    assert load_app(with_bus) is sys.modules[with_bus].bus
    assert load_app(with_app) is sys.modules[with_app].app


def test_module_without_bus_or_app_says_how_to_name_one(
    write_module: WriteModule,
) -> None:
    name = write_module("x = 1\n")

    with pytest.raises(AppLoadError, match=rf"module '{name}' has no attribute 'bus'"):
        load_app(name)


def test_current_directory_is_put_on_sys_path(write_module: WriteModule) -> None:
    name = write_module(BUS_MODULE)
    cwd = str(Path.cwd().resolve())
    while cwd in sys.path:
        sys.path.remove(cwd)

    load_app(f"{name}:bus")

    assert sys.path[0] == cwd


def test_app_dir_is_searched_first(write_module: WriteModule, tmp_path: Path) -> None:
    package = tmp_path / "project" / f"pkg_{secrets.token_hex(4)}"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", "utf-8")
    (package / "handlers.py").write_text(textwrap.dedent(BUS_MODULE), "utf-8")

    bus = load_app(f"{package.name}.handlers:bus", app_dir=package.parent)

    assert bus is sys.modules[f"{package.name}.handlers"].bus
    sys.modules.pop(f"{package.name}.handlers")
    sys.modules.pop(package.name)


@pytest.mark.parametrize(
    "spec", ["", ":bus", "mod:", "two words:bus", "mod:1bus", "mod:a:b", "mod..x:bus"]
)
def test_malformed_spec_is_rejected_with_an_example(spec: str) -> None:
    with pytest.raises(AppLoadError, match=r"must look like 'module:attribute'"):
        split_spec(spec)


def test_missing_module_is_named(write_module: WriteModule) -> None:
    with pytest.raises(
        AppLoadError, match=r"cannot import app module 'no_such_mod_xyz.handlers'"
    ):
        load_app("no_such_mod_xyz.handlers:bus")


def test_missing_attribute_names_module_and_attribute(
    write_module: WriteModule,
) -> None:
    name = write_module(BUS_MODULE)

    with pytest.raises(AppLoadError, match=rf"module '{name}' has no attribute 'bsu'"):
        load_app(f"{name}:bsu")


def test_missing_nested_attribute_names_the_path(write_module: WriteModule) -> None:
    name = write_module("class Holder:\n    pass\n")

    with pytest.raises(AppLoadError, match=rf"{name}:Holder has no attribute 'bus'"):
        load_app(f"{name}:Holder.bus")


def test_attribute_of_the_wrong_type_is_rejected(write_module: WriteModule) -> None:
    name = write_module("bus = 42\n")

    with pytest.raises(AppLoadError, match=r"is a int, not an EventBus or a factory"):
        load_app(f"{name}:bus")


def test_factory_that_needs_arguments_is_rejected(write_module: WriteModule) -> None:
    name = write_module("def make(config):\n    return None\n")

    with pytest.raises(AppLoadError, match=r"must take no arguments.*\(config\)"):
        load_app(f"{name}:make")


def test_factory_returning_something_else_is_rejected(
    write_module: WriteModule,
) -> None:
    name = write_module("def make():\n    return 'not a bus'\n")

    with pytest.raises(AppLoadError, match=r"returned a str, not an EventBus"):
        load_app(f"{name}:make")


def test_async_factory_is_rejected(write_module: WriteModule) -> None:
    name = write_module("async def make():\n    return None\n")

    with pytest.raises(AppLoadError, match=r"is async"):
        load_app(f"{name}:make")


def test_failing_factory_is_named_with_the_error_and_place(
    write_module: WriteModule,
) -> None:
    name = write_module("def make():\n    raise RuntimeError('no database')\n")

    with pytest.raises(AppLoadError) as caught:
        load_app(f"{name}:make")

    message = str(caught.value)
    assert f"factory {name}:make failed: RuntimeError: no database" in message
    assert f"{name}.py:2" in message
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_error_while_importing_is_named_with_the_place(
    write_module: WriteModule,
) -> None:
    name = write_module("x = 1\nraise ValueError('bad setting')\n")

    with pytest.raises(AppLoadError) as caught:
        load_app(f"{name}:bus")

    message = str(caught.value)
    assert f"importing '{name}' failed: ValueError: bad setting" in message
    assert f"{name}.py:2" in message


def test_syntax_error_names_file_and_line(write_module: WriteModule) -> None:
    name = write_module("x = 1\ndef broken(:\n")

    with pytest.raises(AppLoadError, match=rf"{name}\.py:2: "):
        load_app(f"{name}:bus")


def test_missing_dependency_of_the_app_is_not_mistaken_for_the_app(
    write_module: WriteModule,
) -> None:
    name = write_module("import no_such_dependency_xyz\n")

    with pytest.raises(AppLoadError) as caught:
        load_app(f"{name}:bus")

    message = str(caught.value)
    assert f"importing '{name}' failed: ModuleNotFoundError" in message
    assert "no_such_dependency_xyz" in message


def test_bus_errors_raised_by_the_app_pass_through(
    write_module: WriteModule, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("key_prefix: 'has space'\n", "utf-8")
    name = write_module(
        f"from titan_bus import EventBus\nbus = EventBus.from_config({str(bad)!r})\n"
    )

    with pytest.raises(ConfigError, match=r"key_prefix"):
        load_app(f"{name}:bus")
