"""Name -> object registries (Dassl's ``Registry``)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry:
    """A mapping from names to classes or functions, filled with a decorator.

    >>> TRAINER_REGISTRY = Registry("TRAINER")
    >>> @TRAINER_REGISTRY.register()
    ... class MyTrainer: ...
    """

    def __init__(self, name: str):
        self._name = name
        self._obj_map: dict[str, Any] = {}

    def _do_register(self, name: str, obj: Any, force: bool = False) -> None:
        if name in self._obj_map and not force:
            raise KeyError(f"An object named '{name}' was already registered in the {self._name} registry")
        self._obj_map[name] = obj

    def register(self, obj: Any = None, force: bool = False) -> Callable | None:
        """Register ``obj`` under its ``__name__``; usable as a decorator when ``obj`` is None."""
        if obj is None:

            def wrapper(fn_or_class: Any) -> Any:
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return None

    def get(self, name: str) -> Any:
        """Return the object registered as ``name``; a KeyError lists the registered names."""
        if name not in self._obj_map:
            raise KeyError(
                f"'{name}' is not registered in the {self._name} registry; registered: "
                f"{', '.join(self.registered_names())}"
            )
        return self._obj_map[name]

    def registered_names(self) -> list[str]:
        return sorted(self._obj_map)

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map
