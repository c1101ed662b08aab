"""Typed configuration: params.yaml -> resolved dict -> checked whole (`nas.config.schema.check_params`:
every key of every section, whichever stage runs) -> the dataclasses each stage reads (`from_dict`;
unknown keys are errors)."""

from nas.config.base import ConfigError, from_dict, merge, set_dotted, to_dict

__all__ = ["ConfigError", "from_dict", "merge", "set_dotted", "to_dict"]
