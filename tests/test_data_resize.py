"""`mar data resize`: every video re-encoded once, smaller, with frequent keyframes."""

import contextlib
import csv
import io
import os
import shutil

import av
import numpy as np
import pytest
from videos import REAL, REAL_FRAMES, corrupt, write_pattern_video, write_video

from mar.cli import build_parser, main
from mar.data import ClipSampling, TrainTransform, VideoDataset, read_list
from mar.data.decode import PyAVBackend
from mar.data.resize import ResizeSettings, output_name, resize_list

# short side 48, a keyframe every 0.5 s; the fastest preset keeps the test quick
ARGS = ["--short-side", "48", "--keyframe-interval", "0.5", "--preset", "ultrafast"]
SETTINGS = ResizeSettings(48, 0.5, 23, "ultrafast")
VFR_MS = [i * 40 + (i % 3) * 7 for i in range(20)]  # presentation times, milliseconds
probe = PyAVBackend().probe


def _source_set(root):
    """5 videos (one listed twice) and 2 unreadable files, in class folders."""
    (root / "walk").mkdir(parents=True)
    (root / "run").mkdir()
    write_video(root / "walk" / "long_gop.mp4", num_frames=60, size=(96, 64), fps=30,
                gop=60)
    frames = np.random.default_rng(0).integers(0, 255, (24, 31, 41, 3), dtype=np.uint8)
    write_pattern_video(root / "run" / "odd_small.mkv", frames)  # 41x31: below 48
    write_video(root / "run" / "vfr.mp4", num_frames=20, size=(64, 48), stamps=VFR_MS)
    shutil.copy(REAL / "tree.avi", root / "walk" / "tree.avi")
    shutil.copy(REAL / "Megamind.avi", root / "run" / "megamind.avi")  # packed B-frames
    (root / "run" / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    corrupt(root / "walk" / "long_gop.mp4", root / "walk" / "cut.mp4", "truncated")
    rows = ["walk/long_gop.mp4 0", "run/odd_small.mkv 1", "run/notes.mp4 2",
            "run/vfr.mp4 3", "walk/tree.avi 4", "walk/cut.mp4 5", "walk/long_gop.mp4 6",
            "run/megamind.avi 7"]
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root / "train.csv"


@pytest.fixture(scope="module")
def resized(tmp_path_factory):
    """The source set converted once by the command (2 worker processes)."""
    root = tmp_path_factory.mktemp("resize")
    lst = _source_set(root / "src")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["data", "resize", str(lst), "--root", str(root / "src"), "--out",
                     str(root / "out"), "--workers", "2", *ARGS])
    return root / "src", root / "out", code, stdout.getvalue()


def _report(out):
    with open(out / "train.resize.csv") as f:
        return {os.path.basename(r["source"]): r for r in csv.DictReader(f)}


def _stamps(path):
    with av.open(str(path)) as c:
        return [float(f.pts * f.time_base) for f in c.decode(video=0)]


def test_the_command_converts_the_readable_videos_and_prints_the_summary(resized):
    _, out, code, stdout = resized
    assert code == 0
    assert ("7 videos: 5 converted, 0 skipped (already done), 2 unreadable; " in stdout
            and " -> " in stdout)
    assert f"new list: {out}/train.csv (6 videos; read it with --root {out}" in stdout
    assert "unreadable: " in stdout and "notes.mp4" in stdout
    assert not list(out.rglob(".tmp-*"))


def test_outputs_have_the_short_side_asked_or_the_source_size_when_smaller(resized):
    _, out, _, _ = resized
    sizes = {name: (probe(out / name).width, probe(out / name).height)
             for name in ("walk/long_gop.mp4", "run/odd_small.mp4", "run/vfr.mp4",
                          "walk/tree.mp4", "run/megamind.mp4")}
    # 96x64 -> 72x48, 320x240 -> 64x48, 720x528 -> 65x48 -> 64x48 (even for yuv420p);
    # 64x48 kept; 41x31 kept, made even
    assert sizes == {"walk/long_gop.mp4": (72, 48), "walk/tree.mp4": (64, 48),
                     "run/megamind.mp4": (64, 48), "run/vfr.mp4": (64, 48),
                     "run/odd_small.mp4": (40, 30)}


def test_outputs_keep_every_frame_and_its_timestamp_with_a_keyframe_every_interval(resized):
    src, out, _, _ = resized
    for source, output in [("walk/long_gop.mp4", "walk/long_gop.mp4"),
                           ("run/odd_small.mkv", "run/odd_small.mp4"),
                           ("run/vfr.mp4", "run/vfr.mp4"), ("walk/tree.avi", "walk/tree.mp4"),
                           ("run/megamind.avi", "run/megamind.mp4")]:
        before, after = probe(src / source), probe(out / output)
        assert after.num_frames == before.num_frames, output
        with av.open(str(out / output)) as c:
            assert c.streams.video[0].codec_context.name == "h264"
            assert not c.streams.audio
        # a keyframe every round(0.5 s * average rate) frames, no other (not the source's)
        gop = round(0.5 * before.fps)
        assert after.keyframes == tuple(range(0, after.num_frames, gop)), output
    assert probe(src / "walk/long_gop.mp4").keyframes == (0,)  # the source: one GOP
    assert probe(out / "walk/tree.mp4").num_frames == REAL_FRAMES["tree.avi"]
    assert probe(out / "run/megamind.mp4").num_frames == REAL_FRAMES["Megamind.avi"]
    # variable frame rate, tree.avi's gaps (68 of 444 frames), and Megamind.avi, whose
    # decoder labels its frames out of order (AVI, packed B-frames): the same times
    assert _stamps(out / "run/vfr.mp4") == pytest.approx([t / 1000 for t in VFR_MS],
                                                         abs=1e-3)
    for source, output in [("walk/tree.avi", "walk/tree.mp4"),
                           ("run/megamind.avi", "run/megamind.mp4")]:
        assert _stamps(out / output) == pytest.approx(sorted(_stamps(src / source)),
                                                      abs=1e-3), output


def test_the_new_list_keeps_labels_and_order_without_the_unreadable_rows(resized):
    _, out, _, _ = resized
    records = read_list(out / "train.csv", root=out)
    assert [(os.path.relpath(r.path, out), r.label) for r in records] == [
        ("walk/long_gop.mp4", 0), ("run/odd_small.mp4", 1), ("run/vfr.mp4", 3),
        ("walk/tree.mp4", 4), ("walk/long_gop.mp4", 6), ("run/megamind.mp4", 7)]
    assert not (out / "train.csv").read_text().startswith(str(out))  # relative paths


def test_the_report_names_each_video_and_why_the_unreadable_ones_failed(resized):
    _, out, _, _ = resized
    report = _report(out)
    assert {name: r["status"] for name, r in report.items()} == {
        "long_gop.mp4": "ok", "odd_small.mkv": "ok", "notes.mp4": "unreadable",
        "vfr.mp4": "ok", "tree.avi": "ok", "cut.mp4": "unreadable", "megamind.avi": "ok"}
    assert "cannot open as video" in report["notes.mp4"]["note"]
    assert "cannot open as video" in report["cut.mp4"]["note"]
    tree = report["tree.avi"]
    assert (tree["source_size"], tree["output_size"], tree["frames"]) == ("320x240", "64x48",
                                                                           "68")
    assert int(tree["output_bytes"]) == os.path.getsize(out / "walk/tree.mp4")


def test_resized_videos_feed_the_training_dataset(resized):
    _, out, _, _ = resized
    ds = VideoDataset(read_list(out / "train.csv", root=out),
                      sampling=ClipSampling("dense", num_frames=4, stride=2),
                      train_transform=TrainTransform(crop_size=32, rand_augment=None))
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape == (3, 4, 32, 32) and item["skipped"] == []


def _small_set(root):
    (root / "a").mkdir(parents=True)
    write_video(root / "a" / "one.mp4", num_frames=30, size=(96, 64), fps=30, gop=30)
    write_video(root / "a" / "two.mp4", num_frames=30, size=(96, 64), fps=30, gop=30)
    (root / "list.txt").write_text("a/one.mp4 0\na/two.mp4 1\n")
    return root / "list.txt"


def test_a_rerun_converts_nothing_and_leaves_the_outputs_untouched(tmp_path):
    lst = _small_set(tmp_path / "src")
    out = tmp_path / "out"
    first = resize_list(lst, out, tmp_path / "src", SETTINGS, workers=1)
    assert [r.status for r in first.results] == ["ok", "ok"]
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    again = resize_list(lst, out, tmp_path / "src", SETTINGS, workers=1)
    assert [r.status for r in again.results] == ["skipped", "skipped"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")} == mtimes
    assert "0 converted, 2 skipped (already done), 0 unreadable" in again.summary()
    assert [r.label for r in read_list(out / "list.txt")] == [0, 1]


def test_a_deleted_output_and_a_stale_temporary_file_are_redone_alone(tmp_path):
    lst = _small_set(tmp_path / "src")
    out = tmp_path / "out"
    resize_list(lst, out, tmp_path / "src", SETTINGS, workers=1)
    kept = (out / "a" / "one.mp4").stat().st_mtime_ns
    # what a run killed while writing two.mp4 leaves: no output, a half-written temporary
    stale = out / "a" / ".tmp-two.mp4-0123abcd"
    os.replace(out / "a" / "two.mp4", stale)
    stale.write_bytes(stale.read_bytes()[:500])
    run = resize_list(lst, out, tmp_path / "src", SETTINGS, workers=1)
    assert [r.status for r in run.results] == ["skipped", "ok"]
    assert (out / "a" / "one.mp4").stat().st_mtime_ns == kept
    assert probe(out / "a" / "two.mp4").num_frames == 30
    assert not stale.exists()


def test_an_output_made_with_other_settings_or_from_a_changed_source_is_redone(tmp_path):
    lst = _small_set(tmp_path / "src")
    out = tmp_path / "out"
    resize_list(lst, out, tmp_path / "src", SETTINGS, workers=1)
    run = resize_list(lst, out, tmp_path / "src", ResizeSettings(32, 0.5, 23, "ultrafast"),
                      workers=1)
    assert [r.status for r in run.results] == ["ok", "ok"]
    assert probe(out / "a" / "one.mp4").height == 32
    write_video(tmp_path / "src" / "a" / "two.mp4", num_frames=20, size=(96, 64))
    run = resize_list(lst, out, tmp_path / "src", ResizeSettings(32, 0.5, 23, "ultrafast"),
                      workers=1)
    assert [r.status for r in run.results] == ["skipped", "ok"]
    assert probe(out / "a" / "two.mp4").num_frames == 20


def test_a_missing_list_is_a_one_line_error_with_exit_2(tmp_path, capsys):
    assert main(["data", "resize", str(tmp_path / "nope.csv"), "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{tmp_path}/nope.csv: no such list file" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option,says", [(["--preset", "fastest"], "unknown x264 preset"),
                                         (["--short-side", "1"], "at least 2 pixels")])
def test_bad_settings_are_a_one_line_error_before_anything_is_written(tmp_path, capsys,
                                                                     option, says):
    (tmp_path / "l.csv").write_text("a.mp4 0\n")
    assert main(["data", "resize", str(tmp_path / "l.csv"), "--out", str(tmp_path / "out"),
                 *option]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err
    assert not (tmp_path / "out").exists()


def test_a_list_with_no_readable_video_exits_1_and_writes_no_list(tmp_path, capsys):
    (tmp_path / "bad.mp4").write_text("not a video\n" * 10)
    (tmp_path / "l.csv").write_text("bad.mp4 0\nmissing.mp4 1\n")
    out = tmp_path / "out"
    assert main(["data", "resize", str(tmp_path / "l.csv"), "--root", str(tmp_path),
                 "--out", str(out), "--workers", "1"]) == 1
    assert "2 unreadable" in capsys.readouterr().out
    assert not (out / "l.csv").exists() and (out / "l.resize.csv").is_file()


def test_outputs_that_would_collide_or_replace_a_source_are_refused(tmp_path):
    (tmp_path / "l.csv").write_text("a.avi 0\na.mkv 1\n")
    with pytest.raises(ValueError, match="would both be written to"):
        resize_list(tmp_path / "l.csv", tmp_path / "out", tmp_path)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "l.csv").write_text("a.mp4 0\n")
    with pytest.raises(ValueError, match="would replace the source"):
        resize_list(tmp_path / "lists" / "l.csv", tmp_path, tmp_path)
    with pytest.raises(ValueError, match="the new list would replace it"):
        resize_list(tmp_path / "lists" / "l.csv", tmp_path / "lists", tmp_path)
    assert output_name(str(tmp_path / "k" / "x.webm"), tmp_path, tmp_path / "lists") \
        .as_posix() == "k/x.mp4"
    with pytest.raises(ValueError, match="give --root"):
        output_name("/elsewhere/x.mp4", tmp_path, tmp_path)


def test_the_command_defaults_are_the_library_defaults():
    args = build_parser().parse_args(["data", "resize", "l.csv", "--out", "o"])
    assert ResizeSettings(args.short_side, args.keyframe_interval, args.crf,
                          args.preset) == ResizeSettings()
