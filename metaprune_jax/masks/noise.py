"""Uniform noise for gate sampling, keyed by ``jax.random`` keys.

Sampling hard-concrete gates needs one uniform number per gate, per task, per
meta-step: 42,000 numbers a step for a 2x40 MLP and 25 tasks, where
``jax.random``'s threefry is a large share of the gated step's time
(``docs/notes/sinusoid_speed.md``). ``method='hash'`` draws two 32-bit
words from the key with threefry and turns every gate index into a uniform with a
keyed integer hash (two rounds of the ``lowbias32`` mixer, ~10 integer ops a
number): statistically uniform and independent across keys for this purpose (see
``tests/masks/test_noise.py``), several times cheaper. ``method='threefry'`` is
the plain ``jax.random.uniform`` for reference.
"""

import jax
import jax.numpy as jnp

METHODS = ('hash', 'threefry')


def _lowbias32(x: jax.Array) -> jax.Array:
  """A 32-bit integer mixer with low avalanche bias (C. Wellons' lowbias32)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def uniform(key: jax.Array, shape: tuple[int, ...], *, method: str = 'hash',
            dtype=jnp.float32) -> jax.Array:
  """Uniform noise in the open interval (0, 1).

  Args:
    key: a ``jax.random`` key.
    shape: output shape.
    method: ``'hash'`` (fast keyed hash) or ``'threefry'`` (``jax.random``).
    dtype: float dtype of the result.

  Returns:
    ``shape`` array; never exactly 0 or 1 (for float32 and wider ``dtype``).
  """
  if method == 'threefry':
    return jax.random.uniform(key, shape, dtype, minval=1e-6, maxval=1.0 - 1e-6)
  if method != 'hash':
    raise ValueError(f'noise method={method!r} is unknown; use one of {METHODS}.')
  seeds = jax.random.bits(key, (2,), jnp.uint32)
  size = 1
  for d in shape:
    size *= d
  index = jnp.arange(size, dtype=jnp.uint32).reshape(shape)
  bits = _lowbias32(_lowbias32(index ^ seeds[0]) + seeds[1])
  return _bits_to_open_unit(bits, dtype)


def _bits_to_open_unit(bits: jax.Array, dtype=jnp.float32) -> jax.Array:
  """Maps 32-bit words to uniforms strictly inside (0, 1).

  Keeps the 23 high bits ``k`` and returns ``(k + 0.5) / 2**23``. Every such
  value has at most 24 significant bits, so it is exact in float32 (and
  float64): the extremes are ``2**-24`` and ``1 - 2**-24``. (With 24 bits,
  ``(2**24 - 1) + 0.5`` rounds to ``2**24`` in float32 and the result is
  exactly 1.0.)

  Args:
    bits: ``uint32`` array of any shape.
    dtype: float dtype of the result, float32 or wider for the open-interval
      guarantee.

  Returns:
    ``bits.shape`` array of ``dtype``.
  """
  return ((bits >> 9).astype(dtype) + 0.5) * (1.0 / (1 << 23))


def uniform_tree(tree, key: jax.Array, *, method: str = 'hash', num_tasks: int | None = None):
  """Uniform noise for every array leaf of ``tree`` (``None`` leaves stay ``None``).

  One draw covers every leaf (and every task when ``num_tasks`` is given), then
  is split per leaf: leaves ``[num_tasks, *leaf.shape]`` (or ``leaf.shape``).
  Used for gate noise, outside the per-task ``vmap``, so RNG work is a single
  call per meta-step.
  """
  leaves, treedef = jax.tree.flatten(tree, is_leaf=lambda x: x is None)
  sizes = [0 if leaf is None else leaf.size for leaf in leaves]
  lead = () if num_tasks is None else (num_tasks,)
  flat = uniform(key, lead + (max(sum(sizes), 1),), method=method)
  out, start = [], 0
  for leaf, size in zip(leaves, sizes):
    if leaf is None:
      out.append(None)
      continue
    out.append(flat[..., start:start + size].reshape(lead + leaf.shape).astype(leaf.dtype))
    start += size
  return jax.tree.unflatten(treedef, out)
