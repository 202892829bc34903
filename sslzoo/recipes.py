"""A recipe and its overrides as a validated run config.

``sslzoo.config`` types the shared sections and leaves the ``method`` section
to a dataclass it is given; this module looks that dataclass up in the method
registry, so that the config imports no method and methods may import the config.
"""

from __future__ import annotations

from typing import Any

from sslzoo.config import Config, method_name, resolve, validate
from sslzoo.methods import method_class


def validate_run(tree: dict) -> Config:
    """Validate a resolved tree, its ``method`` section by the registered method's ``Config``."""
    return validate(tree, method_class(method_name(tree)).Config)


def load_config(recipe: str, overrides: dict[str, Any] | None = None) -> Config:
    """The validated config of ``recipe`` with dotted ``overrides`` applied."""
    return validate_run(resolve(recipe, overrides or {}))
