"""A fake Google Cloud Storage for tests: ``gs://BUCKET/...`` kept in a local folder, offline.

Two clients reach ``gs://`` in a run: ``etils.epath`` (every run file, orbax's directories and
``commit_success.txt``) and tensorstore (orbax's arrays). ``fake_gcs(root)`` serves both from ``root/BUCKET/...``:
epath through ``epath.testing.mock_epath`` (a ``gs://`` path becomes the local path under ``root``; a local path
stays as it is), tensorstore through a small HTTP server speaking the part of the GCS JSON API it uses (read, ranged
read, conditional upload, delete, list), at ``TENSORSTORE_GCS_HTTP_URL``. An object's generation is its file's
``st_mtime_ns``. The bucket has a flat namespace: orbax's question (asked with ``google-cloud-storage``, not
installed here) is answered no.
"""

import contextlib
import http.server
import json
import os
import pathlib
import shutil
import threading
import urllib.parse
from unittest import mock

from etils.epath import testing as epath_testing
from orbax.checkpoint._src.path import gcs_utils

_PREFIX = 'gs://'


def _local(root: str, path) -> str:
  """The local path of ``gs://BUCKET/key`` under ``root``; any other path as it is."""
  path = os.fspath(path)
  return os.path.join(root, path[len(_PREFIX):]) if path.startswith(_PREFIX) else path


def _remote(root: str, path) -> str:
  """The ``gs://`` path of a local path under ``root`` (the inverse of ``_local``); any other path as it is."""
  path = os.fspath(path)
  return _PREFIX + os.path.relpath(path, root) if path.startswith(root + os.sep) else path


class _Handler(http.server.BaseHTTPRequestHandler):
  """The GCS JSON API calls tensorstore's ``gcs`` kvstore makes, on files under ``server.root``."""

  protocol_version = 'HTTP/1.1'  # Keep-alive and ``Expect: 100-continue``, as curl expects.

  def log_message(self, *args):  # pylint: disable=arguments-differ
    del args

  def _parse(self):
    url = urllib.parse.urlsplit(self.path)
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
    parts = url.path.split('/')  # ['', ('upload',) 'storage', 'v1', 'b', BUCKET, 'o', OBJECT...]
    if parts[1] == 'upload':
      parts = parts[1:]
    bucket = parts[4]
    name = urllib.parse.unquote('/'.join(parts[6:])) if len(parts) > 6 else query.get('name')
    return bucket, name, query

  def _send(self, status: int, body: bytes = b'', headers: dict | None = None):
    self.send_response(status)
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def _file(self, bucket: str, name: str) -> pathlib.Path:
    return pathlib.Path(self.server.root, bucket, name)

  @staticmethod
  def _generation(path: pathlib.Path) -> int:
    return path.stat().st_mtime_ns if path.is_file() else 0

  def _resource(self, bucket: str, name: str, path: pathlib.Path) -> dict:
    return {'kind': 'storage#object', 'bucket': bucket, 'name': name, 'size': str(path.stat().st_size),
            'generation': str(self._generation(path)), 'metageneration': '1'}

  def _precondition_failed(self, query: dict, generation: int) -> bool:
    return 'ifGenerationMatch' in query and int(query['ifGenerationMatch']) != generation

  def do_GET(self):  # pylint: disable=invalid-name
    bucket, name, query = self._parse()
    if name is None:  # A listing.
      prefix = query.get('prefix', '')
      base = pathlib.Path(self.server.root, bucket)
      items = []
      if base.is_dir():
        for path in sorted(base.rglob('*')):
          key = path.relative_to(base).as_posix()
          if path.is_file() and key.startswith(prefix):
            items.append(self._resource(bucket, key, path))
      self._send(200, json.dumps({'kind': 'storage#objects', 'items': items}).encode())
      return
    path = self._file(bucket, name)
    generation = self._generation(path)
    if not generation:
      self._send(404, b'{"error": {"code": 404}}')
      return
    if self._precondition_failed(query, generation):
      self._send(412, b'{"error": {"code": 412}}')
      return
    if 'ifGenerationNotMatch' in query and int(query['ifGenerationNotMatch']) == generation:
      self._send(304, headers={'x-goog-generation': str(generation)})
      return
    if query.get('alt') != 'media':
      self._send(200, json.dumps(self._resource(bucket, name, path)).encode())
      return
    data = path.read_bytes()
    status, headers = 200, {'x-goog-generation': str(generation)}
    if self.headers.get('Range'):
      start, end = self.headers['Range'].split('=')[1].split('-')
      start = int(start)
      end = len(data) - 1 if not end else min(int(end), len(data) - 1)
      headers['Content-Range'] = f'bytes {start}-{end}/{len(data)}'
      data, status = data[start:end + 1], 206
    self._send(status, data, headers)

  def do_POST(self):  # pylint: disable=invalid-name
    bucket, name, query = self._parse()
    body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
    path = self._file(bucket, name)
    with self.server.lock:
      if self._precondition_failed(query, self._generation(path)):
        self._send(412, b'{"error": {"code": 412}}')
        return
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(body)
      self._send(200, json.dumps(self._resource(bucket, name, path)).encode())

  def do_DELETE(self):  # pylint: disable=invalid-name
    bucket, name, query = self._parse()
    path = self._file(bucket, name)
    with self.server.lock:
      generation = self._generation(path)
      if not generation:
        self._send(404, b'{"error": {"code": 404}}')
      elif self._precondition_failed(query, generation):
        self._send(412, b'{"error": {"code": 412}}')
      else:
        path.unlink()
        self._send(204)


def _mock_epath(root: str):
  """``mock_epath`` with every ``gs://`` path mapped under ``root`` (results mapped back)."""
  def one(fn):
    return lambda original, path, *args, **kwargs: fn(original, _local(root, path), *args, **kwargs)

  def plain(original, path, *args, **kwargs):
    return original(path, *args, **kwargs)

  def two(original, path, dst, *args, **kwargs):
    return original(_local(root, path), _local(root, dst), *args, **kwargs)

  def glob(original, pattern):
    return [_remote(root, p) for p in original(_local(root, pattern))]

  def walk(original, top, **kwargs):
    for folder, dirs, files in original(_local(root, top), **kwargs):
      yield _remote(root, folder), dirs, files

  def rmtree(original, path):
    del original
    shutil.rmtree(_local(root, path))

  return epath_testing.mock_epath(
      open=one(plain), exists=one(plain), isdir=one(plain), listdir=one(plain), makedirs=one(plain),
      mkdir=one(plain), remove=one(plain), stat=one(plain), rmtree=rmtree, rename=two, replace=two, copy=two,
      glob=glob, walk=walk)


@contextlib.contextmanager
def fake_gcs(root: str):
  """Serves ``gs://BUCKET/key`` from ``root/BUCKET/key`` to epath and tensorstore while the block runs."""
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
  server.root, server.lock = root, threading.Lock()
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  saved = {k: os.environ.get(k) for k in ('TENSORSTORE_GCS_HTTP_URL', 'GOOGLE_AUTH_TOKEN_FOR_TESTING')}
  os.environ['TENSORSTORE_GCS_HTTP_URL'] = f'http://127.0.0.1:{server.server_address[1]}'
  os.environ['GOOGLE_AUTH_TOKEN_FOR_TESTING'] = 'fake'
  try:
    with _mock_epath(root), mock.patch.object(gcs_utils, 'is_hierarchical_namespace_enabled', lambda path: False):
      yield
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
    server.shutdown()
    server.server_close()
