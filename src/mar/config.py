"""Typed configuration: defaults here, small YAML files override them, dotted overrides last.

Pydantic v2 models give every field a type and a default in one place, reject unknown
keys (``extra="forbid"``) and report a bad value with its dotted location, which is what
turns a typo in a YAML file into a one-line error instead of a silently ignored key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import atomic
from .constants import IMAGENET_MEAN, IMAGENET_STD
from .distribution import resolve_config
from .errors import ConfigError
from .masking import STRATEGIES, MaskingStrategy, make_masking
from .models import SIZES, create_model
from .models.mar import MAR


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
    # explicit architecture (None: from the size table of `name`); a name outside the
    # table needs embed_dim, depth and num_heads (a converted model's config.json has them)
    embed_dim: int | None = Field(None, gt=0)
    depth: int | None = Field(None, ge=0)
    num_heads: int | None = Field(None, gt=0)
    mlp_ratio: float | None = Field(None, gt=0)
    drop_path: float = Field(0.0, ge=0, lt=1)
    final_norm: bool = True
    head: Literal["bridging", "linear", "mlp", "none"] = "bridging"
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
    decoder_mlp_ratio: float | None = Field(None, gt=0)
    norm_target: bool = True
    # a fresh model's encoder and decoder init: VideoMAE fine-tunes from trunc_normal
    # (std 0.02) and pretrains from xavier
    init: Literal["trunc_normal", "xavier"] = "trunc_normal"
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    def build(self) -> MAR:
        if self.name not in SIZES and None in (self.embed_dim, self.depth, self.num_heads):
            raise ConfigError(f"model.name: unknown model {self.name!r}; known: "
                              f"{', '.join(SIZES)} (another name needs model.embed_dim, "
                              "model.depth and model.num_heads)")
        try:
            return create_model(**self.model_dump())
        except ValueError as e:
            raise ConfigError(f"model: {e}") from None


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


class DataConfig(_Section):
    """A dataset and its pipeline (:mod:`mar.data`). Defaults: Kinetics-style dense
    sampling (16 frames at stride 4), the official augmentation, 5 x 3 test views."""

    root: str | None = None
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    # tar shards instead of a list (mar.data.shards): brace patterns such as
    # "shards/shard-{000000..000123}.tar", several separated by whitespace (or a list);
    # local paths, fsspec URLs (s3://, https://, ...) or pipe:CMD
    train_shards: str | list[str] | None = None
    val_shards: str | list[str] | None = None
    test_shards: str | list[str] | None = None
    shard_index: str | None = None  # default: index.json beside the split's first shard
    # training samples each loader worker holds to shuffle (raw bytes, not frames): at
    # 1-5 MB a video, 100 is 0.1-0.5 GB a worker, some 20 GB for 8 workers x 8 GPUs; the
    # shards are written from a shuffled list, so the buffer only has to vary the order
    # within shards from epoch to epoch, not to mix classes
    shuffle_buffer: int = Field(100, gt=0)
    class_names: str | None = None
    sampling: Literal["dense", "segment"] = "dense"
    num_frames: int = Field(16, gt=0)
    stride: int = Field(4, gt=0)
    segment_test_style: Literal["centre", "videomae", "mar"] = "centre"
    crop_size: int = Field(224, gt=0)
    short_side: int | None = Field(None, gt=0)
    test_clips: int = Field(5, gt=0)
    test_crops: int = Field(3, gt=0)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333)
    flip_prob: float = Field(0.5, ge=0, le=1)
    flip_pairs: list[tuple[int, int]] = []
    rand_augment: str | None = "rand-m9-mstd0.5-inc1"
    erase_prob: float = Field(0.25, ge=0, le=1)
    repeats: int = Field(1, gt=0)
    mixup: float = Field(0.8, ge=0)
    cutmix: float = Field(1.0, ge=0)
    mixup_prob: float = Field(1.0, ge=0, le=1)
    mixup_switch_prob: float = Field(0.5, ge=0, le=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    backend: Literal["auto", "pyav", "torchcodec"] = "pyav"
    decode_timeout: float = Field(30.0, gt=0)
    max_retries: int = Field(10, ge=0)
    num_workers: int = Field(8, ge=0)
    cache_decoded: bool = False  # keep decoded videos in memory (small datasets only)

    def has_split(self, split: Literal["train", "val", "test"]) -> bool:
        """Whether the split has data: a list or shards."""
        return getattr(self, f"{split}_list") is not None or \
            getattr(self, f"{split}_shards") is not None


class TrainConfig(_Section):
    """Optimisation and bookkeeping (Table I). ``batch_size`` is per process; the
    effective batch is batch_size x accum_steps x processes x data.repeats."""

    task: Literal["finetune", "pretrain"] = "finetune"
    epochs: int = Field(40, gt=0)
    batch_size: int = Field(16, gt=0)
    accum_steps: int = Field(1, gt=0)
    base_lr: float = Field(1e-3, gt=0)
    lr_scaling: bool = True  # the paper's rule: lr = base_lr x effective batch / 256
    min_lr: float = Field(1e-6, ge=0)
    warmup_epochs: float = Field(5.0, ge=0)
    warmup_start_lr: float = Field(0.0, ge=0)  # VideoMAE 0; official MAR code 1e-6
    weight_decay: float = Field(0.05, ge=0)
    layer_decay: float = Field(0.75, gt=0, le=1)
    layer_decay_policy: Literal["paper", "official"] = "paper"
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = Field(None, gt=0)
    rec_weight: float = Field(0.1, ge=0)  # lambda of eq. 5 (SSv2 0.1, K400 0.01)
    amp: Literal["none", "bf16", "fp16"] = "none"
    grad_checkpointing: bool = False
    seed: int = 0
    deterministic: bool = False
    eval_every: int = Field(1, gt=0)  # epochs
    save_every: int | None = Field(None, gt=0)  # optimizer steps; also every epoch end
    keep_last: int = Field(3, gt=0)
    log_every: int = Field(10, gt=0)
    max_steps: int | None = Field(None, gt=0)  # stop early (smoke tests, demos)
    device: str = "auto"
    init: str | None = None  # weights to start from (a mar run, checkpoint or model directory)
    num_gpus: int | None = Field(None, gt=0)  # processes the recipe is written for (mar recipe)


class EvalConfig(_Section):
    merge: Literal["mean", "sum"] = "mean"  # VideoMAE averages views; official MAR sums
    batch_size: int = Field(8, gt=0)


class Config(_Section):
    """A whole run."""

    model: ModelConfig = ModelConfig()
    masking: MaskingConfig = MaskingConfig()
    eval_masking: MaskingConfig | None = None
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _consistent(self):
        for split in ("train", "val", "test"):
            if getattr(self.data, f"{split}_list") and getattr(self.data, f"{split}_shards"):
                raise ValueError(f"data.{split}_list and data.{split}_shards are both set: "
                                 "set one")
        if self.data.num_frames != self.model.num_frames:
            raise ValueError(f"data.num_frames ({self.data.num_frames}) differs from "
                             f"model.num_frames ({self.model.num_frames})")
        if self.data.crop_size != self.model.img_size:
            raise ValueError(f"data.crop_size ({self.data.crop_size}) differs from "
                             f"model.img_size ({self.model.img_size})")
        # build what the run will build, now: a bad name or shape fails at load time,
        # before anything is written (the model on the meta device: shapes, no memory)
        for masking in (self.masking, self.eval_masking):
            if masking is not None:
                masking.build()
        self._every_parameter_trains()
        try:
            with torch.device("meta"):
                self.model.build()
        except (TypeError, ValueError) as e:
            raise ValueError(str(e).removeprefix("model: ")) from None
        return self

    def _every_parameter_trains(self) -> None:
        """Refuse what would leave a parameter without a gradient: DDP (which does not
        look for unused parameters, a cost every step) stops at the second step."""
        m = self.model
        grid = (m.num_frames // m.tubelet_size, m.img_size // m.patch_size,
                 m.img_size // m.patch_size)
        if self.masking.build()(1, grid, train=True).num_masked:
            return
        hides = (f"the training mask ({self.masking.name}, ratio {self.masking.ratio}) "
                 "hides no token")
        if self.train.task == "pretrain":
            raise ValueError(f"train.task=pretrain: {hides}: nothing to reconstruct; set "
                             "masking.ratio > 0")
        if m.head == "bridging" and m.head_mask_tokens:
            raise ValueError(f"model.head_mask_tokens: {hides}, so the mask token never "
                             "trains; set model.head_mask_tokens=false or masking.ratio > 0")

    def test_masking(self) -> MaskingStrategy:
        """The evaluation mask: ``eval_masking`` if set, else the training strategy."""
        return (self.eval_masking or self.masking).build()

    def dataset(self, split: Literal["train", "val", "test"]):
        """A split's data: the training clips (:class:`mar.data.VideoDataset` of a list,
        :class:`mar.data.sharded.ShardedVideos` of shards), or the test views
        (:meth:`views_dataset`; of shards :class:`mar.data.sharded.ShardedViews`) of
        ``val`` (one view) and ``test`` (``test_clips x test_crops``). Shards are checked
        here: each one there, an index that lists exactly them."""
        from .data import ClipSampling, TrainTransform, VideoDataset, read_list

        dc = self.data
        path, shards = getattr(dc, f"{split}_list"), getattr(dc, f"{split}_shards")
        if path is None and shards is None:
            raise ConfigError(f"data.{split}_list is not set (nor data.{split}_shards)")
        if shards is not None:
            from .data.shards import load_shard_set

            shards = load_shard_set(shards, dc.shard_index, dc.root, what=f"data.{split}_shards")
        if split != "train":
            views = (1, 1) if split == "val" else (dc.test_clips, dc.test_crops)
            if shards is None:
                return self.views_dataset(read_list(path, dc.root), *views)
            from .data.sharded import ShardedViews

            return ShardedViews(shards, **self._views_options(*views))
        transform = TrainTransform(dc.crop_size, dc.scale, dc.ratio, dc.flip_prob,
                                   tuple(dc.flip_pairs), dc.rand_augment, dc.erase_prob,
                                   self.model.pixel_mean, self.model.pixel_std)
        options = dict(sampling=ClipSampling(dc.sampling, dc.num_frames, dc.stride),
                       train_transform=transform, repeats=dc.repeats, backend=dc.backend,
                       decode_timeout=dc.decode_timeout, max_retries=dc.max_retries,
                       seed=self.train.seed)
        if shards is None:
            return VideoDataset(read_list(path, dc.root), cache=dc.cache_decoded, **options)
        from .data.sharded import ShardedVideos

        return ShardedVideos(shards, shuffle_buffer=dc.shuffle_buffer, **options)

    def views_dataset(self, records, clips: int, crops: int):
        """The test views (``clips x crops`` per video, :class:`mar.data.VideoViews`) of
        ``records`` (:class:`mar.data.VideoRecord`), decoded and transformed as this config
        says: the one builder of test views, for evaluation, prediction, serving,
        extraction and pictures."""
        from .data import VideoViews

        return VideoViews(records, **self._views_options(clips, crops))

    def _views_options(self, clips: int, crops: int) -> dict:
        from .data import ClipSampling, EvalTransform

        dc = self.data
        transform = EvalTransform(dc.crop_size, crops, dc.short_side, self.model.pixel_mean,
                                  self.model.pixel_std)
        return dict(sampling=ClipSampling(dc.sampling, dc.num_frames, dc.stride,
                                          dc.segment_test_style),
                    eval_transform=transform, num_clips=clips, backend=dc.backend,
                    decode_timeout=dc.decode_timeout)


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key.path=value")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def _set(tree: dict, path: list[str], value: Any, where: str) -> None:
    node = tree
    for part in path[:-1]:
        if node.get(part) is None:  # absent, or an optional section left unset (null)
            node[part] = {}
        child = node[part]
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
    if not loc:  # a check across sections
        return f"{where}: {msg.removeprefix('Value error, ')}{more}"
    return f"{where}: {loc}: {msg}, got {first.get('input')!r}{more}"


def apply_overrides(tree: dict, overrides: list[str] | dict[str, Any],
                    where: str = "override") -> dict:
    """A copy of the config tree ``tree`` with overrides applied: ``key.path=value``
    strings (the command line; values parsed as YAML) or a dict of ``key.path``: value."""
    tree = copy.deepcopy(tree)
    items = (overrides.items() if isinstance(overrides, dict)
             else map(parse_override, overrides))
    for key, value in items:
        _set(tree, key.split("."), value, where)
    return tree


def build_config(tree: dict, overrides: list[str] | dict[str, Any] = (),
                 where: str = "config") -> Config:
    """Validate a config tree (nested dicts, as YAML gives) after ``overrides``; a bad
    value is a :class:`ConfigError` naming ``where`` and the key."""
    tree = apply_overrides(tree, overrides)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format(e, where)) from None


def read_config(path: str | Path) -> tuple[dict, str]:
    """The tree of the YAML file at ``path`` (a path, or the name of a shipped config:
    :func:`mar.distribution.resolve_config`) and where it came from, not yet validated."""
    path = resolve_config(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return tree, str(path)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (:func:`read_config`), then
    ``key.path=value`` overrides."""
    tree, where = read_config(path) if path is not None else ({}, "config")
    return build_config(tree, overrides, where)


def config_tree(config: Config) -> dict:
    """The config as plain data (every field), the inverse of :func:`build_config`."""
    return config.model_dump(mode="json")


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (every field, defaults included), atomically."""
    atomic.write_text(path, yaml.safe_dump(config_tree(config), sort_keys=False))
