"""Using a trained model: load it (:func:`load_model`), score views (:func:`score`),
predict on video files, timelines of long videos, features, ONNX export and pictures.

One module a job: ``load`` (the one loader), ``score`` (the one model call of every
path), ``predict``, ``timeline``, ``extract``, ``export``, ``visualize``; where a model
runs (``--device``, ``--amp``) is :mod:`mar.runtime.device`. The names below are the
functions (bound after their modules, which share two of their names).
"""

from .export import MaskedClassifier, export_onnx
from .load import describe_masking, eval_masking, load_model
from .predict import Prediction, Profile, find_videos, predict
from .score import score
from .timeline import Timeline, predict_timeline

__all__ = [
    "MaskedClassifier", "Prediction", "Profile", "Timeline", "describe_masking",
    "eval_masking", "export_onnx", "find_videos", "load_model", "predict", "predict_timeline",
    "score",
]
