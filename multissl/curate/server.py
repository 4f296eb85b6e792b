"""``multissl curate emb/``: a labelling page on localhost.

Served by the standard library's ``ThreadingHTTPServer``: one HTML page with a little JavaScript
(``page.html``) and a JSON API over the functions of this package. No web framework: the page needs a
handful of routes, the server must start in a moment beside an encoder that is already loaded, and
gradio (the Hugging Face choice) would add a large dependency tree that is slow to import for what a
hundred lines of JavaScript do. It listens on 127.0.0.1 only and serves no file that is not an item of
the embeddings folder.

Routes: ``GET /`` the page; ``GET /api/info``; ``GET /api/search?query=ID&avoid=ID&k=20``;
``GET /api/select?strategy=kcenter&budget=12&measure=margin``; ``GET /api/labelled``;
``GET /api/items?id=ID``; ``POST /api/label`` ``{"id": ..., "label": ...}`` (an empty label removes
it), written to ``labels.csv`` before the answer; ``GET /media?id=ID`` (an image thumbnail or the
recording); ``GET /labels.csv`` (the export ``multissl probe`` reads); ``POST /api/export``
``{"path": ...}`` (a ``datasets`` folder); ``GET /map.png``.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from multissl.curate.index import build_index, load_index
from multissl.curate.search import search
from multissl.curate.select import select
from multissl.curate.store import Embeddings, LabelStore
from multissl.errors import RecipeError

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("page.html")


class Curator:
    """The state behind the page: the embeddings, their index and the labels given so far."""

    def __init__(self, folder: str | Path, classes: list[str] | tuple[str, ...] = ()):
        from multissl.modalities import get_modality

        self.emb = Embeddings(folder)
        self.adapter = get_modality(self.emb.settings["modality"])
        if not (self.emb.folder / "index.faiss").is_file():
            build_index(self.emb.folder)
        self.index = load_index(self.emb.folder, len(self.emb), self.emb.dim)
        self.store = LabelStore(self.emb)
        self.classes = list(dict.fromkeys([*classes, *self.store.labels.values()]))
        self.map_lock = threading.Lock()
        self.map_state: tuple[int, float] | None = None

    def item(self, row: int) -> dict[str, Any]:
        rec = self.emb.record(row, self.store.labels)
        if self.emb.view != "text":
            rec["media"] = f"/media?id={_quote(rec['id'])}"
        return rec

    def info(self) -> dict[str, Any]:
        return {"name": self.emb.folder.name, "items": len(self.emb), "view": self.emb.view,
                "modality": self.emb.settings["modality"], "classes": self.classes,
                "labelled": len(self.store.labels), "index": json.loads((self.emb.folder / "index.json").read_text())}

    def search(self, query: list[str], avoid: list[str], k: int) -> list[dict[str, Any]]:
        hits = search(self.emb, query, avoid, k, index=self.index)
        return [self.item(self.emb.row_of[h["id"]]) | {"score": h["score"]} for h in hits]

    def select(self, strategy: str, budget: int, measure: str) -> list[dict[str, Any]]:
        picked = select(self.emb, budget, strategy, measure=measure)
        return [self.item(self.emb.row_of[p["id"]]) | {"score": p["score"]} for p in picked]

    def label(self, item: str, label: str) -> dict[str, Any]:
        self.store.set(item, label)
        if label and label not in self.classes:
            self.classes.append(label)
        return {"labelled": len(self.store.labels), "classes": self.classes}

    def labelled(self) -> list[dict[str, Any]]:
        return [self.item(self.emb.row_of[i]) for i in self.store.labels]

    def media(self, item: str) -> tuple[bytes, str]:
        row = self.emb.rows_of([item], "media:")[0]
        return self.adapter.preview(self.emb.inputs[row])

    def labels_csv(self) -> bytes:
        path = self.store.path
        return path.read_bytes() if path.is_file() else b"id,input,label\n"

    def map_png(self) -> bytes:
        from multissl.curate.atlas import draw_map

        with self.map_lock:
            path = self.emb.folder / "map.png"
            state = (len(self.store.labels), self.store.path.stat().st_mtime if self.store.path.is_file() else 0.0)
            if state != self.map_state or not path.is_file():
                draw_map(self.emb, path)
                self.map_state = state
            return path.read_bytes()


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def make_handler(curator: Curator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:  # requests are not news; errors are logged below
            pass

        def _send(self, body: bytes, mime: str, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", mime)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value: Any, status: int = 200) -> None:
            self._send(json.dumps(value).encode(), "application/json", status)

        def _answer(self, route) -> None:
            try:
                route()
            except (RecipeError, KeyError, ValueError) as e:
                msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
                self._json({"error": str(msg)}, 400)
            except Exception as e:  # the page shows it; the server keeps serving
                log.exception("curate: %s failed", self.path)
                self._json({"error": f"{type(e).__name__}: {e}"}, 500)

        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            url = urlparse(self.path)
            q = parse_qs(url.query)
            one = lambda key, default="": q.get(key, [default])[0]
            routes = {
                "/": lambda: self._send(PAGE.read_bytes(), "text/html; charset=utf-8"),
                "/api/info": lambda: self._json(curator.info()),
                "/api/search": lambda: self._json(curator.search(q.get("query", []), q.get("avoid", []),
                                                                 int(one("k", "20")))),
                "/api/select": lambda: self._json(curator.select(one("strategy", "kcenter"),
                                                                 int(one("budget", "12")), one("measure", "margin"))),
                "/api/labelled": lambda: self._json(curator.labelled()),
                "/api/items": lambda: self._json([curator.item(r) for r in curator.emb.rows_of(q.get("id", []),
                                                                                               "id")]),
                "/media": lambda: self._send(*curator.media(one("id"))),
                "/labels.csv": lambda: self._send(curator.labels_csv(), "text/csv"),
                "/map.png": lambda: self._send(curator.map_png(), "image/png"),
            }
            if url.path not in routes:
                self._json({"error": f"no page {url.path}"}, 404)
                return
            self._answer(routes[url.path])

        def do_POST(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            routes = {
                "/api/label": lambda: self._json(curator.label(str(body["id"]), str(body.get("label") or ""))),
                "/api/export": lambda: self._json({"path": str(curator.store.export(
                    body.get("path") or curator.emb.folder / "labels-dataset"))}),
            }
            if url.path not in routes:
                self._json({"error": f"no route {url.path}"}, 404)
                return
            self._answer(routes[url.path])

    return Handler


def serve(folder: str | Path, *, port: int = 8765, host: str = "127.0.0.1", classes: list[str] | tuple[str, ...] = (),
          ready: Any = None) -> None:
    """Serve the labelling page of the embeddings folder ``folder`` until interrupted; ``port`` 0 picks
    a free one. The address is printed (and passed to ``ready`` when given) once the page can be opened."""
    curator = Curator(folder, classes)
    server = ThreadingHTTPServer((host, port), make_handler(curator))
    url = f"http://{host}:{server.server_address[1]}/"
    print(f"curate: {curator.emb.folder} ({len(curator.emb)} items, {len(curator.store.labels)} labelled) at {url}",
          flush=True)
    if ready is not None:
        ready(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
