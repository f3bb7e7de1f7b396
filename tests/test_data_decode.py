import os
import time

import numpy as np
import pytest
from videos import REAL, REAL_FRAMES, REAL_HEADER, corrupt, frame_index, write_video

from mar.data.decode import DecodeError, PyAVBackend, available_backends, make_backend

BACKENDS = available_backends()


def test_pyav_is_always_available():
    assert "pyav" in BACKENDS
    with pytest.raises(ValueError, match="unknown decoder backend"):
        make_backend("decord")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(REAL_FRAMES))
def test_real_files_count_decodable_frames_and_seek_exactly(backend, name):
    dec = make_backend(backend)
    path = REAL / name
    info = dec.probe(path)
    # never the header's count: tree.avi's header claims 444, 68 exist
    assert info.num_frames == REAL_FRAMES[name]
    if backend == "pyav":
        assert info.header_frames == REAL_HEADER[name]
    everything = dec.read(path, list(range(info.num_frames)), info)
    assert everything.shape[0] == info.num_frames and everything.dtype == np.uint8
    rng = np.random.default_rng(0)
    packed_b_frames = name.startswith("Megamind")
    for _ in range(3):
        idx = sorted(rng.choice(info.num_frames, 6, replace=False).tolist())
        got = dec.read(path, idx, info)
        if backend == "torchcodec" and packed_b_frames:
            # torchcodec 0.17 indexes these AVIs (MPEG-4 with packed B-frames) up to one
            # frame off PyAV's decoder output order; we only require the neighbourhood
            ref = make_backend("pyav").read(path, range(info.num_frames))
            for frame, i in zip(got, idx, strict=True):
                near = [np.abs(frame.astype(int) - ref[j]).mean()
                        for j in range(max(i - 1, 0), min(i + 2, info.num_frames))]
                assert min(near) < 1.0
        else:
            assert np.array_equal(got, everything[idx])
    # a request past the last frame repeats the last one
    tail = dec.read(path, [info.num_frames - 1, info.num_frames + 5], info)
    assert np.array_equal(tail[0], tail[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_synthetic_h264_with_b_frames_is_frame_exact(tmp_path, backend):
    path = write_video(tmp_path / "clip.mp4", num_frames=40, gop=6, bframes=3)
    dec = make_backend(backend)
    info = dec.probe(path)
    assert info.num_frames == 40
    for idx in ([0, 1, 2], [7, 13, 29, 39], [39, 12, 12, 5]):
        assert [frame_index(f) for f in dec.read(path, idx, info)] == idx


def test_variable_frame_rate_uses_presentation_order(tmp_path):
    stamps = [0, 40, 50, 200, 210, 400, 1000, 1010, 1020, 1500, 1510, 2300]
    path = write_video(tmp_path / "vfr.mkv", num_frames=len(stamps), gop=4, stamps=stamps)
    dec = make_backend("pyav")
    info = dec.probe(path)
    assert info.num_frames == len(stamps)
    idx = [11, 0, 6, 5, 9]
    assert [frame_index(f) for f in dec.read(path, idx, info)] == idx


def test_reading_late_frames_seeks_instead_of_decoding_from_the_start(tmp_path, monkeypatch):
    path = write_video(tmp_path / "long.mp4", num_frames=60, gop=10, bframes=2)
    dec = PyAVBackend()
    starts = []
    original = dec._decode_from

    def spy(path, wanted, start, stamp, size=None, stamps=()):
        result = original(path, wanted, start, stamp, size, stamps)
        starts.append((start, result is not None, bool(stamps)))
        return result

    monkeypatch.setattr(dec, "_decode_from", spy)
    frames = dec.read(path, [52, 55])
    assert [frame_index(f) for f in frames] == [52, 55]
    # one decode, from the keyframe at 50, seek succeeded, frames found by timestamp
    assert starts == [(50, True, True)]


@pytest.mark.parametrize("kind", ["empty", "truncated", "not_video", "bitrot"])
def test_damaged_files_raise_decode_errors_naming_the_file(tmp_path, kind):
    src = REAL / ("bigbuckbunny.mp4" if kind != "truncated" else "bigbuckbunny.mp4")
    path = corrupt(src, tmp_path / f"{kind}.mp4", kind)
    dec = make_backend("pyav")
    with pytest.raises(DecodeError, match=str(path)):
        info = dec.probe(path)
        dec.read(path, [0, 40, 80, 120], info)


def test_truncated_avi_keeps_the_frames_that_exist(tmp_path):
    path = corrupt(REAL / "Megamind.avi", tmp_path / "cut.avi", "truncated")
    dec = make_backend("pyav")
    info = dec.probe(path)
    assert 0 < info.num_frames < 270
    assert dec.read(path, [0, info.num_frames - 1], info).shape[0] == 2


def test_things_that_would_hang_fail_fast(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(DecodeError, match="not a regular file"):
        make_backend("pyav").probe(fifo)
    with pytest.raises(DecodeError, match="cannot open"):
        make_backend("pyav").probe(tmp_path / "missing.mp4")
    # a decode that runs past its time limit is abandoned
    slow = PyAVBackend(timeout=1e-6)
    with pytest.raises(DecodeError, match="took over"):
        slow.read(REAL / "Megamind.avi", [0, 100, 200])
    assert time.monotonic() - start < 10


@pytest.mark.skipif("torchcodec" not in BACKENDS, reason="torchcodec is not usable here "
                    "(not installed, or no system FFmpeg)")
def test_torchcodec_and_pyav_agree_on_mp4():
    path = REAL / "bigbuckbunny.mp4"
    idx = [0, 17, 64, 131]
    a = make_backend("pyav").read(path, idx)
    b = make_backend("torchcodec").read(path, idx)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0  # same frames, same colours


def test_auto_prefers_pyav():
    assert make_backend("auto").name == "pyav"


@pytest.fixture
def text_file(tmp_path):
    """A plain text file named .txt: FFmpeg's tty demuxer would render it as video."""
    return corrupt(REAL / "bigbuckbunny.mp4", tmp_path / "notes.txt", "not_video")


def test_a_text_file_is_refused_by_the_decoder_with_a_clear_message(text_file, tmp_path):
    import av

    from mar.data.decode import refuse_text_file
    from mar.data.windows import stream_windows

    with av.open(str(text_file)) as container:   # what FFmpeg alone would do with it
        assert container.format.name == "tty" and len(container.streams.video) == 1
    expected = f"{text_file}: not a video (FFmpeg reads it as text, format 'tty')"
    dec = make_backend("pyav")
    for call in (lambda: dec.probe(text_file), lambda: dec.read(text_file, [0, 1]),
                 lambda: refuse_text_file(text_file),
                 lambda: next(stream_windows(text_file, 1.0, 1.0, 8, 64))):
        with pytest.raises(DecodeError) as e:
            call()
        assert str(e.value) == expected
    # a video, or text under a video's name (FFmpeg's own refusal), passes this check
    refuse_text_file(REAL / "bigbuckbunny.mp4")
    renamed = corrupt(REAL / "bigbuckbunny.mp4", tmp_path / "notes.mp4", "not_video")
    refuse_text_file(renamed)
    with pytest.raises(DecodeError, match="notes.mp4: cannot open as video"):
        dec.probe(renamed)


def test_a_text_file_in_an_epoch_is_skipped(text_file, tmp_path):
    import warnings

    from mar.data import (
        ClipSampling,
        EvalTransform,
        TrainTransform,
        VideoDataset,
        VideoRecord,
        VideoViews,
    )

    good = write_video(tmp_path / "good.mp4", num_frames=24)
    records = [VideoRecord(str(text_file), 0), VideoRecord(str(good), 1)]
    train = VideoDataset(records, sampling=ClipSampling("dense", 4, 2),
                         train_transform=TrainTransform(crop_size=32, rand_augment=None))
    test = VideoViews(records, sampling=ClipSampling("segment", 4),
                      eval_transform=EvalTransform(crop_size=32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = train[0]                          # drawn again from the list instead
        assert set(item["skipped"]) == {str(text_file)} and item["index"] == 1
        assert item["video"].shape[1] == 4
        assert test[0]["valid"] is False and test[1]["valid"] is True
    assert any("not a video" in str(w.message) for w in caught)
    assert "not a video" in test[0]["error"]


def test_mar_predict_on_a_text_file_exits_non_zero_with_one_line_error(text_file, tmp_path,
                                                                       capsys):
    import json

    import torch

    from mar import create_model
    from mar.cli import main
    from mar.models.io import save_model

    kwargs = {"name": "vit_nano", "num_classes": 3, "num_frames": 8, "img_size": 32,
              "patch_size": 16}
    torch.manual_seed(0)
    model = save_model(create_model(**kwargs), kwargs, tmp_path / "model",
                       masking={"name": "none", "ratio": 0.0})
    expected = f"{text_file}: not a video (FFmpeg reads it as text, format 'tty')"
    # in-process: main's return value is the exit status (`sys.exit(main())`)
    assert main(["predict", str(text_file), "--checkpoint", str(model), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["error"] == expected
    # the timeline form prints the error as one line on stderr
    assert main(["predict", str(text_file), "--checkpoint", str(model), "--window", "1"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[-1] == f"mar predict: {expected}"
