"""A small, offline stand-in for the Hugging Face Hub HTTP API (standard library only; PyYAML if present).

It speaks the subset of the API that `huggingface_hub` (1.5 .. 2.x, with Xet disabled), `transformers`, `peft` and
`datasets` (4.0 .. 5.x) use to push and pull model and dataset repos:

* ``GET  /api/whoami-v2``
* ``GET  /api/agent-harnesses``                       (huggingface_hub 2.x user-agent detection; an empty registry)
* ``POST /api/validate-yaml``                       (model card metadata; always valid here)
* ``POST /api/repos/create``                          (409 + ``url`` in the body when the repo exists)
* ``GET  /api/{type}s/{repo}`` and ``/api/{type}s/{repo}/revision/{rev}``
                                                      (``?blobs=true``: siblings with size, blobId, lfs; ``cardData``
                                                      parsed from the README's YAML, as `dataset_info().card_data`)
* ``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]``    (``?recursive=true``; ``?expand=true``: lastCommit and
                                                      securityFileStatus per entry)
* ``POST /api/{type}s/{repo}/paths-info/{rev}``       (form ``paths=..&expand=..`` or JSON; missing paths left out)
* ``POST /api/{type}s/{repo}/preupload/{rev}``        (LFS for the Hub's default .gitattributes patterns, e.g.
                                                      *.safetensors, *.parquet, or >= 10 MiB)
* ``POST /api/{type}s/{repo}/commit/{rev}``           (NDJSON: header / file / lfsFile / deletedFile / deletedFolder)
* ``POST|DELETE /api/{type}s/{repo}/branch/{branch}`` (``startingPoint``; 409 when it exists) and
  ``GET /api/{type}s/{repo}/refs``
* ``POST /{repo}.git/info/lfs/objects/batch`` + ``PUT /_lfs/{sha256}`` (basic transfer only)
* ``GET|HEAD /{repo}/resolve/{rev}/{path}``           (ETag, X-Repo-Commit, Content-Length, X-Linked-Etag/Size,
                                                      one ``Range: bytes=`` range -> 206 + Content-Range, or 416)

Dataset repos live under ``/datasets/...`` and ``/api/datasets/...``. Errors carry the ``X-Error-Code`` header that
``huggingface_hub.utils.hf_raise_for_status`` maps to its exceptions: ``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound`` (a 404 from resolve also carries ``X-Repo-Commit``).

Who calls what (seen in the request logs): `datasets` push_to_hub (4.0 and 5.2) uploads parquet shards through LFS,
reads the README through resolve, lists ``tree`` (4.0 recursively), deletes stale shards in the commit and calls
``branch`` for ``revision=``; `load_dataset` uses revision info, ``tree``, HEAD/GET resolve and, when streaming,
Range GETs. huggingface_hub resumes a download left ``.incomplete`` with a Range GET (1.5). ``paths-info``,
``refs``, ``?expand=true`` and ``?blobs=true`` are there for `HfApi.get_paths_info`, `list_repo_refs`,
`list_repo_tree(expand=True)` / HfFileSystem and `model_info(files_metadata=True)`.

Logs (all lists, in arrival order): ``server.request_log`` [(method, path)], ``server.response_log`` [(method, path
with query, status)], ``server.unrouted`` [(method, path)] of requests no endpoint here serves (a new client call
shows up here by name; tests assert it stays empty).

Fault injection, for tests of broken transfers. ``server.faults[(repo_id, path_in_repo)] = mode`` applies `mode`
to every GET of that file through resolve (any repo type, any revision); ``= (mode, n)`` to the next n GETs only
(then the entry removes itself). HEAD and the API (sizes, ETags, X-Linked-Size) stay truthful, as with a transfer
broken between the Hub and the client. ``server.fault_log`` records [(repo_id, path, mode)] per faulty GET. Modes:

* ``"truncate"``: a well-formed response with only the first half of the bytes (Content-Length says the short
  length): huggingface_hub's size check ("Consistency check failed") must refuse it.
* ``"corrupt"``: every byte, same length, the byte at offset len // 2 XOR 0xFF: the size check passes; only a
  content checksum (e.g. slam_hf's checksums.json) can tell.
* ``"drop"``: the full Content-Length is promised, half the body is sent, then the connection is closed (a reset
  mid-download): the client must retry or fail, never keep a short file.

Example: ``hub_server.faults[("slam-tester/m", "model.safetensors")] = ("corrupt", 1)`` corrupts the next download.

State lives on disk under ``root``: ``objects/<sha256>`` holds every file's bytes (content-addressed) and
``state.json`` holds repos, branches (name -> commit sha) and commits (sha -> parent, message, tree). Each commit
gets a fresh 40-hex sha. Every request is served on its own thread; one lock serialises state changes.
"""

import base64
import hashlib
import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

USER = "slam-tester"
# The patterns of the `.gitattributes` the Hub writes into a new repo (files matching them go through LFS), plus the
# media types of a new dataset repo; anything of 10 MiB or more goes through LFS too, as the Hub's preupload says.
LFS_SUFFIXES = (
    ".7z",
    ".arrow",
    ".bin",
    ".bz2",
    ".ckpt",
    ".ftz",
    ".gz",
    ".h5",
    ".joblib",
    ".mlmodel",
    ".model",
    ".msgpack",
    ".npy",
    ".npz",
    ".onnx",
    ".ot",
    ".parquet",
    ".pb",
    ".pickle",
    ".pkl",
    ".pt",
    ".pth",
    ".rar",
    ".safetensors",
    ".tar",
    ".tflite",
    ".tgz",
    ".wasm",
    ".xz",
    ".zip",
    ".zst",
    ".gguf",
    ".mp3",
    ".wav",
    ".flac",
    ".ogg",
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".mp4",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
FAULT_MODES = ("truncate", "corrupt", "drop")


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    def __init__(self, status, code, message, body=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.body, self.headers = status, code, message, body, headers


class HubStore:
    """Repos, branches, commits and content-addressed objects, persisted under `root`."""

    def __init__(self, root):
        self.root = root
        self.objects = os.path.join(root, "objects")
        os.makedirs(self.objects, exist_ok=True)
        self.state_path = os.path.join(root, "state.json")
        self.lock = threading.RLock()
        if os.path.exists(self.state_path):
            with open(self.state_path) as f:
                self.repos = json.load(f)
        else:
            self.repos = {}  # "model:org/name" -> {"branches": {...}, "commits": {...}, "private": bool}

    # -- persistence ---------------------------------------------------------------------------------------------
    def _save(self):
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.repos, f, indent=1, sort_keys=True)
        os.replace(tmp, self.state_path)

    def put_object(self, data):
        sha256 = hashlib.sha256(data).hexdigest()
        path = os.path.join(self.objects, sha256)
        if not os.path.exists(path):
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return sha256

    def has_object(self, sha256):
        return os.path.exists(os.path.join(self.objects, sha256))

    def read_object(self, sha256):
        with open(os.path.join(self.objects, sha256), "rb") as f:
            return f.read()

    # -- repos / revisions ---------------------------------------------------------------------------------------
    def repo(self, repo_type, repo_id):
        repo = self.repos.get(f"{repo_type}:{repo_id}")
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository Not Found for url: {repo_type} {repo_id}.")
        return repo

    def create_repo(self, repo_type, repo_id, private=False):
        with self.lock:
            key = f"{repo_type}:{repo_id}"
            if key in self.repos:
                return False
            sha = self._new_sha()
            self.repos[key] = {
                "private": bool(private),
                "branches": {"main": sha},
                "commits": {sha: {"parent": None, "message": "initial commit", "time": time.time(), "tree": {}}},
            }
            self._save()
            return True

    def resolve_revision(self, repo_type, repo_id, revision):
        repo = self.repo(repo_type, repo_id)
        revision = unquote(revision or "main")
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if revision in repo["commits"]:
            return revision
        if len(revision) >= 7 and all(c in "0123456789abcdef" for c in revision):
            matches = [sha for sha in repo["commits"] if sha.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def tree(self, repo_type, repo_id, sha):
        return self.repo(repo_type, repo_id)["commits"][sha]["tree"]

    def create_branch(self, repo_type, repo_id, branch, starting_point=None):
        with self.lock:
            repo = self.repo(repo_type, repo_id)
            if branch in repo["branches"]:
                raise HubError(409, None, f"Reference already exists: refs/heads/{branch}")
            repo["branches"][branch] = self.resolve_revision(repo_type, repo_id, starting_point or "main")
            self._save()

    def delete_branch(self, repo_type, repo_id, branch):
        with self.lock:
            repo = self.repo(repo_type, repo_id)
            if branch == "main":
                raise HubError(403, None, "Cannot delete the default branch")
            if repo["branches"].pop(branch, None) is None:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            self._save()

    def last_commit(self, repo_type, repo_id, sha, path, folder=False):
        """The newest commit, walking back from `sha`, that changed `path` (a file, or any file under a folder)."""
        commits = self.repo(repo_type, repo_id)["commits"]

        def state(commit_sha):
            tree = commits[commit_sha]["tree"]
            if not folder:
                return tree.get(path)
            prefix = path.rstrip("/") + "/"
            return {name: info["sha256"] for name, info in tree.items() if name.startswith(prefix)}

        current = sha
        while commits[current]["parent"] is not None and state(commits[current]["parent"]) == state(current):
            current = commits[current]["parent"]
        return current, commits[current]

    @staticmethod
    def _new_sha():
        return hashlib.sha1(uuid.uuid4().bytes + str(time.time_ns()).encode()).hexdigest()

    def commit(self, repo_type, repo_id, revision, header, operations):
        with self.lock:
            repo = self.repo(repo_type, repo_id)
            branch = unquote(revision or "main")
            if branch not in repo["branches"]:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {branch} (commits go to branches)")
            head = repo["branches"][branch]
            parent = header.get("parentCommit")
            if parent and parent != head:
                raise HubError(412, None, f"A commit has happened since {parent}. Please refresh and try again.")
            tree = dict(repo["commits"][head]["tree"])
            for key, value in operations:
                path = value.get("path", "")
                if key == "file":
                    data = (
                        base64.b64decode(value["content"])
                        if value.get("encoding", "base64") == "base64"
                        else (value["content"].encode())
                    )
                    sha256 = self.put_object(data)
                    tree[path] = {"sha256": sha256, "size": len(data), "lfs": False, "oid": git_blob_sha1(data)}
                elif key == "lfsFile":
                    oid = value["oid"]
                    if not self.has_object(oid):
                        raise HubError(400, None, f"LFS object {oid} for {path} was never uploaded")
                    size = os.path.getsize(os.path.join(self.objects, oid))
                    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()
                    tree[path] = {
                        "sha256": oid,
                        "size": size,
                        "lfs": True,
                        "oid": git_blob_sha1(pointer),
                        "pointer_size": len(pointer),
                    }
                elif key == "deletedFile":
                    if tree.pop(path, None) is None:
                        raise HubError(404, "EntryNotFound", f"{path} does not exist at {branch}")
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    for name in [name for name in tree if name.startswith(prefix)]:
                        del tree[name]
                else:
                    raise HubError(400, None, f"unsupported commit operation {key!r}")
            sha = self._new_sha()
            repo["commits"][sha] = {
                "parent": head,
                "message": header.get("summary", ""),
                "description": header.get("description", ""),
                "time": time.time(),
                "tree": tree,
            }
            repo["branches"][branch] = sha
            self._save()
            return sha


def is_lfs_path(path, size):
    return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE


def _iso_time(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(seconds))


def _parse_range(header, total):
    """One `bytes=a-b` / `bytes=a-` / `bytes=-n` range -> inclusive (start, end), or (None, None) if unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise HubError(400, None, f"unsupported Range header {header!r} (one byte range only)")
    first, _, last = spec.strip().partition("-")
    if first == "":
        start, end = max(total - int(last), 0), total - 1
    else:
        start, end = int(first), (int(last) if last else total - 1)
    end = min(end, total - 1)
    if start >= total or start > end:
        return None, None
    return start, end


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SlamHubTestServer/0.1"

    # BaseHTTPRequestHandler logs every request to stderr; keep test output clean and keep a request log instead.
    def log_message(self, fmt, *args):
        pass

    def send_response(self, code, message=None):
        self.server.response_log.append((self.command, self.path, code))
        super().send_response(code, message)

    @property
    def store(self):
        return self.server.store

    @property
    def base(self):
        return self.server.base_url

    # -- plumbing ------------------------------------------------------------------------------------------------
    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _send(self, status, body=b"", headers=None, content_type="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, err):
        headers = {"X-Error-Message": err.message, **(err.headers or {})}
        if err.code:
            headers["X-Error-Code"] = err.code
        body = {"error": err.message, **(err.body or {})}
        self._send(err.status, body, headers)

    def _dispatch(self):
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p != ""]  # segments stay %-encoded until each handler unquotes
        self.server.request_log.append((self.command, url.path))
        try:
            auth = self.headers.get("Authorization", "")
            if self.command in ("POST", "PUT", "DELETE") and not auth.startswith("Bearer "):
                if not (self.command == "PUT" and parts[:1] == ["_lfs"]):
                    raise HubError(401, None, "Invalid credentials in Authorization header")
            handled = self._route(parts)
            if handled is False:
                self.server.unrouted.append((self.command, self.path))
                raise HubError(404, None, f"no route for {self.command} {url.path}")
        except HubError as err:
            self._error(err)
        except Exception as err:  # surface server bugs as 500s with the reason, rather than a hung client
            self._error(HubError(500, None, f"{type(err).__name__}: {err}"))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def _route(self, parts):
        cmd = self.command
        if parts[:1] == ["api"]:
            rest = parts[1:]
            if rest == ["whoami-v2"] and cmd == "GET":
                return self._whoami()
            if rest == ["agent-harnesses"] and cmd == "GET":  # huggingface_hub >= 2.x user-agent detection
                return self._send(200, {"standardEnvVars": [], "harnesses": {}})  # an empty registry: no agent
            if rest == ["validate-yaml"] and cmd == "POST":  # model card metadata check (ModelCard.validate)
                json.loads(self._body() or b"{}")
                return self._send(200, {"errors": [], "warnings": []})
            if rest == ["repos", "create"] and cmd == "POST":
                return self._create_repo()
            if len(rest) >= 3 and rest[0] in REPO_TYPES:
                repo_type, repo_id, tail = REPO_TYPES[rest[0]], f"{rest[1]}/{rest[2]}", rest[3:]
                if not tail and cmd == "GET":
                    return self._info(repo_type, repo_id, "main")
                if len(tail) >= 2 and tail[0] == "revision" and cmd == "GET":
                    return self._info(repo_type, repo_id, "/".join(tail[1:]))
                if len(tail) >= 2 and tail[0] == "tree" and cmd == "GET":
                    return self._tree(repo_type, repo_id, tail[1], "/".join(tail[2:]))
                if len(tail) == 2 and tail[0] == "preupload" and cmd == "POST":
                    return self._preupload(repo_type, repo_id, tail[1])
                if len(tail) == 2 and tail[0] == "commit" and cmd == "POST":
                    return self._commit(repo_type, repo_id, tail[1])
                if len(tail) == 2 and tail[0] == "paths-info" and cmd == "POST":
                    return self._paths_info(repo_type, repo_id, tail[1])
                if len(tail) == 2 and tail[0] == "branch" and cmd in ("POST", "DELETE"):
                    return self._branch(repo_type, repo_id, unquote(tail[1]))
                if tail == ["refs"] and cmd == "GET":
                    return self._refs(repo_type, repo_id)
            return False
        if parts[:1] == ["_lfs"] and len(parts) == 2 and cmd == "PUT":
            return self._lfs_put(parts[1])
        repo_type = "model"
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type, parts = REPO_TYPES[parts[0]], parts[1:]
        if len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(repo_type, f"{parts[0]}/{parts[1][:-4]}")
        if len(parts) >= 5 and parts[2] == "resolve" and cmd in ("GET", "HEAD"):
            return self._resolve(repo_type, f"{parts[0]}/{parts[1]}", parts[3], unquote("/".join(parts[4:])))
        return False

    # -- endpoints -----------------------------------------------------------------------------------------------
    def _whoami(self):
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            raise HubError(401, None, "Invalid credentials in Authorization header")
        self._send(
            200,
            {
                "type": "user",
                "id": "0" * 24,
                "name": USER,
                "fullname": "SLAM Tester",
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "dummy", "role": "write"}},
            },
        )

    def _repo_url(self, repo_type, repo_id):
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.base}/{prefix}{repo_id}"

    def _create_repo(self):
        payload = json.loads(self._body() or b"{}")
        repo_type = payload.get("type") or "model"
        name = payload["name"]
        namespace = payload.get("organization") or USER
        repo_id = name if "/" in name else f"{namespace}/{name}"
        url = self._repo_url(repo_type, repo_id)
        if not self.store.create_repo(repo_type, repo_id, payload.get("private", False)):
            raise HubError(409, None, "You already created this model repo", {"url": url})
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _info(self, repo_type, repo_id, revision):
        sha = self.store.resolve_revision(repo_type, repo_id, revision)
        repo = self.store.repo(repo_type, repo_id)
        tree = repo["commits"][sha]["tree"]
        modified = _iso_time(repo["commits"][sha]["time"])
        info = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": sha,
            "lastModified": modified,
            "createdAt": modified,
            "private": repo["private"],
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [self._sibling(path, tree[path]) for path in sorted(tree)],
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        card_data = self._card_data(tree.get("README.md"))
        if card_data is not None:
            info["cardData"] = card_data
        self._send(200, info)

    def _sibling(self, path, info):
        sibling = {"rfilename": path}
        if self.query.get("blobs", "").lower() in ("1", "true"):  # files_metadata=True
            sibling.update({"blobId": info["oid"], "size": info["size"]})
            if info["lfs"]:
                sibling["lfs"] = {"sha256": info["sha256"], "size": info["size"], "pointerSize": info["pointer_size"]}
        return sibling

    def _card_data(self, readme):
        """The README's YAML front matter, as the Hub parses it into `cardData` (None without PyYAML)."""
        if readme is None:
            return None
        try:
            import yaml
        except ImportError:
            return None
        text = self.store.read_object(readme["sha256"]).decode("utf-8", "replace")
        if not text.startswith("---"):
            return None
        end = text.find("\n---", 3)
        data = yaml.safe_load(text[3:end]) if end != -1 else None
        return data if isinstance(data, dict) else None

    def _entry(self, path, info, repo_type=None, repo_id=None, sha=None):
        entry = {"type": "file", "oid": info["oid"], "size": info["size"], "path": path}
        if info["lfs"]:
            entry["lfs"] = {"oid": info["sha256"], "size": info["size"], "pointerSize": info["pointer_size"]}
        if sha is not None:  # ?expand=true / paths-info expand: last commit and the (always clean) security scan
            entry["lastCommit"] = self._last_commit(repo_type, repo_id, sha, path, folder=False)
            entry["securityFileStatus"] = {
                "status": "safe",
                "avScan": {"virusFound": False, "virusNames": None},
                "pickleImportScan": None
                if not path.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))
                else {"highestSafetyLevel": "innocuous", "imports": []},
            }
        return entry

    def _folder(self, path, repo_type=None, repo_id=None, sha=None):
        entry = {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
        if sha is not None:
            entry["lastCommit"] = self._last_commit(repo_type, repo_id, sha, path, folder=True)
        return entry

    def _last_commit(self, repo_type, repo_id, sha, path, folder):
        commit_sha, commit = self.store.last_commit(repo_type, repo_id, sha, path, folder=folder)
        return {"id": commit_sha, "title": commit["message"], "date": _iso_time(commit["time"])}

    def _tree(self, repo_type, repo_id, revision, path):
        sha = self.store.resolve_revision(repo_type, repo_id, revision)
        tree = self.store.tree(repo_type, repo_id, sha)
        path = unquote(path).strip("/")
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        expand = (repo_type, repo_id, sha) if self.query.get("expand", "").lower() in ("1", "true") else ()
        prefix = f"{path}/" if path else ""
        if path and path in tree:
            raise HubError(400, None, f"{path} is a file, not a folder")
        entries, folders = [], set()
        for name in sorted(tree):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :].split("/")
            for depth in range(1, len(rest)):
                folder = prefix + "/".join(rest[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append(self._folder(folder, *expand))
            if recursive or len(rest) == 1:
                entries.append(self._entry(name, tree[name], *expand))
        if path and not entries:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {revision}")
        self._send(200, entries)

    def _paths_info(self, repo_type, repo_id, revision):
        """`HfApi.get_paths_info` (and HfFileSystem): form-encoded `paths=a&paths=b&expand=...` (JSON accepted too).
        Paths that do not exist are left out, as on the Hub."""
        body = self._body()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            payload = json.loads(body or b"{}")
            paths, expand = payload.get("paths", []), payload.get("expand", False)
        else:
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), (form.get("expand") or ["false"])[-1]
        if isinstance(paths, str):
            paths = [paths]
        expand = str(expand).lower() in ("1", "true")
        sha = self.store.resolve_revision(repo_type, repo_id, revision)
        tree = self.store.tree(repo_type, repo_id, sha)
        extra = (repo_type, repo_id, sha) if expand else ()
        entries = []
        for path in paths:
            path = path.strip("/")
            if path in tree:
                entries.append(self._entry(path, tree[path], *extra))
            elif path and any(name.startswith(path + "/") for name in tree):
                entries.append(self._folder(path, *extra))
        self._send(200, entries)

    def _branch(self, repo_type, repo_id, branch):
        if self.command == "DELETE":
            self.store.delete_branch(repo_type, repo_id, branch)
        else:
            payload = json.loads(self._body() or b"{}")
            self.store.create_branch(repo_type, repo_id, branch, payload.get("startingPoint"))
        self._send(200, {})

    def _refs(self, repo_type, repo_id):
        repo = self.store.repo(repo_type, repo_id)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
            for name, sha in sorted(repo["branches"].items())
        ]
        self._send(200, {"branches": branches, "converts": [], "tags": []})

    def _preupload(self, repo_type, repo_id, revision):
        payload = json.loads(self._body())
        sha = self.store.resolve_revision(repo_type, repo_id, revision)
        tree = self.store.tree(repo_type, repo_id, sha)
        files = []
        for f in payload["files"]:
            lfs = is_lfs_path(f["path"], f["size"])
            current = tree.get(f["path"])
            oid = None
            if current is not None and current["lfs"] == lfs:
                oid = current["sha256"] if lfs else current["oid"]
            files.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._send(200, {"files": files, "commitOid": sha})

    def _commit(self, repo_type, repo_id, revision):
        if self.query.get("create_pr"):
            raise HubError(400, None, "this test server does not implement pull requests")
        header, operations = {}, []
        for line in self._body().decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item["key"] == "header":
                header = item["value"]
            else:
                operations.append((item["key"], item["value"]))
        sha = self.store.commit(repo_type, repo_id, revision, header, operations)
        self._send(
            200,
            {
                "success": True,
                "commitOid": sha,
                "pullRequestUrl": None,
                "commitUrl": f"{self._repo_url(repo_type, repo_id)}/commit/{sha}",
            },
        )

    def _lfs_batch(self, repo_type, repo_id):
        self.store.repo(repo_type, repo_id)
        payload = json.loads(self._body())
        if payload.get("operation") != "upload":
            raise HubError(400, None, "only LFS uploads are implemented")
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self.store.has_object(obj["oid"]):  # already stored -> no actions -> the client skips it
                entry["actions"] = {"upload": {"href": f"{self.base}/_lfs/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._send(
            200,
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            content_type="application/vnd.git-lfs+json",
        )

    def _lfs_put(self, oid):
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, None, f"uploaded bytes do not hash to {oid}")
        self.store.put_object(data)
        self._send(200, b"", content_type="text/plain")

    def _resolve(self, repo_type, repo_id, revision, path):
        sha = self.store.resolve_revision(repo_type, repo_id, revision)
        info = self.store.tree(repo_type, repo_id, sha).get(path)
        if info is None:
            raise HubError(
                404,
                "EntryNotFound",
                f"Entry not found: {path} at {unquote(revision)}",
                {"X-Repo-Commit": sha},
                {"X-Repo-Commit": sha},
            )
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if info["lfs"]:
            headers.update(
                {"ETag": f'"{info["sha256"]}"', "X-Linked-Etag": f'"{info["sha256"]}"', "X-Linked-Size": info["size"]}
            )
        else:
            headers["ETag"] = f'"{info["oid"]}"'
        data = self.store.read_object(info["sha256"])
        fault = self.server.take_fault(repo_id, path) if self.command == "GET" else None
        if fault == "truncate":  # the transfer is short but well-formed: Content-Length says the short length
            data = data[: len(data) // 2]
        elif fault == "corrupt":  # same length, one byte flipped: only a checksum can tell
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        status, total = 200, len(data)
        byte_range = self.headers.get("Range")
        if byte_range:
            start, end = _parse_range(byte_range, total)
            if start is None:
                raise HubError(
                    416,
                    None,
                    f"Range Not Satisfiable: {byte_range} of {total} bytes",
                    headers={"Content-Range": f"bytes */{total}"},
                )
            data, status = data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        if fault == "drop":  # promise every byte, send half, hang up (a connection reset mid-download)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            for key, value in headers.items():
                self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(status, data, headers, content_type="application/octet-stream")


class HubServer:
    """`with HubServer(root) as hub: ...` serves the API on 127.0.0.1 (free port) from a daemon thread."""

    def __init__(self, root, host="127.0.0.1", port=0):
        self.httpd = ThreadingHTTPServer((host, port), HubHandler)
        self.httpd.daemon_threads = True
        self.httpd.store = HubStore(root)
        self.httpd.request_log = []
        self.httpd.response_log = []
        self.httpd.unrouted = []
        self.httpd.faults = {}
        self.httpd.fault_log = []
        self.httpd.fault_lock = threading.Lock()
        self.httpd.take_fault = self._take_fault
        self.url = self.httpd.base_url = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = None

    @property
    def store(self):
        return self.httpd.store

    @property
    def request_log(self):
        """[(method, path)] of every request, in arrival order (the path without its query string)."""
        return self.httpd.request_log

    @property
    def response_log(self):
        """[(method, path with query, status)] of every response, in order: what 404'd, what got a 206."""
        return self.httpd.response_log

    @property
    def unrouted(self):
        """[(method, path with query)] of requests no endpoint here serves: a client calling an API this server
        lacks (tests assert it stays empty, so a new client version's new call shows up by name)."""
        return self.httpd.unrouted

    @property
    def faults(self):
        """{(repo_id, path_in_repo): mode or (mode, times)}: see the module docstring."""
        return self.httpd.faults

    @property
    def fault_log(self):
        """[(repo_id, path_in_repo, mode)] for every GET a fault was applied to."""
        return self.httpd.fault_log

    def _take_fault(self, repo_id, path):
        with self.httpd.fault_lock:
            fault = self.httpd.faults.get((repo_id, path))
            if fault is None:
                return None
            mode, times = (fault, None) if isinstance(fault, str) else fault
            if mode not in FAULT_MODES:
                raise HubError(500, None, f"unknown fault mode {mode!r}; use one of {FAULT_MODES}")
            if times is not None:
                if times <= 1:
                    del self.httpd.faults[(repo_id, path)]
                else:
                    self.httpd.faults[(repo_id, path)] = (mode, times - 1)
            self.httpd.fault_log.append((repo_id, path, mode))
            return mode

    def start(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":  # `python tests/hub_server.py ROOT [PORT]` serves until Ctrl-C, for poking at by hand
    import sys

    server = HubServer(
        sys.argv[1] if len(sys.argv) > 1 else "hub-data", port=int(sys.argv[2]) if len(sys.argv) > 2 else 0
    )
    print(f"serving {server.url} from {server.store.root}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        server.stop()
