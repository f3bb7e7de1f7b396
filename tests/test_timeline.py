"""Long videos: window arithmetic, streamed windows hold the right frames, a timeline
finds a change where it is, and `mar predict --window` writes what it promises."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch import nn

from mar.cli import main
from mar.config import load_config
from mar.data.video_writer import write_video
from mar.data.windows import stream_windows, window_starts
from mar.inference.timeline import predict_timeline, smooth_probs
from mar.masking import make_masking
from mar.models.io import save_model

TINY = ["model.name=vit_nano", "model.num_classes=2", "model.num_frames=4",
        "model.img_size=32", "model.patch_size=8", "data.num_frames=4", "data.crop_size=32"]


def counter_video(path: Path, frames: int, fps: int = 10) -> Path:
    """Frame i is flat grey level 2*i (lossless), so a decoded frame names its index."""
    levels = (2 * np.arange(frames)).astype(np.uint8)
    video = np.broadcast_to(levels[:, None, None, None], (frames, 24, 40, 3)).copy()
    return write_video(path, video, fps=fps, crf=0)


@pytest.mark.parametrize("duration, window, stride, starts", [
    (10, 4, 4, [0, 4, 8]),        # the tail 8-10 s is half a window: kept
    (9, 4, 4, [0, 4]),            # 8-9 s is a quarter: dropped
    (3, 4, 4, [0]),               # shorter than a window: one window
    (10, 2, 1, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
    (10, 4, 2, [0, 2, 4, 6, 8]),
])
def test_window_starts(duration, window, stride, starts):
    assert window_starts(duration, window, stride) == starts


def test_bad_window_is_an_error():
    with pytest.raises(ValueError, match="positive"):
        window_starts(10, 0, 1)


def test_streamed_windows_take_the_frame_at_each_segment_centre(tmp_path):
    path = counter_video(tmp_path / "count.mp4", frames=95, fps=10)  # 9.5 s
    windows = list(stream_windows(path, window=4, stride=3, num_frames=4, short_side=24))
    assert [w[0] for w in windows] == window_starts(9.5, 4, 3) == [0, 3, 6]
    for start, end, frames in windows:
        assert frames.shape == (4, 24, 40, 3) and end == min(start + 4, 9.5)
        index = np.floor(frames.reshape(4, -1).mean(1) / 2 + 0.5).astype(int)  # +-1 level
        # segment centres start + 0.5, 1.5, 2.5, 3.5 s -> frames 10 * centre; past the
        # end (9.5 s, the tail window), the last frame
        assert index.tolist() == [min(round(10 * (start + k + 0.5)), 94) for k in range(4)]


def test_the_tail_window_repeats_the_last_frame(tmp_path):
    path = counter_video(tmp_path / "count.mp4", frames=80, fps=10)  # 8 s
    (*_, (start, end, frames)) = stream_windows(path, window=5, stride=5, num_frames=5,
                                                short_side=24)
    index = np.floor(frames.reshape(5, -1).mean(1) / 2 + 0.5).astype(int)
    assert (start, end) == (5, 8) and index.tolist() == [55, 65, 75, 79, 79]


class Brightness(nn.Module):
    """A stand-in classifier: class 1 when the clip is bright, 0 when dark."""

    grid = (2, 4, 4)

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward_features(self, video, mask):
        return video.mean(dim=(1, 2, 3, 4))[:, None]

    def forward_head(self, x, mask):
        return torch.cat([-x, x], 1) * self.scale

    def classify(self, video, mask):
        return self.forward_head(self.forward_features(video, mask), mask)


def test_the_timeline_finds_the_change_where_it_is(tmp_path):
    dark = np.full((60, 32, 48, 3), 20, np.uint8)
    bright = np.full((60, 32, 48, 3), 230, np.uint8)
    path = write_video(tmp_path / "two_parts.mp4", np.concatenate([dark, bright]), fps=10)
    cfg = load_config(None, TINY)
    tl = predict_timeline(Brightness(), cfg, path, make_masking("none", 0.0), window=2,
                          stride=0.5, views_per_call=3)
    assert tl.starts == window_starts(12, 2, 0.5)
    top1 = tl.probs.argmax(1).tolist()
    change = next(i for i, c in enumerate(top1) if c == 1)
    assert set(top1[:change]) == {0} and set(top1[change:]) == {1}
    centre = (tl.starts[change] + tl.ends[change]) / 2
    assert abs(centre - 6.0) <= 0.5, centre
    assert [(round(s, 1), round(e, 1), c) for s, e, c, _ in tl.segments()] == [
        (0.0, tl.ends[change - 1], 0), (tl.starts[change], 12.0, 1)]


def test_smoothing_is_a_centred_moving_average():
    p = torch.tensor([[1.0, 0], [0, 1], [1, 0], [1, 0]])
    got = smooth_probs(p, 3)
    want = torch.tensor([[0.5, 0.5], [2 / 3, 1 / 3], [2 / 3, 1 / 3], [1.0, 0]])
    torch.testing.assert_close(got, want)
    assert torch.equal(smooth_probs(p, 1), p)
    with pytest.raises(ValueError, match="odd"):
        smooth_probs(p, 2)


def test_cli_window_writes_json_csv_png_and_mp4(tmp_path, capsys):
    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    model_dir = save_model(cfg.model.build(), cfg.model.model_dump(mode="json"),
                           tmp_path / "model", masking={"name": "cell_running", "ratio": 0.5})
    video = counter_video(tmp_path / "clip.mp4", frames=70, fps=10)  # 7 s
    out = tmp_path / "timeline"
    assert main(["predict", str(video), "--checkpoint", str(model_dir), "--window", "2",
                 "--stride", "1", "--smooth", "3", "--topk", "2", "--out", str(out),
                 "--render", "--json"]) == 0
    captured = capsys.readouterr()
    (result,) = json.loads(captured.out)
    assert "test-time masking: cell_running 50%" in captured.err
    assert [w["start"] for w in result["windows"]] == window_starts(7, 2, 1)
    assert all(len(w["top"]) == 2 for w in result["windows"])
    assert json.loads((out / "clip.timeline.json").read_text()) == result
    rows = (out / "clip.timeline.csv").read_text().splitlines()
    assert rows[0].startswith("start,end,class1,name1,prob1") and len(rows) == 1 + 7
    assert (out / "clip.timeline.png").read_bytes()[:4] == b"\x89PNG"
    with av.open(str(out / "clip.timeline.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 70


def test_cli_window_on_a_bad_video_reports_it_and_fails(tmp_path, capsys):
    cfg = load_config(None, TINY)
    model_dir = save_model(cfg.model.build(), cfg.model.model_dump(mode="json"),
                           tmp_path / "model", masking={"name": "none", "ratio": 0.0})
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    good = counter_video(tmp_path / "good.mp4", frames=30)
    assert main(["predict", str(bad), str(good), "--checkpoint", str(model_dir),
                 "--window", "1", "--json"]) == 1
    results = json.loads(capsys.readouterr().out)
    assert "error" in results[0] and "bad.mp4" in results[0]["error"]
    assert len(results[1]["windows"]) == 3
    assert main(["predict", str(good), "--checkpoint", str(model_dir), "--render"]) == 2
