"""Loading a bus application named as ``module:attribute``.

This is how ``titan-bus run --app examples.handlers:bus`` finds the user's
handlers, in the manner of uvicorn and celery:

* ``module`` is imported with the application directory (the current one by
  default) first on ``sys.path``, so a project's own packages import without
  being installed;
* ``attribute`` may be dotted (``module:container.bus``); without it, the
  module's ``bus`` attribute is used, else its ``app``;
* the attribute is an :class:`~titan_bus.bus.EventBus`, or a callable taking
  no arguments that returns one (a factory).

Every failure raises :class:`~titan_bus.errors.AppLoadError` naming the module
or attribute at fault. Errors of the bus family raised while the app builds
its bus (an invalid config file, say) pass through unchanged: their messages
already say what to fix.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import traceback
from pathlib import Path

from titan_bus.bus import EventBus
from titan_bus.errors import AppLoadError, TitanBusError

logger = logging.getLogger(__name__)

DEFAULT_ATTRIBUTES = ("bus", "app")
EXAMPLE_SPEC = "examples.handlers:bus"


def load_app(spec: str, *, app_dir: str | Path | None = ".") -> EventBus:
    """Import ``spec`` (``module:attribute``) and return its event bus.

    Args:
        spec: ``module:attribute``, or just ``module`` to use its ``bus`` or
            ``app`` attribute.
        app_dir: directory put first on ``sys.path`` before importing; None
            leaves ``sys.path`` as it is.

    Raises:
        AppLoadError: the spec is malformed, the module cannot be imported,
            the attribute is missing, or it is not a bus nor a factory of one.
    """
    module_name, attribute = split_spec(spec)
    if app_dir is not None:
        _put_first_on_path(Path(app_dir))

    module = _import(module_name)
    if attribute is None:
        attribute = _default_attribute(module, module_name)
    target = _lookup(module, module_name, attribute)
    bus = _as_bus(target, f"{module_name}:{attribute}")

    logger.debug("loaded app %s:%s", module_name, attribute)
    return bus


def split_spec(spec: str) -> tuple[str, str | None]:
    """Return ``(module, attribute)``; attribute is None when not given.

    Raises:
        AppLoadError: ``spec`` does not look like ``module:attribute``.
    """
    module_name, sep, attribute = spec.strip().partition(":")
    parts_ok = all(p.isidentifier() for p in module_name.split("."))
    attr_ok = not sep or all(p.isidentifier() for p in attribute.split("."))
    if not parts_ok or not attr_ok:
        raise AppLoadError(
            f"app must look like 'module:attribute' (e.g. {EXAMPLE_SPEC!r}), "
            f"got {spec!r}"
        )

    return module_name, attribute if sep else None


def _put_first_on_path(app_dir: Path) -> None:
    where = str(app_dir.resolve())
    if where in sys.path:
        sys.path.remove(where)
    sys.path.insert(0, where)


def _import(module_name: str) -> object:
    try:
        return importlib.import_module(module_name)
    except TitanBusError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name is not None and _is_part_of(module_name, exc.name):
            raise AppLoadError(
                f"cannot import app module {module_name!r}: no module named "
                f"{exc.name!r} (searched the app directory and sys.path)"
            ) from exc
        raise AppLoadError(_failure(f"importing {module_name!r} failed", exc)) from exc
    except Exception as exc:
        raise AppLoadError(_failure(f"importing {module_name!r} failed", exc)) from exc


def _is_part_of(module_name: str, missing: str) -> bool:
    """True if ``missing`` is ``module_name`` or one of its parent packages."""
    return module_name == missing or module_name.startswith(missing + ".")


def _default_attribute(module: object, module_name: str) -> str:
    for name in DEFAULT_ATTRIBUTES:
        if hasattr(module, name):
            return name

    raise AppLoadError(
        f"module {module_name!r} has no attribute 'bus' or 'app'; "
        f"name the bus as '{module_name}:attribute'"
    )


def _lookup(module: object, module_name: str, attribute: str) -> object:
    parts = attribute.split(".")
    target = module
    for depth, part in enumerate(parts):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            owner = f"module {module_name!r}"
            if depth:
                owner = f"{module_name}:{'.'.join(parts[:depth])}"
            raise AppLoadError(f"{owner} has no attribute {part!r}") from exc

    return target


def _as_bus(target: object, spec: str) -> EventBus:
    if isinstance(target, EventBus):
        return target
    if not callable(target):
        raise AppLoadError(
            f"{spec} is a {type(target).__name__}, "
            "not an EventBus or a factory returning one"
        )

    _check_takes_no_arguments(target, spec)
    try:
        made = target()
    except TitanBusError:
        raise
    except Exception as exc:
        raise AppLoadError(_failure(f"factory {spec} failed", exc)) from exc
    if inspect.iscoroutine(made):
        made.close()
        raise AppLoadError(
            f"factory {spec} is async; make it a plain function returning the bus"
        )
    if not isinstance(made, EventBus):
        raise AppLoadError(
            f"factory {spec} returned a {type(made).__name__}, not an EventBus"
        )

    return made


def _check_takes_no_arguments(target: object, spec: str) -> None:
    try:
        signature = inspect.signature(target)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return  # a builtin without a signature: calling it will tell
    try:
        signature.bind()
    except TypeError as exc:
        raise AppLoadError(
            f"factory {spec} must take no arguments, but its signature is {signature}"
        ) from exc


def _failure(what: str, exc: BaseException) -> str:
    """Describe ``exc`` in one line, with where in the user's code it happened."""
    if isinstance(exc, SyntaxError):
        return f"{what}: {exc.filename}:{exc.lineno}: {exc.msg}"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""

    return f"{what}: {type(exc).__name__}: {exc}{where}"
