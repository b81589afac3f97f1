"""The persistent XLA compilation cache for the launchers: a rerun skips compiling what it compiled before.

``enable()`` points JAX at ``$METAPRUNE_JAX_CACHE`` (default
``~/.cache/metaprune_jax/xla``) unless the user already chose a cache with
``--jax_compilation_cache_dir`` or ``JAX_COMPILATION_CACHE_DIR``; an empty
``METAPRUNE_JAX_CACHE`` turns it off. Programs that compile in under a second are
not cached (JAX's default threshold).
"""

import os

import jax

ENV = 'METAPRUNE_JAX_CACHE'
DEFAULT_DIR = os.path.join('~', '.cache', 'metaprune_jax', 'xla')


def enable() -> str | None:
  """Turns the cache on (module docstring); returns its folder, or None when off or chosen by the user."""
  if jax.config.jax_compilation_cache_dir or os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return None
  folder = os.environ.get(ENV, DEFAULT_DIR)
  if not folder:
    return None
  folder = os.path.expanduser(folder)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError:  # A read-only home: run without the cache.
    return None
  jax.config.update('jax_compilation_cache_dir', folder)
  return folder
