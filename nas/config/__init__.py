"""Typed configuration: params.yaml -> resolved dict -> dataclasses (unknown keys are errors)."""

from nas.config.base import ConfigError, from_dict, merge, set_dotted, to_dict

__all__ = ["ConfigError", "from_dict", "merge", "set_dotted", "to_dict"]
