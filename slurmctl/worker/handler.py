"""Loading the user's handler: `module:function`, the module importable from the config's folder."""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurmctl.errors import HandlerImportError

ProcessFn = Callable[[dict[str, Any], Any], Any]
HookFn = Callable[[Any], Any]


@dataclass(frozen=True)
class Handler:
    process: ProcessFn
    setup: HookFn | None
    teardown: HookFn | None

    @property
    def is_async(self) -> bool:
        """`async def process`: it runs on the worker's event loop (worker/inflight.py)."""
        return inspect.iscoroutinefunction(self.process)

    @property
    def needs_loop(self) -> bool:
        """Any of process, setup and teardown is `async def`."""
        return any(
            inspect.iscoroutinefunction(f) for f in (self.process, self.setup, self.teardown)
        )


def load_handler(spec: str, config_dir: Path) -> Handler:
    module_name, _, func_name = spec.partition(":")
    folder = str(config_dir)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)  # first: this job's module wins over a same-named one elsewhere
    _forget_other(module_name, Path(folder))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.split(".")[0] == e.name.split(".")[0]:
            raise HandlerImportError(
                f"handler: cannot import handler module {module_name!r} from {folder}"
            ) from None
        raise HandlerImportError(
            f"handler: importing {module_name!r} failed: {type(e).__name__}: {e}"
        ) from None
    except Exception as e:  # noqa: BLE001 - any error in user code at import is reported, not raised
        where = traceback.extract_tb(e.__traceback__)[-1]
        raise HandlerImportError(
            f"handler: importing {module_name!r} failed at {where.filename}:{where.lineno}: "
            f"{type(e).__name__}: {e}"
        ) from None
    process = getattr(module, func_name, None)
    if not callable(process):
        raise HandlerImportError(
            f"handler: module {module_name!r} ({getattr(module, '__file__', '?')}) "
            f"has no function {func_name!r}"
        )
    setup = getattr(module, "setup", None)
    teardown = getattr(module, "teardown", None)
    return Handler(
        process, setup if callable(setup) else None, teardown if callable(teardown) else None
    )


def _forget_other(module_name: str, folder: Path) -> None:
    """A module of that name imported earlier from another folder (another job's handler in the
    same process: `try`, tests) must not stand in for this job's."""
    top = module_name.split(".")[0]
    loaded = sys.modules.get(top)
    where = getattr(loaded, "__file__", None)
    if loaded is None or where is None:
        return
    path = Path(where).resolve()
    installed = (Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve())
    if path.is_relative_to(folder.resolve()) or any(path.is_relative_to(p) for p in installed):
        return  # this job's own module, or a library: leave it alone
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()
