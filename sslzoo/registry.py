"""Name -> constructor registries (methods, backbones), in the style of timm's."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from sslzoo.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of entries; unknown names get a one-line error with suggestions."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            near = difflib.get_close_matches(name, self.names(), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise UserError(f"unknown {self.kind} '{name}'{hint}; available: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
