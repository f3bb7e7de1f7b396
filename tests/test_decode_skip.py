"""PyAV's two decode savings: unwanted non-reference frames left undecoded (the pixels of
every frame read stay those of decoding all), and one probe per file."""

import dataclasses
import os

import av
import numpy as np
import pytest
from videos import REAL, REAL_FRAMES, corrupt, frame_index, write_video

from mar.data import decode
from mar.data.decode import PyAVBackend, VideoBytes


def write_textured(path, codec: str = "libx264", num_frames: int = 90, gop: int = 30,
                   options: dict | None = None, size=(96, 64)):
    """A noise texture panning under a brightness ramp: each frame is predicted from
    others, so a wrong reference changes its pixels."""
    width, height = size
    texture = np.random.default_rng(0).integers(0, 256, (2 * height, 3 * width, 3),
                                                dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = options or {"g": str(gop), "bf": "3", "crf": "23",
                                     "sc_threshold": "0"}
        for i in range(num_frames):
            x, y = (2 * i) % (2 * width), i % height
            img = np.clip(texture[y:y + height, x:x + width].astype(int) + i % 40 - 20,
                          0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def clips(num_frames: int, seed: int = 0) -> list[list[int]]:
    """Dense clips (8 frames at stride 4) at random starts, a few scattered frames, and
    the first and last frame."""
    rng = np.random.default_rng(seed)
    out = [[0], [num_frames - 1], sorted(rng.choice(num_frames, 5, replace=False).tolist())]
    for start in rng.integers(0, num_frames - 29, 6).tolist():
        out.append(list(range(start, start + 29, 4)))
    return out


def assert_same_with_and_without_skipping(path, expect_stamps: bool, short_side=None):
    skipping, counting = PyAVBackend(), PyAVBackend(skip_nonref=False)
    info = skipping.probe(path)
    assert bool(info.stamps) == expect_stamps
    for idx in clips(info.num_frames):
        got = skipping.read(path, idx, info, short_side=short_side)
        assert np.array_equal(got, counting.read(path, idx, info, short_side=short_side))


def count_decoded(monkeypatch) -> list[int]:
    """Frames each decode got from the decoder (a wrapper of decode.decoded)."""
    counts, original = [], decode.decoded

    def counted(container, stream, keep=None):
        counts.append(0)
        for frame in original(container, stream, keep):
            counts[-1] += 1
            yield frame

    monkeypatch.setattr(decode, "decoded", counted)
    return counts


@pytest.mark.parametrize("threads", [0, 1])  # FFmpeg's choice (frame threads), one
@pytest.mark.parametrize("gop", [12, 30, 250])
def test_h264_with_b_frames_reads_the_same_pixels_skipping_non_reference_frames(
        tmp_path, monkeypatch, gop, threads):
    monkeypatch.setattr(decode, "decoder_threads", lambda: threads)
    path = write_textured(tmp_path / f"g{gop}.mp4", gop=gop)
    assert_same_with_and_without_skipping(path, expect_stamps=True)
    assert_same_with_and_without_skipping(path, expect_stamps=True, short_side=32)


def test_skipping_decodes_fewer_frames_and_finds_them_by_timestamp(tmp_path, monkeypatch):
    path = write_video(tmp_path / "grey.mp4", num_frames=60, gop=60, bframes=3)
    counts = count_decoded(monkeypatch)
    idx = [40, 44, 48, 52]
    skipping = PyAVBackend()
    assert [frame_index(f) for f in skipping.read(path, idx)] == idx
    counted = PyAVBackend(skip_nonref=False).read(path, idx)
    assert [frame_index(f) for f in counted] == idx
    # one keyframe: both decode from frame 0; counting gets all 53 frames up to 52, while
    # skipping leaves out the unwanted B-frames that are not references
    skipped, all_frames = counts
    assert all_frames == 53
    assert skipped < 0.75 * all_frames


def test_h264_in_avi_is_counted_not_found_by_timestamp(tmp_path, monkeypatch):
    # the AVI muxer stores decode-order counters as timestamps: they do not name frames
    path = write_video(tmp_path / "b.avi", num_frames=40, gop=12, bframes=3)
    counts = count_decoded(monkeypatch)
    info = PyAVBackend().probe(path)
    assert info.stamps == ()
    idx = [3, 17, 18, 30, 39]
    assert [frame_index(f) for f in PyAVBackend().read(path, idx, info)] == idx
    assert len(counts) == 1


@pytest.mark.parametrize("name", sorted(REAL_FRAMES))
def test_real_videos_read_the_same_with_and_without_skipping(name):
    # none is skipped: MPEG-4 with packed B-frames (Megamind), Cinepak (tree), and H.264
    # without B-frames (bigbuckbunny: every frame is a reference)
    assert_same_with_and_without_skipping(REAL / name, expect_stamps=False)


def test_timestamps_that_do_not_name_frames_fall_back_to_counting(tmp_path, monkeypatch):
    path = write_textured(tmp_path / "clip.mp4", gop=30)
    backend = PyAVBackend()
    info = backend.probe(path)
    wrong = dataclasses.replace(info, stamps=tuple(s + 1 for s in info.stamps))
    counts = count_decoded(monkeypatch)
    idx = [33, 37, 41, 45]
    got = backend.read(path, idx, wrong)
    assert np.array_equal(got, PyAVBackend(skip_nonref=False).read(path, idx, info))
    assert counts[0] == 1  # the first frame out has no stamp of the probe's: counted instead
    assert len(counts) == 3


def test_a_damaged_tail_reads_as_without_skipping(tmp_path):
    path = corrupt(write_textured(tmp_path / "clip.mkv", gop=30), tmp_path / "cut.mkv",
                   "truncated")
    skipping, counting = PyAVBackend(), PyAVBackend(skip_nonref=False)
    info = skipping.probe(path)
    assert info.stamps and info.num_frames < 90
    idx = list(range(info.num_frames - 20, info.num_frames, 3))
    assert np.array_equal(skipping.read(path, idx, info), counting.read(path, idx, info))


@pytest.mark.skipif("libx265" not in av.codecs_available, reason="no HEVC encoder")
def test_hevc_with_b_frames_reads_the_same_pixels_skipping(tmp_path):
    params = "keyint=30:min-keyint=30:bframes=3:log-level=error"
    path = write_textured(tmp_path / "clip.mp4", "libx265", options={"x265-params": params})
    assert_same_with_and_without_skipping(path, expect_stamps=True)


@pytest.mark.skipif("libvpx-vp9" not in av.codecs_available, reason="no VP9 encoder")
def test_vp9_is_counted_not_skipped(tmp_path, monkeypatch):
    path = write_textured(tmp_path / "clip.webm", "libvpx-vp9",
                          options={"g": "30", "crf": "32", "b": "0", "cpu-used": "8"})
    counts = count_decoded(monkeypatch)
    assert_same_with_and_without_skipping(path, expect_stamps=False)
    info = PyAVBackend().probe(path)
    counts.clear()
    PyAVBackend().read(path, [50, 60], info)
    assert counts == [61 - 30]  # from the keyframe at 30, every frame decoded


def count_opens(backend: PyAVBackend, monkeypatch) -> list:
    opened, original = [], backend._open

    def counted(path):
        opened.append(str(path))
        return original(path)

    monkeypatch.setattr(backend, "_open", counted)
    return opened


def test_a_file_is_probed_once_until_it_changes(tmp_path, monkeypatch):
    path = write_video(tmp_path / "clip.mp4", num_frames=20)
    backend = PyAVBackend()
    opened = count_opens(backend, monkeypatch)
    first = backend.probe(path)
    assert backend.probe(str(path)) == first and len(opened) == 1
    backend.read(path, [3, 4])  # reading probes too: from the cache
    assert len(opened) == 2  # the decode's own open
    # the same size, a new modification time: probed again
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    backend.probe(path)
    assert len(opened) == 3
    # replaced by a longer video: probed again, and its new count seen
    write_video(tmp_path / "clip.mp4", num_frames=30)
    assert backend.probe(path).num_frames == 30 and len(opened) == 4


def test_the_probe_cache_is_bounded_and_never_keeps_videos_in_memory(tmp_path, monkeypatch):
    paths = [write_video(tmp_path / f"{k}.mp4", num_frames=10) for k in range(3)]
    backend = PyAVBackend(probe_cache=2)
    opened = count_opens(backend, monkeypatch)
    for path in [*paths, paths[2], paths[0]]:  # the first was pushed out by the third
        backend.probe(path)
    assert opened == [str(p) for p in [*paths, paths[0]]]
    data = VideoBytes(paths[0].read_bytes(), "member.mp4")
    backend.probe(data)
    backend.probe(data)
    assert opened[-2:] == ["member.mp4", "member.mp4"]
    uncached = PyAVBackend(probe_cache=0)
    opened = count_opens(uncached, monkeypatch)
    uncached.probe(paths[1])
    uncached.probe(paths[1])
    assert len(opened) == 2
