"""Typed configuration: defaults here, small YAML files override them, dotted overrides last.

Pydantic v2 models give every field a type and a default in one place, reject unknown
keys (``extra="forbid"``) and report a bad value with its dotted location, which is what
turns a typo in a YAML file into a one-line error instead of a silently ignored key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .masking import STRATEGIES, MaskingStrategy, make_masking
from .models import SIZES, create_model
from .models.mar import MAR


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Arguments of :func:`mar.create_model`."""

    name: str = "vit_base"
    num_classes: int = Field(400, gt=0)
    num_frames: int = Field(16, gt=0)
    img_size: int = Field(224, gt=0)
    patch_size: int = Field(16, gt=0)
    tubelet_size: int = Field(2, gt=0)
    in_chans: int = Field(3, gt=0)
    drop_path: float = Field(0.0, ge=0, lt=1)
    final_norm: bool = True
    head: Literal["bridging", "linear", "mlp"] = "bridging"
    head_width: int | None = Field(None, gt=0)
    head_depth: int | None = Field(None, ge=0)
    head_heads: int | None = Field(None, gt=0)
    head_dropout: float = Field(0.1, ge=0, lt=1)
    head_pos_embed: bool = False
    head_mask_tokens: bool = False
    decoder: bool = False
    decoder_dim: int | None = Field(None, gt=0)
    decoder_depth: int | None = Field(None, ge=0)
    decoder_heads: int | None = Field(None, gt=0)
    norm_target: bool = True
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def build(self) -> MAR:
        if self.name not in SIZES:
            raise ConfigError(f"model.name: unknown model {self.name!r}; known: "
                              f"{', '.join(SIZES)}")
        return create_model(**self.model_dump())


class MaskingConfig(_Section):
    """A masking strategy (:func:`mar.masking.make_masking`); set only the options it has."""

    name: str = "cell_running"
    ratio: float = Field(0.5, ge=0, lt=1)
    cell: tuple[int, int] | None = None
    spatial: Literal["repeated", "random"] | None = None
    temporal: Literal["shuffled", "fixed"] | None = None
    start_state: int | None = Field(None, ge=0)
    initial: Literal["first", "uniform"] | None = None

    def build(self) -> MaskingStrategy:
        if self.name not in STRATEGIES:
            raise ConfigError(f"masking.name: unknown strategy {self.name!r}; known: "
                              f"{', '.join(STRATEGIES)}")
        options = {k: v for k, v in self.model_dump(exclude={"name", "ratio"}).items()
                   if v is not None}
        try:
            return make_masking(self.name, self.ratio, **options)
        except ValueError as e:
            raise ConfigError(f"masking: {e}") from None


class Config(_Section):
    """A whole run. Later sections (data, optimisation, ...) join as they are built."""

    model: ModelConfig = ModelConfig()
    masking: MaskingConfig = MaskingConfig()
    eval_masking: MaskingConfig | None = None

    def test_masking(self) -> MaskingStrategy:
        """The evaluation mask: ``eval_masking`` if set, else the training strategy."""
        return (self.eval_masking or self.masking).build()


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key.path=value")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def _set(tree: dict, path: list[str], value: Any, where: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def _format(error: ValidationError, where: str) -> str:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {loc}: {msg}, got {first.get('input')!r}{more}"


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path``, then ``key.path=value`` overrides."""
    tree: dict = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for item in overrides:
        keys, value = _parse_override(item)
        _set(tree, keys, value, "override")
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format(e, where)) from None


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (every field, defaults included), atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    tmp.replace(path)
