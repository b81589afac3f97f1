"""The export folder: every array in one ``arrays.bin``, everything else in ``export.json``.

``arrays.bin`` is the raw bytes of the stored arrays one after another (no
headers, no padding), so ``artifact_bytes`` is exactly what the weights cost.
``export.json`` holds the manifest (per leaf: its encoding and, per stored part,
offset, byte count, dtype and shape), the model spec and the report; its size is
``metadata_bytes``.

Leaf encodings (``encode_leaf``):

* ``'dense'``: ``values``, the float32 array;
* ``'packed'``: a leaf with pruned entries, ``positions`` + ``values``
  (``packing``: bitmask or index list), reconstructed exactly;
* ``'int8'`` / ``'int8_packed'``: per-output-channel symmetric int8
  (``quantize``): ``qvalue`` (dense, or packed by the pattern) + ``scale``.

The pattern of a packed leaf is what the exported model adapts under (its
pruned weights stay zero), so it comes back from ``read`` beside the values.
"""

import json
import os

import numpy as np

from metaprune_jax.export import packing
from metaprune_jax.export import quantize

FORMAT = 'metaprune_jax.compact/1'
ARRAYS_FILE = 'arrays.bin'
METADATA_FILE = 'export.json'
QUANTIZATIONS = ('none', 'int8')


def _is_kernel(path: str, array: np.ndarray) -> bool:
  return path.rsplit('/', 1)[-1] in ('kernel', 'input_kernel', 'recurrent_kernel') and array.ndim >= 2


def encode_leaf(path: str, array: np.ndarray, pattern: np.ndarray | None, quantization: str) -> dict:
  """``{'encoding': name, 'shape': ..., 'parts': {part: np.ndarray}}`` of one leaf (module docstring)."""
  array = np.asarray(array, np.float32)
  parts = {}
  if quantization == 'int8' and _is_kernel(path, array) and array.size:
    qw = quantize.quantize_weight(array, channel_axis=-1)
    qvalue, parts['scale'] = np.asarray(qw.qvalue, np.int8), np.asarray(qw.scale, np.float32).reshape(-1)
    encoding, array = 'int8', qvalue
  else:
    encoding = 'dense'
  if pattern is not None:
    packed = packing.pack(array, np.asarray(pattern) != 0)
    parts['positions'], parts['values'] = packed.positions, packed.values
    return {'encoding': encoding + '_packed' if encoding != 'dense' else 'packed', 'shape': list(array.shape),
            'position_format': packed.format, 'parts': parts}
  parts['values'] = array
  return {'encoding': encoding, 'shape': list(array.shape), 'parts': parts}


def decode_leaf(entry: dict, parts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
  """``(float32 array, {0, 1} pattern or None)`` of one leaf written by ``encode_leaf``."""
  shape, encoding = tuple(entry['shape']), entry['encoding']
  pattern = None
  if encoding in ('packed', 'int8_packed'):
    packed = packing.PackedArray(parts['positions'], parts['values'], shape, entry['position_format'])
    values = packing.unpack(packed)
    pattern = packing.unpack(packed._replace(values=np.ones(parts['values'].shape, np.float32)))
  elif encoding in ('dense', 'int8'):
    values = parts['values'].reshape(shape)
  else:
    raise ValueError(f'unknown leaf encoding {encoding!r}')
  if encoding.startswith('int8'):
    scale = parts['scale'].reshape((1,) * (len(shape) - 1) + (-1,))
    values = np.asarray(quantize.dequantize(quantize.QuantizedWeight(values.astype(np.int8), scale)))
  return values.astype(np.float32), pattern


def flatten(tree: dict, prefix: str = '') -> dict[str, object]:
  """``{'a/b': leaf}`` of a nested dict (None leaves dropped)."""
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, dict):
      flat.update(flatten(value, path + '/'))
    elif value is not None:
      flat[path] = value
  return flat


def unflatten(flat: dict[str, object]) -> dict:
  tree = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split('/')
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def write(out_dir: str, trees: dict[str, tuple[dict, dict | None]], metadata: dict, *,
          quantization: str = 'none') -> dict:
  """Writes ``arrays.bin`` and ``export.json`` into ``out_dir`` (created; files replaced atomically).

  Args:
    out_dir: the export folder.
    trees: ``{name: (params-like tree, pattern tree or None)}``, e.g. ``{'params': (params, masks)}``.
    metadata: JSON-able dict written beside the manifest (spec, report).
    quantization: ``'none'`` or ``'int8'`` (kernels of the ``'params'`` tree only).

  Returns:
    The written ``export.json`` dict with ``artifact_bytes`` and ``metadata_bytes``.
  """
  if quantization not in QUANTIZATIONS:
    raise ValueError(f'--quantize={quantization!r} is unknown; use one of {QUANTIZATIONS}.')
  os.makedirs(out_dir, exist_ok=True)
  manifest, chunks, offset = {}, [], 0
  for name, (tree, patterns) in trees.items():
    flat_patterns = flatten(patterns or {})
    for path, array in flatten(tree).items():
      entry = encode_leaf(path, array, flat_patterns.get(path), quantization if name == 'params' else 'none')
      stored = {}
      for part, data in entry.pop('parts').items():
        data = np.ascontiguousarray(data)
        stored[part] = {'offset': offset, 'nbytes': int(data.nbytes), 'dtype': data.dtype.str,
                        'shape': list(data.shape)}
        chunks.append(data.tobytes())
        offset += data.nbytes
      manifest[f'{name}/{path}'] = {**entry, 'parts': stored}
  document = {'format': FORMAT, **metadata, 'quantization': quantization, 'artifact_bytes': offset,
              'arrays': manifest}
  _replace_file(os.path.join(out_dir, ARRAYS_FILE), b''.join(chunks))
  _write_metadata(os.path.join(out_dir, METADATA_FILE), document)
  return document


def update_metadata(out_dir: str, fields: dict) -> dict:
  """Adds ``fields`` to an export's ``export.json`` (the arrays are untouched); returns the new document."""
  path = os.path.join(out_dir, METADATA_FILE)
  with open(path) as f:
    document = {**json.load(f), **fields}
  _write_metadata(path, document)
  return document


def _write_metadata(path: str, document: dict) -> None:
  """Writes ``document`` with ``metadata_bytes`` = the size of the file it is written into (atomically)."""
  document['metadata_bytes'] = 0
  for _ in range(3):  # The count is part of the file it counts: settle it.
    document['metadata_bytes'] = len(_dumps(document))
  _replace_file(path, _dumps(document))


def _dumps(document: dict) -> bytes:
  return json.dumps(document, indent=1, sort_keys=True).encode()


def _replace_file(path: str, data: bytes) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def read(export_dir: str) -> tuple[dict, dict[str, tuple[dict, dict]]]:
  """``(export.json dict, {name: (tree of float32 arrays, tree of patterns (None: dense leaf))})``.

  Raises:
    ValueError: ``export_dir`` is not an export folder (no ``export.json`` of this
      format) or its ``arrays.bin`` does not match the manifest (damaged).
  """
  meta_path, arrays_path = os.path.join(export_dir, METADATA_FILE), os.path.join(export_dir, ARRAYS_FILE)
  if not os.path.isfile(meta_path):
    hint = (' It looks like a training run: export it first with python -m experiments.export --workdir=RUN '
            '--out=DIR.' if os.path.isfile(os.path.join(export_dir, 'config.json')) else '')
    raise ValueError(f'{export_dir!r} is not an export folder: it has no {METADATA_FILE}.{hint}')
  try:
    with open(meta_path) as f:
      document = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{meta_path} is not valid JSON ({e}); re-export the run.') from e
  if document.get('format') != FORMAT:
    raise ValueError(f'{meta_path} has format {document.get("format")!r}, expected {FORMAT!r}; re-export the run.')
  if not os.path.isfile(arrays_path):
    raise ValueError(f'{export_dir!r} has {METADATA_FILE} but no {ARRAYS_FILE}; re-export the run.')
  with open(arrays_path, 'rb') as f:
    blob = f.read()
  if len(blob) != document['artifact_bytes']:
    raise ValueError(f'{arrays_path} has {len(blob)} bytes but {meta_path} records {document["artifact_bytes"]}: '
                     'the export is damaged; re-export the run.')
  flat: dict[str, dict[str, object]] = {}
  for key, entry in document['arrays'].items():
    parts = {part: np.frombuffer(blob, np.dtype(info['dtype']), count=int(np.prod(info['shape'], dtype=np.int64)),
                                 offset=info['offset']).reshape(info['shape']).copy()
             for part, info in entry['parts'].items()}
    try:
      values, pattern = decode_leaf(entry, parts)
    except ValueError as e:
      raise ValueError(f'{arrays_path}: array {key} cannot be decoded ({e}); re-export the run.') from e
    name, path = key.split('/', 1)
    flat.setdefault(name, {})[path] = (values, pattern)
  trees = {name: (unflatten({p: v for p, (v, _) in leaves.items()}),
                  unflatten({p: m for p, (_, m) in leaves.items()}))
           for name, leaves in flat.items()}
  return document, trees
