"""Method registry: importing this package registers every method."""

from sslzoo.methods.base import METHODS, Method, MethodCard, StepOutput
from sslzoo.methods import dino  # noqa: F401  (registers "dino")


def method_class(name: str) -> type[Method]:
    return METHODS.get(name)


__all__ = ["METHODS", "Method", "MethodCard", "StepOutput", "method_class"]
