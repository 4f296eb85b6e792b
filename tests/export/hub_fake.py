"""A small fake of the Hugging Face Hub HTTP API on 127.0.0.1, enough for huggingface_hub's
create_repo / upload_folder / list_repo_files and transformers' from_pretrained(repo_id). It keeps
repositories in memory and records every request (headers included) for the tests to inspect."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: dict[str, str] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, code, body=b"", ctype="application/json", headers=None, head=False):
                if isinstance(body, dict | list):
                    body = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _record(self):
                hub.requests.append((self.command, self.path, dict(self.headers)))

            def do_POST(self):
                self._record()
                path = urlparse(self.path).path
                body = self._body()
                if path == "/api/repos/create":
                    data = json.loads(body)
                    repo = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
                    if "/" not in repo:
                        repo = f"tester/{repo}"
                    hub.repos.setdefault(repo, {})
                    hub.commits.setdefault(repo, "0" * 40)
                    return self._send(200, {"url": f"http://{self.headers['Host']}/{repo}", "name": repo})
                if path == "/api/validate-yaml":
                    return self._send(200, {"errors": [], "warnings": []})
                m = re.match(r"^/api/models/(.+?)/(preupload|commit)/([^/]+)$", path)
                if m and m.group(1) in hub.repos:
                    repo, action = m.group(1), m.group(2)
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._send(200, {"files": [
                            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
                    for line in body.decode().splitlines():
                        op = json.loads(line)
                        if op["key"] == "file":
                            hub.repos[repo][op["value"]["path"]] = base64.b64decode(op["value"]["content"])
                        elif op["key"] == "deletedFile":
                            hub.repos[repo].pop(op["value"]["path"], None)
                    sha = hashlib.sha1(json.dumps(sorted(hub.repos[repo])).encode() + body).hexdigest()
                    hub.commits[repo] = sha
                    return self._send(200, {"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{sha}",
                                            "commitOid": sha})
                return self._send(404, {"error": f"no route POST {path}"})

            def _get(self, head: bool):
                self._record()
                path = unquote(urlparse(self.path).path)
                m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?$", path)
                if m and m.group(1) in hub.repos:
                    repo = m.group(1)
                    return self._send(200, {"id": repo, "modelId": repo, "sha": hub.commits[repo], "private": False,
                                            "siblings": [{"rfilename": f} for f in sorted(hub.repos[repo])]}, head=head)
                m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/[^/]+(?:/(.*))?$", path)
                if m and m.group(1) in hub.repos:
                    files = hub.repos[m.group(1)]
                    return self._send(200, [{"type": "file", "path": f, "size": len(b),
                                             "oid": hashlib.sha1(b).hexdigest()} for f, b in sorted(files.items())],
                                      head=head)
                m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                if m and m.group(1) in hub.repos:
                    repo, _, name = m.groups()
                    headers = {"X-Repo-Commit": hub.commits[repo]}
                    if name not in hub.repos[repo]:
                        return self._send(404, {"error": "Entry not found"},
                                          headers={**headers, "X-Error-Code": "EntryNotFound"}, head=head)
                    data = hub.repos[repo][name]
                    headers["ETag"] = '"' + hashlib.sha1(data).hexdigest() + '"'
                    return self._send(200, data, "application/octet-stream", headers, head=head)
                return self._send(404, {"error": f"no route GET {path}"},
                                  headers={"X-Error-Code": "RepoNotFound"}, head=head)

            def do_GET(self):
                self._get(head=False)

            def do_HEAD(self):
                self._get(head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
