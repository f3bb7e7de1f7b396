"""``mar serve`` against the real server: a subprocess on a free localhost port serving a
tiny random model, called over HTTP with httpx. Plus the batcher and the upload decoder
in-process."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import httpx
import pytest
import torch
from conftest import MODEL
from videos import REAL, corrupt, write_video

from mar import create_model
from mar.data import DecodeError, VideoRecord
from mar.data.windows import window_starts
from mar.flops import model_cost
from mar.inference import load_model
from mar.inference.timeline import smooth_probs
from mar.models.io import save_model
from mar.serve.batcher import BatcherClosed, MicroBatcher
from mar.serve.predictor import ServedModel, TimelineTimeout, VideoTooLong

spec = importlib.util.spec_from_file_location(
    "bench_serve", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_serve.py")
bench_serve = importlib.util.module_from_spec(spec)
sys.modules["bench_serve"] = bench_serve  # its dataclasses look their module up
spec.loader.exec_module(bench_serve)
ServerProcess, run_load = bench_serve.ServerProcess, bench_serve.run_load

KWARGS = MODEL
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server(model_dir):
    """The server as documented, with a token, a 2 MiB upload limit (the real test videos
    are 0.9-1.3 MB) and a 200-frame limit."""
    with ServerProcess(model_dir, "--class-names", str(model_dir / "classes.txt"),
                       "--max-upload-mb", "2", "--max-frames", "200", token=TOKEN) as s:
        yield s


def post(server, path: Path | None, token: str | None = TOKEN, **form):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    files = {"video": (path.name, path.read_bytes())} if path is not None else None
    return httpx.post(f"{server.url}/v1/predict", files=files, data=form or None,
                      headers=headers, timeout=120)


def test_predict_answers_the_documented_schema(server, model_dir):
    r = post(server, REAL / "tree.avi")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["filename"] == "tree.avi"
    top = body["top"]
    assert len(top) == 5 and len({t["class"] for t in top}) == 5
    assert [t["prob"] for t in top] == sorted((t["prob"] for t in top), reverse=True)
    assert 0 < sum(t["prob"] for t in top) <= 1 + 1e-6
    assert all(t["name"] == f"class {t['class']}" for t in top)
    assert body["model"]["name"] == "vit_nano" and body["model"]["decoder"] is True
    assert body["masking"] == {"name": "cell_running", "ratio": 0.5, "visible_tokens": 32,
                               "tokens": 64, "line": "test-time masking: cell_running 50% "
                               "(32 of 64 tokens visible)"}
    _, cfg = load_model(model_dir)
    spec = cfg.model.model_dump()
    expected = model_cost(spec.pop("name"), cfg.test_masking(), **spec).gflops
    assert body["gflops_per_view"] == pytest.approx(expected)
    assert (body["views"], body["clips"], body["crops"]) == (15, 5, 3)
    assert body["video"]["frames"] == 68          # decodable frames, not the header's 444
    assert set(body["timing_ms"]) == {"decode", "queue", "model", "total"}
    assert all(v >= 0 for v in body["timing_ms"].values())
    assert body["batch"]["views"] >= 15 and body["batch"]["requests"] >= 1
    assert "pictures" not in body
    assert len(post(server, REAL / "tree.avi", topk="2").json()["top"]) == 2


def test_served_scores_equal_mar_predict(server, model_dir):
    videos = [REAL / "bigbuckbunny.mp4", REAL / "tree.avi", REAL / "Megamind_bugy.avi"]
    out = subprocess.run([sys.executable, "-m", "mar", "predict", *map(str, videos),
                          "--checkpoint", str(model_dir), "--class-names",
                          str(model_dir / "classes.txt"), "--json", "--topk", "5"],
                         capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    expected = {Path(r["video"]).name: r for r in json.loads(out.stdout)}
    answers = {}

    def ask(video):  # concurrently, so the views of several uploads may share a batch
        answers[video.name] = post(server, video)

    threads = [threading.Thread(target=ask, args=(v,)) for v in videos
               if v.name != "Megamind_bugy.avi"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answers["Megamind_bugy.avi"] = None
    for name, ref in expected.items():
        if name == "Megamind_bugy.avi":   # 270 frames: over this server's --max-frames
            continue
        body = answers[name].json()
        assert answers[name].status_code == 200, body
        assert body["views"] == ref["views"]
        assert [t["class"] for t in body["top"]] == [t["class"] for t in ref["top"]]
        assert [t["name"] for t in body["top"]] == [t["name"] for t in ref["top"]]
        for got, want in zip(body["top"], ref["top"], strict=True):
            assert got["prob"] == pytest.approx(want["prob"], abs=2e-5)


def timeline_probs(timeline: dict) -> torch.Tensor:
    """(windows, classes) probabilities of a timeline JSON holding every class."""
    return torch.tensor([[row["prob"] for row in sorted(w["top"], key=lambda r: r["class"])]
                         for w in timeline["windows"]])


def test_timeline_windows_equal_mar_predict_window(server, model_dir, tmp_path):
    """window 2 s, stride 1 s over bigbuckbunny.mp4 (132 frames at 25 fps): the windows
    start every second from 0, the last one ends at the end of the video, and every
    window's probabilities are those `mar predict --window 2 --stride 1 --out` writes."""
    from mar.cli import main

    video = REAL / "bigbuckbunny.mp4"
    r = post(server, video, window="2", stride="1", topk="6")
    assert r.status_code == 200, r.text
    body = r.json()
    tl = body["timeline"]
    assert (tl["video"], tl["window"], tl["stride"], tl["smooth"]) == (video.name, 2, 1, 1)
    duration = body["video"]["frames"] / body["video"]["fps"]          # 5.28 s
    starts = [w["start"] for w in tl["windows"]]
    assert starts == window_starts(duration, 2, 1) == [0, 1, 2, 3, 4]
    assert [w["end"] for w in tl["windows"]][:-1] == [2, 3, 4, 5]
    assert tl["windows"][-1]["end"] == pytest.approx(duration)      # covers the video
    assert "timeline" in body["timing_ms"] and body["top"]          # and the usual answer
    assert main(["predict", str(video), "--checkpoint", str(model_dir), "--class-names",
                 str(model_dir / "classes.txt"), "--window", "2", "--stride", "1",
                 "--topk", "6", "--out", str(tmp_path)]) == 0
    ref = json.loads((tmp_path / "bigbuckbunny.timeline.json").read_text())
    assert set(ref) == set(tl)                                      # the same JSON shape
    assert [(w["start"], w["end"]) for w in ref["windows"]] == [
        (w["start"], w["end"]) for w in tl["windows"]]
    for got, want in zip(tl["windows"], ref["windows"], strict=True):
        assert [t["name"] for t in got["top"]] == [t["name"] for t in want["top"]]
    got, want = timeline_probs(tl), timeline_probs(ref)
    assert got.shape == (5, 6)
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()
    # smooth=3 is the centred moving average of those windows (mar predict --smooth 3)
    smoothed = post(server, video, window="2", stride="1", topk="6", smooth="3").json()
    assert smoothed["timeline"]["smooth"] == 3
    assert torch.allclose(timeline_probs(smoothed["timeline"]), smooth_probs(got, 3),
                          atol=2e-5)


def test_timeline_bad_values_get_422_and_no_timeline_field_without_window(server):
    video = REAL / "bigbuckbunny.mp4"        # 5.3 s at 25 fps; this server: 200 frames
    cases = {"negative window": ({"window": "-1"}, "window: must be a positive"),
             "zero window": ({"window": "0"}, "window: must be a positive"),
             "not a number": ({"window": "two"}, "window: Input should be a valid number"),
             "nan": ({"window": "nan"}, "window: must be a positive"),
             "zero stride": ({"window": "2", "stride": "0"}, "stride: must be a positive"),
             "negative stride": ({"window": "2", "stride": "-0.5"},
                                 "stride: must be a positive"),
             "stride without window": ({"stride": "1"}, "stride: needs window"),
             "smooth without window": ({"smooth": "3"}, "smooth: needs window"),
             "even smooth": ({"window": "2", "smooth": "2"}, "smooth: must be an odd"),
             "smooth not a number": ({"window": "2", "smooth": "x"},
                                     "smooth: Input should be a valid integer"),
             "window over the duration limit": ({"window": "9"}, "window: 9 s is longer "
                                                "than the longest video this server takes "
                                                "(200 frames, --max-frames: 8 s"),
             "too many windows": ({"window": "2", "stride": "0.001"},
                                  "stride: 4281 windows of 2 s every 0.001 s, over the "
                                  "limit of 1000 (--max-windows)")}
    for what, (form, detail) in cases.items():
        r = post(server, video, **form)
        assert (r.status_code, r.json().get("error")) == (422, "invalid_request"), (
            what, r.text[:300])
        assert r.json()["detail"].startswith(detail), (what, r.json()["detail"])
        assert "\n" not in r.json()["detail"]
    r = post(server, REAL / "Megamind.avi", window="1")            # 270 frames: still 413
    assert (r.status_code, r.json()["error"]) == (413, "video_too_long")
    body = post(server, video).json()
    assert "timeline" not in body and "timeline" not in body["timing_ms"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    src = REAL / "bigbuckbunny.mp4"
    big = d / "big.mp4"
    big.write_bytes(b"\0" * (3 * 1024 * 1024))      # over the server's 2 MiB
    return {"zero-byte": (corrupt(src, d / "empty.mp4", "empty"), 422, "not_a_video"),
            "truncated": (corrupt(src, d / "truncated.mp4", "truncated"), 422,
                          "not_a_video"),
            "text file": (corrupt(src, d / "notes.txt", "not_video"), 422, "not_a_video"),
            "oversized": (big, 413, "upload_too_large"),
            "too many frames": (REAL / "Megamind.avi", 413, "video_too_long")}


def test_bad_inputs_get_their_status_and_the_server_keeps_answering(server, bad_files,
                                                                    tmp_path):
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(torch.randint(0, 256, (200_000,), dtype=torch.uint8).numpy().tobytes())
    cases = {**bad_files, "random bytes": (noise, 422, "not_a_video")}
    before = {c: server.metric(f'mar_requests_total{{code="{c}"}}', 0.0)
              for c in (401, 413, 422)}
    for what, (path, status, code) in cases.items():
        r = post(server, path)
        assert (r.status_code, r.json().get("error")) == (status, code), (what, r.text[:300])
        assert "\n" not in r.json()["detail"] and r.json()["detail"]
        if status == 422:
            assert r.json()["detail"].startswith(path.name), r.text  # names the upload
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    r = post(server, None)                                         # missing field
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request")
    assert "video" in r.json()["detail"]
    r = httpx.post(f"{server.url}/v1/predict", data={"video": "not a file"},
                   headers=server.headers, timeout=30)              # a field, not a file
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request")
    for token in ("wrong", None):
        r = post(server, REAL / "tree.avi", token=token)
        assert (r.status_code, r.json()["error"]) == (401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
    r = post(server, REAL / "tree.avi", topk="0")
    assert (r.status_code, r.json()["error"]) == (422, "invalid_request")
    assert post(server, REAL / "tree.avi").status_code == 200     # still answering
    counted = {c: server.metric(f'mar_requests_total{{code="{c}"}}') - before[c]
               for c in before}
    assert counted == {401: 2, 413: 2, 422: 7}


def test_an_oversized_body_without_content_length_is_refused(server):
    def chunks():                                  # chunked transfer: no Content-Length
        boundary = b"--xyz\r\n"
        yield boundary + (b'Content-Disposition: form-data; name="video"; '
                          b'filename="big.mp4"\r\nContent-Type: video/mp4\r\n\r\n')
        for _ in range(48):
            yield b"\0" * 65536                    # 3 MiB in all
        yield b"\r\n--xyz--\r\n"

    r = httpx.post(f"{server.url}/v1/predict", content=chunks(), timeout=60,
                   headers={**server.headers,
                            "Content-Type": "multipart/form-data; boundary=xyz"})
    assert (r.status_code, r.json()["error"]) == (413, "upload_too_large")
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200


def test_health_readiness_metrics_and_page(server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["status"] == "ready" and ready["views"] == 15
    assert httpx.get(f"{server.url}/metrics").status_code == 401   # token-protected
    text = httpx.get(f"{server.url}/metrics", headers=server.headers).text
    for name in ("mar_requests_total", "mar_request_seconds_bucket", "mar_batch_views_bucket",
                 "mar_queue_depth", "mar_inflight_requests", "mar_ready 1.0",
                 "process_resident_memory_bytes"):
        assert name in text, name
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and 'id="video"' in page.text
    assert httpx.get(f"{server.url}/nope").json()["error"] == "http_error"


def test_pictures_show_the_masked_tokens_and_the_reconstruction(server):
    import base64
    import io

    from PIL import Image

    body = post(server, REAL / "bigbuckbunny.mp4", pictures="true").json()
    pictures = body["pictures"]
    sizes = set()
    for key in ("original", "masked", "reconstruction"):
        head, data = pictures[key].split(",", 1)
        assert head == "data:image/png;base64"
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        sizes.add(image.size)
    assert len(sizes) == 1                          # three strips of the same frames
    # decode the strips: 8 frames of 64 x 64 side by side, scaled 2x (nearest) to 128 high
    import numpy as np

    from mar.masking import make_masking

    strips = {k: np.asarray(Image.open(io.BytesIO(base64.b64decode(
        pictures[k].split(",", 1)[1]))).convert("RGB")).astype(np.int16)
        for k in ("original", "masked", "reconstruction")}
    frames, side, patch, tubelet, scale = KWARGS["num_frames"], KWARGS["img_size"], \
        KWARGS["patch_size"], 2, 2
    assert strips["original"].shape == (side * scale, frames * side * scale, 3)
    grid = (frames // tubelet, side // patch, side // patch)
    hidden = make_masking("cell_running", 0.5)(1, grid, train=False).bool()[0].view(grid)
    cover = hidden.repeat_interleave(tubelet, 0).repeat_interleave(patch * scale, 1) \
        .repeat_interleave(patch * scale, 2)                       # (T, H, W) pixels
    cover = cover.permute(1, 0, 2).reshape(side * scale, -1).numpy()  # as the strip
    assert cover.mean() == 0.5
    original, masked, rebuilt = strips["original"], strips["masked"], strips["reconstruction"]
    # the masked picture greys exactly the masked tokens' pixels, and keeps the others
    assert (masked[cover] == 128).all()
    assert np.array_equal(masked[~cover], original[~cover])
    assert not (original[cover] == 128).all()                     # greying is visible
    # the reconstruction keeps the visible pixels and fills the masked ones with the
    # decoder's prediction (mapped back with each patch's mean and std): closer to the
    # input than uniform noise (by half: noise drawn into the masked pixels would match
    # the noise's own error) and than the flat grey it replaces
    assert np.array_equal(rebuilt[~cover], original[~cover])
    noise = np.random.default_rng(0).integers(0, 256, original.shape)
    error = {name: np.abs(x[cover] - original[cover]).mean()
             for name, x in (("rebuilt", rebuilt), ("noise", noise), ("grey", masked))}
    assert error["rebuilt"] < 0.5 * error["noise"] and error["rebuilt"] < error["grey"], error


def test_busy_and_timeout_answers(model_dir):
    """One request in flight at most, held 3 s in the batcher, 1 s timeout: the first
    request gets 504, a second one sent meanwhile 429; the server answers after both."""
    with ServerProcess(model_dir, "--queue-size", "1", "--max-wait-ms", "3000",
                       "--max-batch-size", "64", "--timeout-s", "1") as s:
        video = (REAL / "tree.avi").read_bytes()
        first = {}
        t = threading.Thread(target=lambda: first.update(r=httpx.post(
            f"{s.url}/v1/predict", files={"video": ("tree.avi", video)}, timeout=60)))
        t.start()
        deadline = time.monotonic() + 30
        while s.metric("mar_inflight_requests") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        second = httpx.post(f"{s.url}/v1/predict", files={"video": ("tree.avi", video)},
                            timeout=60)
        t.join()
        assert (second.status_code, second.json()["error"]) == (429, "busy")
        assert second.headers["retry-after"] == "1"
        assert (first["r"].status_code, first["r"].json()["error"]) == (504, "timeout")
        assert httpx.get(f"{s.url}/readyz", timeout=10).status_code == 200


def test_shutdown_lets_requests_in_flight_finish(model_dir):
    s = ServerProcess(model_dir, "--max-wait-ms", "2000", "--max-batch-size", "64")
    with s:
        answer = {}
        t = threading.Thread(target=lambda: answer.update(r=httpx.post(
            f"{s.url}/v1/predict", files={"video": ("tree.avi",
                                                    (REAL / "tree.avi").read_bytes())},
            timeout=60)))
        t.start()
        deadline = time.monotonic() + 30
        while s.metric("mar_inflight_requests") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        s.process.send_signal(signal.SIGTERM)       # while the request waits in the batcher
        t.join()
        assert answer["r"].status_code == 200, answer["r"].text
        assert len(answer["r"].json()["top"]) == 5
        # uvicorn exits by re-raising the signal once it has shut down cleanly
        assert s.process.wait(60) in (0, -signal.SIGTERM), s.output()
        assert "Application shutdown complete" in s.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{s.url}/healthz")


def test_a_checkpoint_that_does_not_load_fails_the_command(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    out = subprocess.run([sys.executable, "-m", "mar", "serve", "--checkpoint", str(broken),
                          "--port", str(bench_serve.free_port())], capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 2
    assert "mar serve: error: could not load" in out.stderr
    out = subprocess.run([sys.executable, "-m", "mar", "serve", "--checkpoint",
                          str(tmp_path / "missing")], capture_output=True, text=True)
    assert out.returncode == 2 and "no such file or directory" in out.stderr


def test_load_with_and_without_batching(model_dir, tmp_path):
    """8 clients, 100 requests each way, more clients than --queue-size: every request is
    answered with 200 in the end (a 429 is retried, as Retry-After asks), nothing but the
    designed 429 comes back meanwhile, and resident memory stays level. Throughput is
    printed, not asserted (benchmarks/bench_serve.py measures it properly)."""
    video = write_video(tmp_path / "clip.mp4", num_frames=30, size=(96, 64)).read_bytes()
    figures = {}
    for name, extra in (("no batching", ["--max-batch-size", "1", "--max-wait-ms", "0"]),
                        ("batching", ["--max-batch-size", "16", "--max-wait-ms", "10"])):
        with ServerProcess(model_dir, "--queue-size", "6", "--set", "data.test_clips=1",
                           "--set", "data.test_crops=1", *extra) as s:
            run_load(s.url, video, clients=8, requests=16, time_limit=120)  # warm-up
            rss_before = s.metric("process_resident_memory_bytes")
            result = run_load(s.url, video, clients=8, requests=100, time_limit=600)
            rss_after = s.metric("process_resident_memory_bytes")
            assert not result.errors, result.errors[:3]
            assert set(result.codes) <= {200, 429}, result.codes
            assert result.codes[200] == 100, result.codes
            growth = (rss_after - rss_before) / 2**20
            assert growth < 64, f"resident memory grew {growth:.0f} MiB over 100 requests"
            figures[name] = (result, rss_before / 2**20, rss_after / 2**20)
            assert httpx.get(f"{s.url}/readyz").status_code == 200
    print("\n| server | requests/s | p50 ms | p95 ms | 200 | 429 | RSS MiB before/after |")
    for name, (r, before, after) in figures.items():
        print(f"| {name} | {r.throughput:.1f} | {1000 * r.percentile(0.5):.0f} | "
              f"{1000 * r.percentile(0.95):.0f} | {r.codes[200]} | {r.codes[429]} | "
              f"{before:.0f}/{after:.0f} |")


# ---- in-process: the batcher and the upload decoder


def test_the_batcher_stacks_concurrent_requests_into_one_call():
    calls = []

    def run(views):
        calls.append(views.shape[0])
        return views * 10

    batcher = MicroBatcher(run, max_batch_size=6, max_wait_s=1.0)
    futures = [batcher.submit(torch.full((2, 1), float(i))) for i in range(4)]
    results = [f.result(timeout=10) for f in futures]
    batcher.close()
    assert calls == [6, 2]                           # 3 requests fit in 6 views, then 1
    for i, r in enumerate(results):
        assert torch.equal(r.scores, torch.full((2, 1), 10.0 * i))
    assert [r.batch_requests for r in results] == [3, 3, 3, 1]
    with pytest.raises(BatcherClosed):
        batcher.submit(torch.zeros(1, 1))


def test_the_batcher_runs_a_large_request_alone_and_skips_cancelled_ones():
    gate = threading.Event()
    calls = []

    def run(views):
        gate.wait(10)
        calls.append(views.shape[0])
        return views

    batcher = MicroBatcher(run, max_batch_size=4, max_wait_s=0.0)
    busy = batcher.submit(torch.zeros(1, 1))           # holds the model thread at the gate
    time.sleep(0.2)
    big = batcher.submit(torch.zeros(9, 1))
    dropped = batcher.submit(torch.zeros(2, 1))
    assert dropped.cancel()                             # its caller gave up
    gate.set()
    assert big.result(timeout=10).scores.shape == (9, 1)
    busy.result(timeout=10)
    batcher.close()
    assert calls == [1, 9]
    with pytest.raises(CancelledError):
        dropped.result()


def test_the_batcher_gives_every_request_of_a_failed_call_the_error():
    def run(views):
        raise RuntimeError("out of memory")

    batcher = MicroBatcher(run, max_batch_size=8, max_wait_s=0.5)
    futures = [batcher.submit(torch.zeros(1, 1)) for _ in range(3)]
    for f in futures:
        with pytest.raises(RuntimeError, match="out of memory"):
            f.result(timeout=10)
    batcher.close()


def test_decoded_views_are_the_views_mar_predict_scores(model_dir):
    served = ServedModel(model_dir)
    decoded = served.decode(REAL / "tree.avi", max_frames=1000)
    _, cfg = load_model(model_dir)
    expected = cfg.views_dataset([VideoRecord(str(REAL / "tree.avi"), 0)], 5, 3)[0]["video"]
    assert decoded.views.shape == (15, 3, 8, 64, 64)
    assert torch.equal(decoded.views, expected)
    assert (decoded.frames, decoded.width, decoded.height) == (68, 320, 240)
    with pytest.raises(VideoTooLong, match="68 frames .* over the limit of 67"):
        served.decode(REAL / "tree.avi", max_frames=67)
    with pytest.raises(DecodeError):
        served.decode(REAL / "README.md", max_frames=1000)


class SpyLock:
    """A lock that counts its acquisitions and tells when someone waits for it."""

    def __init__(self):
        self.inner, self.waiting, self.taken = threading.Lock(), threading.Event(), 0

    def __enter__(self):
        self.waiting.set()
        self.inner.acquire()
        self.taken += 1

    def __exit__(self, *exc):
        self.inner.release()


def test_a_timeline_takes_the_model_lock_per_call_and_stops_at_its_time_budget(
        model_dir, tmp_path):
    """The timeline runs outside the batcher: each of its model calls (features, head)
    waits for the lock the batcher's calls take; past its budget it stops."""
    served = ServedModel(model_dir)
    served.lock = spy = SpyLock()
    video = write_video(tmp_path / "clip.mp4", num_frames=50, fps=12)   # 4.2 s
    done = {}
    spy.inner.acquire()                         # as if the batcher were running the model
    worker = threading.Thread(target=lambda: done.update(
        tl=served.timeline(video, 2.0, 1.0, batch_size=2)))
    worker.start()
    assert spy.waiting.wait(60)
    time.sleep(0.2)
    assert worker.is_alive() and spy.taken == 0  # waiting for the model, not computing
    spy.inner.release()
    worker.join(60)
    assert done["tl"].starts == [0, 1, 2, 3] and done["tl"].probs.shape == (4, 6)
    assert spy.taken == 2                       # 2 batches, one model call each
    with pytest.raises(TimelineTimeout, match="took over"):
        served.timeline(video, 2.0, 1.0, seconds=1e-4)


def test_pictures_without_a_decoder(tmp_path):
    kwargs = {**KWARGS, "decoder": False}
    save_model(create_model(**kwargs), kwargs, tmp_path / "m",
               masking={"name": "cell_running", "ratio": 0.5})
    served = ServedModel(tmp_path / "m")
    pictures = served.pictures(torch.randn(3, 8, 64, 64))
    assert pictures["reconstruction"] is None
    assert pictures["masked"].startswith("data:image/png;base64,")
