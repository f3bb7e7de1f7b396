import json
import subprocess
import sys

import pytest
from videos import REAL

from mar.cli import main
from mar.data.lists import ListError, read_class_names, read_list
from mar.data.prepare import prepare_dataset


def test_space_and_comma_lists_with_a_root(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("a/b c.mp4 3\n\n/abs/x.avi 0\n")
    recs = read_list(f, root="/data")
    assert [(r.path, r.label) for r in recs] == [("/data/a/b c.mp4", 3), ("/abs/x.avi", 0)]
    f.write_text("a.mp4,7\n")
    assert read_list(f)[0].label == 7


@pytest.mark.parametrize("text,match", [
    ("a.mp4\n", "expected '<path> <label>'"),
    ("a.mp4 x\n", "is not an integer"),
    ("a.mp4 -1\n", "negative label"),
    ("", "no videos listed"),
])
def test_bad_lists_name_file_and_line(tmp_path, text, match):
    f = tmp_path / "l.txt"
    f.write_text(text)
    with pytest.raises(ListError, match=match):
        read_list(f)


@pytest.mark.parametrize("content,says", [
    (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)), "l.txt: a binary file, not a text list"),
    ("a.mp4 1\ncaf\u00e9.mp4 2\n".encode("latin-1"), "l.txt:2: not UTF-8 text (byte 0xe9)"),
    ("a.mp4 1\n".encode("utf-16"), "l.txt: UTF-16 text, expected a UTF-8 list"),
])
def test_data_check_of_a_file_that_is_not_utf8_text_names_it(tmp_path, capsys, content, says):
    f = tmp_path / "l.txt"
    f.write_bytes(content)
    assert main(["data", "check", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err and f"{tmp_path}/{says}" in err


def test_class_names_that_are_not_utf8_text_name_the_file(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_bytes(b"\x00\x01binary")
    with pytest.raises(ListError, match="classes.txt: a binary file, not a text class-name"):
        read_class_names(f)
    f.write_bytes("\ufeffcaf\u00e9\nth\u00e9\n".encode())  # UTF-8 with a byte-order mark is fine
    assert read_class_names(f) == ["caf\u00e9", "th\u00e9"]


def _touch(root, *names):
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_prepare_kinetics(tmp_path):
    meta, vids, out = tmp_path / "meta", tmp_path / "videos", tmp_path / "out"
    meta.mkdir()
    (meta / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "riding a bike,abc,10,20,train\nabseiling,def,0,10,train\nabseiling,ghi,5,15,train\n")
    (meta / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nriding a bike,zzz,1,11,validate\n")
    _touch(vids, "train/riding a bike/abc_000010_000020.mp4",
           "train/abseiling/def_000000_000010.mp4", "val/zzz_000001_000011.mp4")
    rep = prepare_dataset("kinetics", meta, vids, out)
    assert (rep["train"].listed, rep["train"].found) == (3, 2)
    assert rep["train"].missing == ["ghi_000005_000015"]
    assert read_class_names(out / "classes.txt") == ["abseiling", "riding a bike"]
    labels = {r.path.split("/")[-1]: r.label for r in read_list(out / "train.csv")}
    assert labels == {"abc_000010_000020.mp4": 1, "def_000000_000010.mp4": 0}
    assert read_list(out / "val.csv")[0].label == 1
    assert (out / "missing_train.txt").read_text().split() == ["ghi_000005_000015"]


def test_prepare_ssv2(tmp_path):
    meta, vids, out = tmp_path / "meta", tmp_path / "videos", tmp_path / "out"
    meta.mkdir()
    (meta / "labels.json").write_text(json.dumps({"Pushing something from left to right": "1",
                                                  "Holding something": "0"}))
    (meta / "train.json").write_text(json.dumps([
        {"id": "11", "label": "holding a cup", "template": "Holding [something]"},
        {"id": "12", "label": "pushing a cup",
         "template": "Pushing [something] from left to right"}]))
    (meta / "validation.json").write_text(json.dumps([
        {"id": "13", "label": "holding a pen", "template": "Holding [something]"}]))
    _touch(vids, "11.webm", "12.mp4", "13.webm")
    rep = prepare_dataset("ssv2", meta, vids, out)
    assert rep["train"].found == 2 and rep["val"].found == 1
    assert [r.label for r in read_list(out / "train.csv")] == [0, 1]
    assert read_class_names(out / "classes.txt")[1] == "Pushing something from left to right"


def test_prepare_ucf101_and_hmdb51(tmp_path):
    meta, vids, out = tmp_path / "ucf", tmp_path / "ucfv", tmp_path / "ucfo"
    meta.mkdir()
    (meta / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (meta / "trainlist02.txt").write_text("Archery/v_Archery_g08_c01.avi 2\n")
    (meta / "testlist02.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
    _touch(vids, "Archery/v_Archery_g08_c01.avi")
    rep = prepare_dataset("ucf101", meta, vids, out, split=2)
    assert read_list(out / "train.csv")[0].label == 1
    assert rep["val"].missing == ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"]

    meta, vids, out = tmp_path / "hmdb", tmp_path / "hmdbv", tmp_path / "hmdbo"
    meta.mkdir()
    (meta / "wave_test_split1.txt").write_text("w1.avi 1\nw2.avi 2\nw3.avi 0\n")
    (meta / "clap_test_split1.txt").write_text("c1.avi 1\n")
    _touch(vids, "wave/w1.avi", "wave/w2.avi", "wave/w3.avi", "clap/c1.avi")
    rep = prepare_dataset("hmdb51", meta, vids, out)
    assert read_class_names(out / "classes.txt") == ["clap", "wave"]
    assert sorted((r.path.split("/")[-1], r.label) for r in read_list(out / "train.csv")) == \
        [("c1.avi", 0), ("w1.avi", 1)]
    assert rep["val"].found == 1


def test_prepare_errors_are_clear(tmp_path, capsys):
    assert main(["data", "prepare", "ssv2", "--annotations", str(tmp_path), "--videos",
                 str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "labels.json: missing metadata file" in capsys.readouterr().err


def test_data_check_and_bench_on_the_real_files(tmp_path):
    lst = tmp_path / "real.csv"
    (tmp_path / "empty.mp4").write_bytes(b"")
    lst.write_text("".join(f"{REAL / n} {i}\n" for i, n in
                           enumerate(["bigbuckbunny.mp4", "Megamind.avi", "tree.avi"]))
                   + f"{tmp_path / 'empty.mp4'} 0\n")
    out = subprocess.run([sys.executable, "-m", "mar", "data", "check", str(lst),
                          "--clean-list", str(tmp_path / "clean.csv")],
                         capture_output=True, text=True, check=True).stdout
    assert "2 ok, 1 suspicious, 1 unreadable" in out
    assert "header claims 444 frames, 68 decode" in out
    assert len(read_list(tmp_path / "clean.csv")) == 3
    report = (tmp_path / "real.csv.check.csv").read_text()
    assert "tree.avi,2,suspicious,68,444" in report
    out = subprocess.run([sys.executable, "-m", "mar", "data", "bench",
                          str(tmp_path / "clean.csv"), "--backend", "pyav", "--clips", "4",
                          "--workers", "0", "--crop-size", "64"],
                         capture_output=True, text=True, check=True).stdout
    assert "| pyav | decode only | 1 |" in out
    assert "| pyav | decode + train augmentation | 0 |" in out
