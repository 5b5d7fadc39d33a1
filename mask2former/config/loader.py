"""Load detectron2-style YAML configs (``_BASE_`` inheritance, ``KEY VALUE`` overrides)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from fvcore.common.config import CfgNode

from .defaults import get_default_cfg


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and key."""


def get_cfg() -> CfgNode:
    """The default config, mutable, as detectron2's ``get_cfg()``."""
    return get_default_cfg()


def load_config(
    config_file: str | Path | None = None,
    opts: Sequence[str] = (),
    *,
    freeze: bool = False,
) -> CfgNode:
    """Defaults, merged with a YAML file (and its ``_BASE_`` chain), then ``KEY VALUE`` overrides.

    Unknown keys are an error, as in detectron2, so a typo never silently falls back to a default.
    """
    cfg = get_default_cfg()
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            cfg.merge_from_file(str(path))
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: invalid YAML: {error}") from error
        except (KeyError, AssertionError, ValueError, TypeError) as error:
            raise ConfigError(f"{path}: {_reason(error)}") from error
        except FileNotFoundError as error:
            raise ConfigError(f"{path}: _BASE_ file not found: {error.filename}") from error
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"overrides must be KEY VALUE pairs, got an odd count: {list(opts)}")
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, AssertionError, ValueError, TypeError) as error:
            raise ConfigError(f"override {list(opts)}: {_reason(error)}") from error
    if freeze:
        cfg.freeze()
    return cfg


def _reason(error: BaseException) -> str:
    text = str(error.args[0]) if error.args else type(error).__name__
    return text.strip("'\"")
