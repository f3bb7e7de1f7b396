"""Video data: list files, tar shards, decoding, sampling, augmentation, the robust
datasets."""

from .dataset import (
    ClipSampling,
    VideoDataset,
    VideoViews,
    collate,
    collate_views,
    view_loader,
)
from .decode import DecodeError, VideoBytes, VideoInfo, available_backends, make_backend
from .lists import ListError, VideoRecord, read_class_names, read_list, write_list
from .sharded import ShardedVideos, ShardedViews
from .transforms import SSV2_FLIP_PAIRS, EvalTransform, TrainTransform

__all__ = [
    "SSV2_FLIP_PAIRS", "ClipSampling", "DecodeError", "ListError", "EvalTransform",
    "ShardedVideos", "ShardedViews", "TrainTransform", "VideoBytes", "VideoDataset",
    "VideoInfo", "VideoRecord", "VideoViews",
    "available_backends", "collate", "collate_views", "make_backend", "read_class_names",
    "read_list", "view_loader", "write_list",
]
