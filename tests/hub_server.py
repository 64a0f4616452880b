"""A tiny stand-in for the Hugging Face hub on 127.0.0.1, for tests of the real download path.

    with HubServer() as hub:                      # two ports: the hub and its "CDN"
      sha = hub.add("org/repo", "w.safetensors", data, commit="ab" * 20)
      monkeypatch.setenv("HF_ENDPOINT", hub.url)   # huggingface_hub now talks to it

It answers what huggingface_hub 2.x asks, in the hub's layout:
  HEAD/GET /{repo}/resolve/{revision}/{file}   revision: a branch name or the commit;
    LFS files: 302 to the CDN port (another origin, so the client does not follow it on HEAD, as
    with the real hub's CDN redirect) with X-Repo-Commit, X-Linked-Etag (the sha256),
    X-Linked-Size and ETag; small files: 200 with ETag (git blob sha1) and Content-Length.
  GET /{cdn}/lfs/{sha256}                      the bytes (Content-Length, ETag).
  GET /api/models/{repo}/revision/{revision}   {"id", "sha", "siblings": [{rfilename, size, lfs}]}.
Unknown repos, revisions and files get 404 with the X-Error-Code the hub sends (RepoNotFound,
RevisionNotFound, EntryNotFound). `add(..., serve=other_bytes)` serves other bytes than the ones
the headers describe (a tampered CDN); `add(..., etag=...)` reports another LFS sha256.
The servers run in daemon threads and stop on exit from the `with` block, or by themselves after
`lifetime_s` seconds.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"
  hub: HubServer

  def log_message(self, fmt, *args):  # keep test output quiet
    pass

  def do_HEAD(self):
    self._answer(head=True)

  def do_GET(self):
    self._answer(head=False)

  def _send(self, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False) -> None:
    self.send_response(status)
    headers = {"Content-Length": str(len(body)), **headers}
    for k, v in headers.items():
      self.send_header(k, v)
    self.end_headers()
    if not head and body:
      self.wfile.write(body)

  def _error(self, code: str, head: bool, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": code}).encode()
    self._send(404, {"X-Error-Code": code, "Content-Type": "application/json", **(extra or {})}, body, head)

  def _answer(self, head: bool) -> None:
    hub = self.hub
    path = urllib.parse.urlsplit(self.path).path
    with hub.lock:
      hub.requests.append((self.command, self.server.server_address[1], path))
    if self.server is hub.cdn:
      sha = path.rsplit("/", 1)[-1]
      data = hub.blobs.get(sha)
      if data is None:
        return self._send(404, {}, b"no such blob", head)
      return self._send(200, {"ETag": f'"{sha}"', "Content-Type": "application/octet-stream"}, data, head)
    parts = urllib.parse.unquote(path).strip("/").split("/")
    if parts[:2] == ["api", "models"] and "revision" in parts:
      i = parts.index("revision")
      return self._api(head, "/".join(parts[2:i]), "/".join(parts[i + 1 :]))
    if "resolve" not in parts:
      return self._error("RepoNotFound", head)
    i = parts.index("resolve")
    repo, revision, filename = "/".join(parts[:i]), parts[i + 1], "/".join(parts[i + 2 :])
    commit = self._commit(repo, revision, head)
    if commit is None:
      return None
    item = hub.files[repo].get(filename)
    if item is None:
      return self._error("EntryNotFound", head, {"X-Repo-Commit": commit})
    common = {"X-Repo-Commit": commit, "Content-Type": "application/octet-stream"}
    if item["lfs"]:
      location = f"{hub.cdn_url}/lfs/{item['served_sha']}"
      return self._send(
        302,
        {
          **common,
          "Location": location,
          "X-Linked-Etag": f'"{item["etag"]}"',
          "X-Linked-Size": str(item["size"]),
          "ETag": f'"{item["git_sha1"]}"',
        },
        b"",
        head,
      )
    return self._send(200, {**common, "ETag": f'"{item["git_sha1"]}"'}, item["data"], head)

  def _commit(self, repo: str, revision: str, head: bool) -> str | None:
    hub = self.hub
    if repo not in hub.commits:
      self._error("RepoNotFound", head)
      return None
    commit = hub.commits[repo]
    if revision not in (commit, "main"):
      self._error("RevisionNotFound", head)
      return None
    return commit

  def _api(self, head: bool, repo: str, revision: str) -> None:
    commit = self._commit(repo, revision, head)
    if commit is None:
      return None
    siblings = []
    for name, item in self.hub.files[repo].items():
      s = {"rfilename": name, "size": item["size"], "blobId": item["git_sha1"]}
      if item["lfs"]:
        s["lfs"] = {"sha256": item["etag"], "size": item["size"], "pointerSize": 134}
      siblings.append(s)
    body = json.dumps({"id": repo, "modelId": repo, "sha": commit, "private": False, "siblings": siblings}).encode()
    return self._send(200, {"Content-Type": "application/json", "X-Repo-Commit": commit}, body, head)


class HubServer:
  """The hub and its CDN on two 127.0.0.1 ports the OS picks; see the module docstring."""

  def __init__(self, lifetime_s: float = 300.0):
    self.lock = threading.Lock()
    self.files: dict[str, dict[str, dict]] = {}
    self.commits: dict[str, str] = {}
    self.blobs: dict[str, bytes] = {}
    self.requests: list[tuple[str, int, str]] = []
    handler = type("Handler", (_Handler,), {"hub": self})
    self.hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    self.cdn = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    for server in (self.hub, self.cdn):
      server.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.hub.server_address[1]}"
    self.cdn_url = f"http://127.0.0.1:{self.cdn.server_address[1]}"
    self._threads: list[threading.Thread] = []
    self._timer = threading.Timer(lifetime_s, self.stop)
    self._timer.daemon = True
    self._stopped = False

  def add(
    self,
    repo: str,
    filename: str,
    data: bytes,
    *,
    commit: str | None = None,
    lfs: bool = True,
    serve: bytes | None = None,
    etag: str | None = None,
  ) -> str:
    """Publishes `data` as repo/filename at `commit` (default: derived from the repo name, also
    reachable as 'main'); returns its sha256."""
    sha = hashlib.sha256(data).hexdigest()
    served = data if serve is None else serve
    served_sha = hashlib.sha256(served).hexdigest()
    with self.lock:
      self.commits.setdefault(repo, commit or hashlib.sha1(repo.encode()).hexdigest())
      self.files.setdefault(repo, {})[filename] = {
        "data": served,
        "size": len(data),
        "lfs": lfs,
        "etag": etag or sha,
        "served_sha": served_sha,
        "git_sha1": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
      }
      self.blobs[served_sha] = served
    return sha

  def count(self, method: str, fragment: str) -> int:
    """How many requests of `method` had `fragment` in their path."""
    with self.lock:
      return sum(1 for m, _, p in self.requests if m == method and fragment in p)

  def start(self) -> HubServer:
    for server in (self.hub, self.cdn):
      t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
      t.start()
      self._threads.append(t)
    self._timer.start()
    return self

  def stop(self) -> None:
    if self._stopped:
      return
    self._stopped = True
    self._timer.cancel()
    for server in (self.hub, self.cdn):
      server.shutdown()
      server.server_close()

  def __enter__(self) -> HubServer:
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
