"""Config: detectron2-compatible keys and files; ``build`` maps them onto the model."""

from .loader import ConfigError, get_cfg, load_config

__all__ = ["ConfigError", "get_cfg", "load_config"]
