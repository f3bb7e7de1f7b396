"""``mar serve`` against slow, oversized and failing requests, and what it shows a client:
slow uploads hold no model slot and end at the upload deadline (408), uploads past
``--max-uploads`` get 429, videos past the pixel limits get 413 before they are decoded,
an internal error answers a request id and no exception text, and ``/readyz`` shows no
filesystem path.

Two servers: the real command in a subprocess (:class:`ServerProcess`, as in
tests/test_serve.py) and the app under uvicorn in a thread of this process (so that a
test can break its model and read its log)."""

from __future__ import annotations

import logging
import re
import select
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from test_serve import TOKEN, ServerProcess, bench_serve, post
from videos import REAL

from mar.cli import build_parser
from mar.cli.serve import settings_from
from mar.config import Config
from mar.errors import ConfigError
from mar.serve.app import ServeSettings, create_app
from mar.serve.predictor import ServedModel, VideoTooLarge

UPLOAD_TIMEOUT = 3.0          # the subprocess server's --upload-timeout-s
SLOW_CLIENTS = 40             # more than --queue-size (32): each used to hold a slot
BUNNY = REAL / "bigbuckbunny.mp4"   # 1280x720, 132 frames: 121,651,200 pixels
MAX_PIXELS = 100_000_000      # the subprocess server's --max-pixels: below the bunny's


@pytest.fixture(scope="module")
def server(model_dir):
    """The command with a token, a 3 s upload deadline and a 100-megapixel limit (other
    limits at their defaults: 64 uploads, 32 requests at the model)."""
    with ServerProcess(model_dir, "--upload-timeout-s", str(UPLOAD_TIMEOUT),
                       "--max-pixels", str(MAX_PIXELS), token=TOKEN) as s:
        yield s


@pytest.fixture(scope="module")
def local(model_dir):
    """The app in this process, 2 uploads at once, a 2 s upload deadline."""
    settings = ServeSettings(str(model_dir), max_uploads=2, upload_timeout_s=2.0)
    app = create_app(settings)
    port = bench_serve.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_config=None, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert thread.is_alive() and time.monotonic() < deadline, "server not ready"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield SimpleNamespace(url=url, port=port, state=app.state.serve)
    finally:
        server.should_exit = True
        thread.join(60)


def multipart(size: int, boundary: str = "slow") -> tuple[bytes, str]:
    """A multipart body with one file field ``video`` of ``size`` bytes, and its type."""
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="video"; '
            f'filename="slow.mp4"\r\nContent-Type: video/mp4\r\n\r\n').encode()
    body += b"\0" * size + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response (read until its Content-Length or the
    connection's end; every recv bounded by the socket's timeout)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    while match and len(body) < int(match.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    status = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return (int(status.group(1)) if status else 0), body


class SlowUpload(threading.Thread):
    """One client trickling a multipart upload: the headers and 20 bytes of the body,
    then 2 bytes every 0.25 s, until an answer arrives, ``stop`` is set or 30 s pass.
    Records the status, the body and when the answer came (``time.monotonic()``)."""

    def __init__(self, port: int, stop: threading.Event, token: str | None = None):
        super().__init__(daemon=True)
        self.port, self.stop, self.token = port, stop, token
        self.status, self.body, self.answered, self.error = 0, b"", None, None
        self.started = None

    def run(self) -> None:
        body, content_type = multipart(4000)         # never all sent: 8 bytes per second
        head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n")
        if self.token:
            head += f"Authorization: Bearer {self.token}\r\n"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                self.started = time.monotonic()
                sock.sendall(head.encode() + b"\r\n" + body[:20])
                sent = 20
                while not self.stop.is_set() and time.monotonic() - self.started < 30:
                    readable, _, _ = select.select([sock], [], [], 0.25)
                    if readable:
                        self.answered = time.monotonic()
                        self.status, self.body = read_response(sock)
                        return
                    sock.sendall(body[sent:sent + 2])
                    sent += 2
        except OSError as e:
            self.error = repr(e)


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_slow_uploads_hold_no_model_slot_and_end_at_the_upload_deadline(server):
    """40 clients trickle uploads (more than --queue-size, 32): a normal upload sent while
    all 40 are open gets 200, and each slow one gets 408 once its 3 s deadline passes."""
    stop = threading.Event()
    slow = [SlowUpload(server.port, stop, TOKEN) for _ in range(SLOW_CLIENTS)]
    try:
        for c in slow:
            c.start()
        wait_for(lambda: server.metric("mar_uploads_in_progress", 0) >= SLOW_CLIENTS, 10)
        uploading = server.metric("mar_uploads_in_progress", 0)
        sent = time.monotonic()
        normal = post(server, REAL / "tree.avi")
        for c in slow:
            c.join(UPLOAD_TIMEOUT + 20)
    finally:
        stop.set()
        for c in slow:
            c.join(10)
    assert normal.status_code == 200, normal.text
    assert uploading == SLOW_CLIENTS
    assert all(c.answered and c.answered > sent for c in slow)   # all open meanwhile
    for c in slow:
        assert c.error is None and c.status == 408, (c.status, c.body, c.error)
        assert b'"error":"upload_timeout"' in c.body and b"--upload-timeout-s" in c.body
        waited = c.answered - c.started
        assert UPLOAD_TIMEOUT - 0.5 < waited < UPLOAD_TIMEOUT + 10, waited
    assert server.metric("mar_uploads_in_progress") == 0
    assert server.metric("mar_inflight_requests") == 0
    assert server.metric('mar_requests_total{code="408"}') == SLOW_CLIENTS
    assert post(server, REAL / "tree.avi").status_code == 200


def test_uploads_past_the_bound_get_429_then_the_server_answers(local):
    """--max-uploads 2: two slow uploads fill it, a third request gets 429 before its
    body is read; once the two get their 408, a normal upload gets 200."""
    stop = threading.Event()
    slow = [SlowUpload(local.port, stop) for _ in range(2)]
    try:
        for c in slow:
            c.start()
        assert wait_for(lambda: local.state.uploads == 2, 10)
        third = httpx.post(f"{local.url}/v1/predict", timeout=30,
                           files={"video": ("tree.avi", (REAL / "tree.avi").read_bytes())})
        for c in slow:
            c.join(20)
    finally:
        stop.set()
        for c in slow:
            c.join(10)
    assert (third.status_code, third.json()["error"]) == (429, "busy")
    assert "--max-uploads" in third.json()["detail"] and third.headers["retry-after"] == "1"
    assert [c.status for c in slow] == [408, 408], [(c.status, c.error) for c in slow]
    assert local.state.uploads == 0 and local.state.inflight == 0
    r = httpx.post(f"{local.url}/v1/predict", timeout=60,
                   files={"video": ("tree.avi", (REAL / "tree.avi").read_bytes())})
    assert r.status_code == 200, r.text


def test_an_internal_error_answers_an_id_and_logs_the_detail(local, monkeypatch, caplog):
    secret = "boom in /srv/secret/weights.bin"

    def broken(*args, **kwargs):
        raise RuntimeError(secret)

    monkeypatch.setattr(local.state.served, "decode", broken)
    with caplog.at_level(logging.ERROR, logger="mar.serve"):
        r = httpx.post(f"{local.url}/v1/predict", timeout=60,
                       files={"video": ("tree.avi", (REAL / "tree.avi").read_bytes())})
    assert r.status_code == 500
    assert "secret" not in r.text and "RuntimeError" not in r.text and "boom" not in r.text
    body = r.json()
    rid = body["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert body["error"] == "internal" and rid in body["detail"]
    assert r.headers["x-request-id"] == rid
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "mar.serve"]
    assert any(rid in line and secret in line and "RuntimeError" in line
               for line in logged), logged
    assert local.state.inflight == 0
    monkeypatch.undo()
    ok = httpx.post(f"{local.url}/v1/predict", timeout=60,
                    files={"video": ("tree.avi", (REAL / "tree.avi").read_bytes())})
    assert ok.status_code == 200, ok.text
    ids = {httpx.get(f"{local.url}/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and ok.headers["x-request-id"] not in ids   # one per request


def strings(value) -> list[str]:
    """Every string in a JSON value (keys and values)."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_readyz_and_answers_show_no_filesystem_path(server, model_dir):
    r = httpx.get(f"{server.url}/readyz", timeout=10)        # open even with a token
    assert r.status_code == 200
    ready = r.json()
    answer = post(server, REAL / "tree.avi").json()
    for shown in (ready, answer):
        assert str(model_dir) not in str(shown)
        assert not [s for s in strings(shown) if "/" in s], strings(shown)
    assert ready["status"] == "ready" and ready["device"] == "cpu"
    assert ready["model"]["name"] == "vit_nano" and ready["model"]["num_classes"] == 6
    assert ready["masking"]["line"].startswith("test-time masking: cell_running 50%")
    assert ready["views"] == 15
    assert ready["limits"]["max_pixels"] == MAX_PIXELS
    assert ready["limits"]["upload_timeout_s"] == UPLOAD_TIMEOUT


def test_a_model_that_fails_to_load_keeps_its_path_in_the_log(tmp_path, caplog):
    from starlette.testclient import TestClient

    broken = tmp_path / "secret-place" / "broken"
    broken.mkdir(parents=True)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    failed = threading.Event()
    app = create_app(ServeSettings(str(broken)), on_load_error=lambda e: failed.set())
    with TestClient(app) as client:
        assert failed.wait(120)
        for path in ("/readyz", "/v1/predict"):
            r = client.request("GET" if path == "/readyz" else "POST", path)
            assert (r.status_code, r.json()["error"]) == (503, "not_ready"), r.text
            assert "failed to load" in r.json()["detail"]
            assert "secret-place" not in r.text
    assert any("could not load the model" in rec.getMessage() and str(broken) in
               rec.getMessage() for rec in caplog.records if rec.name == "mar.serve")


def test_a_video_over_the_pixel_limit_gets_413(server):
    r = post(server, BUNNY)
    assert (r.status_code, r.json()["error"]) == (413, "video_too_large"), r.text
    assert r.json()["detail"] == (
        "bigbuckbunny.mp4: 132 frames of 1280x720 (121,651,200 pixels to decode), over "
        "the limit of 100,000,000 (--max-pixels)")
    assert server.metric('mar_requests_total{code="413"}') >= 1
    assert post(server, REAL / "tree.avi").status_code == 200      # 5.2 megapixels


def test_the_pixel_limits_are_checked_from_the_probe_before_decoding(model_dir,
                                                                    monkeypatch):
    served = ServedModel(model_dir)
    decoded = []

    def decode_all(self, *args, **kwargs):
        decoded.append(args)
        raise AssertionError("decoded a video over the limit")

    area, total = 1280 * 720, 1280 * 720 * 132
    with monkeypatch.context() as m:
        m.setattr(Config, "views_dataset", decode_all)
        with pytest.raises(VideoTooLarge, match=r"1280x720 frames \(921,600 pixels each\)"
                           r", over the limit of 921,599 \(--max-frame-pixels\)"):
            served.decode(BUNNY, 1000, max_frame_pixels=area - 1)
        with pytest.raises(VideoTooLarge, match=r"over the limit of 121,651,199 "
                           r"\(--max-pixels\)"):
            served.decode(BUNNY, 1000, max_pixels=total - 1)
    assert decoded == []
    at_limit = served.decode(BUNNY, 1000, max_pixels=total, max_frame_pixels=area)
    assert (at_limit.width, at_limit.height, at_limit.frames) == (1280, 720, 132)


@pytest.mark.parametrize("flag", ["--upload-timeout-s", "--max-uploads", "--max-pixels",
                                  "--max-frame-pixels"])
def test_the_new_limits_refuse_zero(flag):
    args = build_parser().parse_args(["serve", "--checkpoint", "x", flag, "0"])
    with pytest.raises(ConfigError, match=flag):
        settings_from(args)
    defaults = settings_from(build_parser().parse_args(["serve", "--checkpoint", "x"]))
    assert defaults == ServeSettings("x", upload_timeout_s=60.0, max_uploads=64,
                                     max_pixels=1920 * 1080 * 9000,
                                     max_frame_pixels=3840 * 2160)
