"""A local web page to draw with the model, and its HTTP API (the standard library's server):

    python -m simcore.serve                      # the shipped model, http://127.0.0.1:8765/
    python -m simcore.serve --checkpoint runs/guided --port 8000

    GET  /                                          the page (simcore/serve.html)
    GET  /api/generate?label=3&seed=0&temperature=1&guidance=2   a 28 x 28 grayscale PNG
    POST /api/complete?rows=14&label=3  (label optional; body: a 28 x 28 PNG)   a PNG
    GET  /api/stream?label=3&...        text/event-stream, one event per finished row

A server a browser tab cannot knock over: every parameter is checked (400 and a one-line
JSON error), bodies are capped (413), one sampling job runs at a time and a short queue
waits (503 beyond it), a closed tab stops its stream's work at the next row, and nothing
is written to disk. It listens on 127.0.0.1 (this machine alone) unless --host says
otherwise.
"""
from __future__ import annotations

import importlib.resources
import itertools
import json
import math
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import numpy as np

import simcore
from simcore import cli, images

MAX_BODY = 64 * 1024       # a 28 x 28 PNG is well under 2 KB; any body larger is refused (413)
QUEUE = 4                  # requests that may wait while one samples; more get 503
MAX_TEMPERATURE = 10.0
MAX_GUIDANCE = 20.0
MAX_SEED = 2**63 - 1


class BadRequest(ValueError):
    """What is wrong with a request: its status and one line for the client."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


# ---- the parameters ------------------------------------------------------------------------

# name -> (parse, the endpoints that take it). Every parameter given is checked; one that
# an endpoint does not take is an error too (a typo would otherwise be silently ignored).
_GENERATE = ("label", "seed", "temperature", "guidance")
PARAMETERS = {"/api/generate": _GENERATE, "/api/stream": _GENERATE,
              "/api/complete": ("rows",) + _GENERATE}


def _integer(name: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise BadRequest(f"{name} must be an integer in {low}..{high}, got {text!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be an integer in {low}..{high}, got {value}")
    return value


def _real(name: str, text: str, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= high):
        raise BadRequest(f"{name} must be a number in 0..{high:g}, got {text!r}")
    return value


def parse_query(path: str, query: str, cfg) -> dict:
    """The query's parameters for endpoint `path`, checked and typed; BadRequest naming the
    first that is wrong, missing or unknown."""
    allowed = PARAMETERS[path]
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=20)
    except ValueError as err:
        raise BadRequest(f"cannot parse the query string: {err}") from None
    got = {}
    for name, text in pairs:
        if name not in allowed:
            raise BadRequest(f"unknown parameter {name!r} for {path}; it takes {', '.join(allowed)}")
        if name in got:
            raise BadRequest(f"parameter {name!r} given twice")
        got[name] = text
    out = {"label": None, "seed": None, "temperature": 1.0, "guidance": None}
    if "label" in got:
        out["label"] = _integer("label", got["label"], 0, cfg.n_classes - 1)
    elif path != "/api/complete":
        raise BadRequest(f"label is required: the digit to draw, 0..{cfg.n_classes - 1}")
    if "seed" in got:
        out["seed"] = _integer("seed", got["seed"], 0, MAX_SEED)
    if "temperature" in got:
        out["temperature"] = _real("temperature", got["temperature"], MAX_TEMPERATURE)
    if "guidance" in got:
        out["guidance"] = _real("guidance", got["guidance"], MAX_GUIDANCE)
        if out["label"] is None and out["guidance"] != 1:
            raise BadRequest("guidance needs a label (without a class there is nothing to lean towards)")
        if not cfg.null_class and out["guidance"] != 1:
            raise BadRequest("guidance other than 1 needs a model trained with a null class; this one has none")
    if path == "/api/complete":
        if "rows" not in got:
            raise BadRequest(f"rows is required: how many rows at the top are given, 0..{cfg.image_size}")
        out["rows"] = _integer("rows", got["rows"], 0, cfg.image_size)
        if out["label"] is None and not cfg.null_class:
            raise BadRequest("this model has no null class: give a label to complete with")
    return out


def read_digit(body: bytes, side: int) -> np.ndarray:
    """The one side x side digit of a PNG body: uint8 [side, side]; BadRequest otherwise."""
    try:
        grid = images.read_grid(body, side=side)
    except ValueError as err:
        raise BadRequest(f"the body must be a {side} x {side} PNG: {err}") from None
    if grid.shape[:2] != (1, 1):
        raise BadRequest(f"the body must be one {side} x {side} digit, got a grid of {grid.shape[0]} x "
                         f"{grid.shape[1]}")
    return grid[0, 0]


# ---- one job at a time ---------------------------------------------------------------------

class Gate:
    """One sampling job at a time on the model, and at most `queue` requests waiting for it:
    enter() returns False (the caller answers 503) when the queue is full."""

    def __init__(self, queue: int):
        self.queue = queue
        self._run = threading.Lock()
        self._count = threading.Lock()
        self._waiting = 0

    def enter(self) -> bool:
        with self._count:
            if self._waiting >= self.queue + 1:  # the one running counts too
                return False
            self._waiting += 1
        self._run.acquire()
        return True

    def leave(self) -> None:
        self._run.release()
        with self._count:
            self._waiting -= 1


# ---- the server ----------------------------------------------------------------------------

def page() -> bytes:
    """The page, shipped in the package (simcore/serve.html)."""
    return importlib.resources.files("simcore").joinpath("serve.html").read_bytes()


class Handler(BaseHTTPRequestHandler):
    """One request. The server (App) holds the model, the gate and the page."""

    server_version = "simcore-serve"
    protocol_version = "HTTP/1.1"

    # -- answers --
    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self._answered = True
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, extra: dict | None = None) -> None:
        body = (json.dumps({"error": message}) + "\n").encode()
        self._send(status, body, "application/json", extra)

    def log_message(self, format, *args):  # noqa: A002 -- http.server's signature
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    # -- routing --
    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    def _handle(self, method: str) -> None:
        self._answered = False
        url = urlsplit(self.path)
        routes = {"/": ("GET", "HEAD"), "/index.html": ("GET", "HEAD"), "/api/generate": ("GET",),
                  "/api/stream": ("GET",), "/api/complete": ("POST",)}
        try:
            if url.path not in routes:
                raise BadRequest(f"no such page: {url.path} (the API: /api/generate, /api/complete, "
                                 "/api/stream)", HTTPStatus.NOT_FOUND)
            if method not in routes[url.path]:
                raise BadRequest(f"{url.path} takes {' or '.join(routes[url.path])}, not {method}",
                                 HTTPStatus.METHOD_NOT_ALLOWED)
            if method == "POST":
                body = self._body()
            elif self.headers.get("Content-Length", "0") != "0" or self.headers.get("Transfer-Encoding"):
                raise BadRequest(f"{method} {url.path} takes no body")
            if url.path in ("/", "/index.html"):
                self._send(200, self.server.page, "text/html; charset=utf-8")
                return
            params = parse_query(url.path, url.query, self.server.model.cfg)
            if url.path == "/api/complete":
                params["image"] = read_digit(body, self.server.model.cfg.image_size)
            self._job(url.path, params)
        except BadRequest as err:
            extra = {"Allow": ", ".join(routes[url.path])} if err.status == HTTPStatus.METHOD_NOT_ALLOWED else None
            if err.status in (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, HTTPStatus.LENGTH_REQUIRED):
                self.close_connection = True  # the body was not read
            self._error(err.status, str(err), extra)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True  # the client left
        except Exception as err:  # noqa: BLE001 -- a bug of ours: say so, keep serving
            self.log_error("%s", traceback.format_exc())
            self.close_connection = True
            if not self._answered:
                self._error(500, f"internal error: {type(err).__name__}: {err}")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise BadRequest("send the body with a Content-Length, not in chunks", HTTPStatus.LENGTH_REQUIRED)
        length = self.headers.get("Content-Length")
        if length is None:
            raise BadRequest("a POST needs a Content-Length", HTTPStatus.LENGTH_REQUIRED)
        try:
            n = int(length)
        except ValueError:
            raise BadRequest(f"Content-Length must be a number, got {length!r}") from None
        if n < 0:
            raise BadRequest(f"Content-Length must be >= 0, got {n}")
        if n > MAX_BODY:
            raise BadRequest(f"the body is {n:,} bytes; at most {MAX_BODY:,}", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        body = self.rfile.read(n)
        if len(body) != n:
            raise BadRequest(f"the body ended after {len(body)} of its {n} bytes")
        return body

    # -- sampling --
    def _job(self, path: str, p: dict) -> None:
        gate, model = self.server.gate, self.server.model
        if not gate.enter():
            raise BadRequest(f"busy: one drawing at a time and {gate.queue} waiting; try again in a moment",
                             HTTPStatus.SERVICE_UNAVAILABLE)
        try:
            if p["seed"] is None:
                p["seed"] = int(np.random.default_rng().integers(0, 2**31))
            labels = None if p["label"] is None else [p["label"]]
            kw = dict(temperature=p["temperature"], guidance=p["guidance"], seed=p["seed"])
            if path == "/api/complete":
                rows = model.stream(labels, images=p["image"][None], rows=p["rows"], **kw)
            else:
                rows = model.stream(labels, **kw)
            try:
                first = next(rows)  # what the model refuses surfaces here, before any answer
            except ValueError as err:
                raise BadRequest(str(err)) from None
            if path == "/api/stream":
                self._stream(rows, first, p["seed"])
            else:
                image = first[1]
                for _, image in rows:
                    pass
                self._send(200, images.png_bytes(image[0]), "image/png", {"X-Seed": str(p["seed"])})
        finally:
            gate.leave()

    def _stream(self, rows, first, seed: int) -> None:
        """Server-sent events: `row` with {"row": r, "pixels": [S values]} per finished row,
        then `done`. A closed connection ends the generator, and with it the work."""
        self._answered = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Seed", str(seed))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for r, image in itertools.chain([first], rows):
                event = json.dumps({"row": r, "pixels": image[0, r].tolist()})
                self.wfile.write(f"event: row\ndata: {event}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(f"event: done\ndata: {json.dumps({'seed': seed})}\n\n".encode())
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            pass  # the tab was closed
        finally:
            rows.close()


class App(ThreadingHTTPServer):
    """The HTTP server with what the handlers share: the model, the gate, the page."""

    daemon_threads = True

    def __init__(self, model, host: str = "127.0.0.1", port: int = 8765, queue: int = QUEUE,
                 quiet: bool = False):
        self.model, self.gate, self.page, self.quiet = model, Gate(queue), page(), quiet
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def build_parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog="python -m simcore.serve", description=__doc__.split("\n\n")[0],
                            formatter_class=cli.HelpFormatter)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--checkpoint",
                       help="a .safetensors checkpoint written by simcore.train, or a run's folder (its newest)")
    which.add_argument("--pretrained", action="store_true",
                       help="the model shipped in the package (the default)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="the address to listen on: 127.0.0.1 is this machine alone; 0.0.0.0 opens it to "
                         "the network")
    ap.add_argument("--port", type=int, default=8765, help="the port (0: any free one)")
    ap.add_argument("--queue", type=int, default=QUEUE, help="requests that may wait while one draws (503 beyond)")
    ap.add_argument("--threads", type=int, default=None, help="default: $OMP_NUM_THREADS, else one per core")
    ap.add_argument("--quiet", action="store_true", help="no line per request on stderr")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        simcore.check_environment()
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must lie in 0..65535, got {args.port}")
        if args.queue < 0:
            raise ValueError(f"--queue must be >= 0, got {args.queue}")
        if args.threads is not None:
            simcore.set_threads(args.threads)
        args.pretrained = args.checkpoint is None
        model = cli.chosen_model(args)
        if model.cfg.image_size != 28:
            raise ValueError(f"the page draws 28 x 28 digits; this model's are {model.cfg.image_size} x "
                             f"{model.cfg.image_size}")
        app = App(model, args.host, args.port, args.queue, args.quiet)
    except (ValueError, TypeError, OSError, MemoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"simcore: serving {'the pretrained model' if args.pretrained else args.checkpoint} at {app.url} "
          "(Ctrl-C stops)", flush=True)
    try:
        app.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        app.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
