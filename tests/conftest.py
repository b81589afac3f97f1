"""Test-wide setup: a persistent XLA compilation cache shared by the test process and its subprocesses.

Many tests build the same tiny configs (the smoke sinusoid, the tiny Omniglot) and compile identical
programs, in this process and in launcher subprocesses; with the cache each program compiles once per run
(pytest-xdist's two workers share it).
The cache lives in the checkout (``.jax_cache/``, ignored by git), so a fresh clone starts cold.
"""

import os

_CACHE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.jax_cache')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE_DIR)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

# Tests compile far more than they run: XLA's backend optimisation level 0 compiles faster (the programs compute the
# same functions; launcher subprocesses inherit the flag). Unless XLA_FLAGS already sets a level.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs',
                  float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))
jax.config.update('jax_persistent_cache_min_entry_size_bytes',
                  int(os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES']))
