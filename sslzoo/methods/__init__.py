"""Method registry. Importing this package imports every module in it, and each
method registers itself with ``@METHODS.register(name)``: adding a method is
its own file plus its recipes."""

import importlib
import pkgutil

from sslzoo.methods.base import METHODS, Method, MethodCard, MethodSetup, StepOutput

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def method_class(name: str) -> type[Method]:
    return METHODS.get(name)


__all__ = ["METHODS", "Method", "MethodCard", "MethodSetup", "StepOutput", "method_class"]
