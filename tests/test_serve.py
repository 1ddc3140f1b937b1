"""python -m simcore.serve: the HTTP API, through the standard library's client, against a
server on a free port in a thread (a small random model: the API does not care how well it
draws). What the page does in a browser: tests/test_page.py."""
import http.client
import io
import json
import os
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

import simcore
from simcore import images, serve


def small_model(null_class=True):
    cfg = simcore.Config(d_model=16, d_hidden=24, n_layers=1, n_heads=2, image_size=28, pixel_above=True,
                         class_everywhere=True, null_class=null_class)
    return simcore.SIM(cfg, seed=0)


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written there (test_nothing_is_written_to_disk)
    app = serve.App(small_model(), port=0, quiet=True)
    thread = threading.Thread(target=app.serve_forever, daemon=True)
    thread.start()
    yield app
    app.shutdown()
    app.server_close()
    thread.join(5)


def request(app, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(*app.server_address[:2], timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def png_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.mode == "L" and im.size == (28, 28)
        return np.asarray(im)


def a_digit(seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)


def events(body: bytes) -> list:
    """(event, data) of a text/event-stream body."""
    out = []
    for block in body.decode().split("\n\n"):
        if block.strip():
            fields = dict(line.split(": ", 1) for line in block.splitlines())
            out.append((fields["event"], json.loads(fields["data"])))
    return out


# ---- what it serves ------------------------------------------------------------------------

def test_the_page_is_served_from_the_package(app):
    status, headers, body = request(app, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert body == serve.page()
    for element in (b'id="digit"', b'id="out"', b'id="pad"', b'id="rows"', b'id="complete"', b'"/api/stream?'):
        assert element in body


def test_generate_answers_a_png_of_the_asked_digit_as_the_library_draws_it(app):
    status, headers, body = request(app, "GET", "/api/generate?label=3&seed=7&temperature=0.9&guidance=2")
    assert status == 200 and headers["Content-Type"] == "image/png" and headers["X-Seed"] == "7"
    want = app.model.generate([3], temperature=0.9, seed=7, guidance=2)[0]
    np.testing.assert_array_equal(png_pixels(body), want)
    assert request(app, "GET", "/api/generate?label=3&seed=7&temperature=0.9&guidance=2")[2] == body


def test_generate_without_a_seed_draws_one_and_says_which(app):
    status, headers, body = request(app, "GET", "/api/generate?label=5")
    seed = int(headers["X-Seed"])
    np.testing.assert_array_equal(png_pixels(body), app.model.generate([5], seed=seed)[0])


@pytest.mark.parametrize("label", [None, 4])
def test_complete_keeps_the_given_rows_and_finishes_the_digit(app, label):
    digit = a_digit()
    query = "rows=14&seed=1" + ("" if label is None else f"&label={label}")
    status, headers, body = request(app, "POST", f"/api/complete?{query}", images.png_bytes(digit),
                                    {"Content-Type": "image/png"})
    assert status == 200 and headers["Content-Type"] == "image/png"
    got = png_pixels(body)
    np.testing.assert_array_equal(got[:14], digit[:14])
    want = app.model.complete(digit[None], 14, None if label is None else [label], seed=1)[0]
    np.testing.assert_array_equal(got, want)


def test_stream_sends_one_event_per_row_then_done(app):
    status, headers, body = request(app, "GET", "/api/stream?label=8&seed=3")
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    got = events(body)
    assert [e for e, _ in got] == ["row"] * 28 + ["done"]
    assert [d["row"] for _, d in got[:28]] == list(range(28))
    pixels = np.array([d["pixels"] for _, d in got[:28]], np.uint8)
    np.testing.assert_array_equal(pixels, app.model.generate([8], seed=3)[0])
    assert got[-1][1] == {"seed": 3}


# ---- what it refuses -----------------------------------------------------------------------

@pytest.mark.parametrize("path,message", [
    ("/api/generate", "label is required"),
    ("/api/generate?label=10", "label must be an integer in 0..9"),
    ("/api/generate?label=x", "label must be an integer"),
    ("/api/generate?label=3&label=4", "given twice"),
    ("/api/generate?label=3&colour=red", "unknown parameter 'colour'"),
    ("/api/generate?label=3&rows=4", "unknown parameter 'rows'"),
    ("/api/generate?label=3&temperature=nan", "temperature must be a number in 0..10"),
    ("/api/generate?label=3&temperature=-1", "temperature must be a number"),
    ("/api/generate?label=3&temperature=1e400", "temperature must be a number"),
    ("/api/generate?label=3&guidance=inf", "guidance must be a number in 0..20"),
    ("/api/generate?label=3&seed=-1", "seed must be an integer"),
    ("/api/generate?label=3&seed=99999999999999999999", "seed must be an integer"),
    ("/api/stream?label=", "label must be an integer"),
    ("/api/generate?label=3&&", "cannot parse the query"),
])
def test_a_bad_parameter_is_a_400_with_a_one_line_json_error(app, path, message):
    status, headers, body = request(app, "GET", path)
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert body.count(b"\n") == 1 and message in json.loads(body)["error"], body


@pytest.mark.parametrize("query,body,message", [
    ("rows=14", b"", "not a PNG"),
    ("rows=14", b"GIF89a", "not a PNG"),
    ("rows=14", "png 27", "the body must be a 28 x 28 PNG"),
    ("rows=14", "grid", "one 28 x 28 digit, got a grid of 1 x 2"),
    ("", "png", "rows is required"),
    ("rows=29", "png", "rows must be an integer in 0..28"),
    ("rows=3&guidance=2", "png", "guidance needs a label"),
])
def test_a_bad_completion_is_a_400(app, query, body, message):
    if body == "png":
        body = images.png_bytes(a_digit())
    elif body == "png 27":
        body = images.png_bytes(np.zeros((27, 27), np.uint8))
    elif body == "grid":
        body = images.png_bytes(np.asarray(images.grid(np.zeros((2, 28, 28), np.uint8), 1, 2)))
    status, headers, answer = request(app, "POST", f"/api/complete?{query}", body)
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert message in json.loads(answer)["error"], answer


def test_unknown_pages_are_404_and_wrong_methods_405(app):
    status, _, body = request(app, "GET", "/etc/passwd")
    assert status == 404 and "no such page" in json.loads(body)["error"]
    status, headers, body = request(app, "POST", "/api/generate?label=3", b"")
    assert status == 405 and headers["Allow"] == "GET" and "takes GET" in json.loads(body)["error"]
    status, headers, _ = request(app, "GET", "/api/complete?rows=3")
    assert status == 405 and headers["Allow"] == "POST"
    status, _, body = request(app, "GET", "/api/generate?label=3", b"x" * 10)
    assert status == 400 and "takes no body" in json.loads(body)["error"]


def test_a_body_over_the_cap_is_refused_unread_with_413(app):
    conn = http.client.HTTPConnection(*app.server_address[:2], timeout=30)
    conn.putrequest("POST", "/api/complete?rows=14")
    conn.putheader("Content-Length", str(serve.MAX_BODY + 1))
    conn.endheaders()  # the body never comes: the answer must not wait for it
    r = conn.getresponse()
    assert r.status == 413 and "at most 65,536" in json.loads(r.read())["error"]
    conn.close()


def test_a_post_in_chunks_is_refused(app):
    status, _, body = request(app, "POST", "/api/complete?rows=14", iter([images.png_bytes(a_digit())]),
                              {"Transfer-Encoding": "chunked"})
    assert status == 411 and "Content-Length" in json.loads(body)["error"]


def test_beyond_the_queue_a_request_gets_503_and_the_server_goes_on(app):
    app.gate.queue = 0
    assert app.gate.enter()  # a job is running, and no one may wait
    try:
        status, headers, body = request(app, "GET", "/api/generate?label=1")
        assert status == 503 and "busy" in json.loads(body)["error"]
    finally:
        app.gate.leave()
    assert request(app, "GET", "/api/generate?label=1")[0] == 200


def test_requests_wait_their_turn_in_the_queue(app):
    """Three at once with room for them all: each answered, one at a time on the model."""
    results = []
    ask = lambda s: results.append(request(app, "GET", f"/api/generate?label=2&seed={s}"))  # noqa: E731
    threads = [threading.Thread(target=ask, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(r[0] for r in results) == [200, 200, 200]


def test_a_closed_stream_stops_its_work_and_frees_the_model(app, monkeypatch):
    produced, real = [], app.model.stream

    def slow_rows(*args, **kwargs):  # a row every 50 ms: 1.4 s for the whole digit
        for item in real(*args, **kwargs):
            produced.append(item[0])
            time.sleep(0.05)
            yield item
    monkeypatch.setattr(app.model, "stream", slow_rows)
    sock = socket.create_connection(app.server_address[:2], timeout=30)
    sock.sendall(b"GET /api/stream?label=3&seed=0 HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while b"event: row" not in got:  # the headers and the first row may come in separate reads
        chunk = sock.recv(65536)
        assert chunk, got
        got += chunk
    sock.close()  # the tab is closed
    deadline = time.monotonic() + 10
    while app.gate._waiting and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.gate._waiting == 0  # the model is free again
    assert len(produced) < 10, produced  # and the rest of the digit was never drawn
    assert request(app, "GET", "/api/generate?label=3")[0] == 200


def test_it_listens_on_this_machine_alone_unless_told_otherwise():
    app = serve.App(small_model(), port=0, quiet=True)
    try:
        assert app.server_address[0] == "127.0.0.1" and app.url.startswith("http://127.0.0.1:")
    finally:
        app.server_close()
    args = serve.build_parser().parse_args([])
    assert (args.host, args.port, args.checkpoint) == ("127.0.0.1", 8765, None)  # the pretrained model


def test_nothing_is_written_to_disk(app, tmp_path):
    request(app, "GET", "/api/generate?label=3")
    request(app, "POST", "/api/complete?rows=5", images.png_bytes(a_digit()))
    request(app, "GET", "/api/stream?label=3")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv,message", [(["--port", "70000"], "--port must lie in 0..65535"),
                                          (["--queue", "-1"], "--queue must be >= 0"),
                                          (["--checkpoint", "nowhere.safetensors"], "nowhere")])
def test_the_command_line_says_what_is_wrong_in_one_line(argv, message, capsys):
    assert serve.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
