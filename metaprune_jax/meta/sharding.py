"""Data-parallel meta-steps: the task batch sharded over a 1-D device mesh, everything else replicated.

The mesh has one axis, ``'tasks'``. Inside the one jitted meta-step the sampled
``TaskBatch`` is constrained to ``NamedSharding(mesh, P('tasks'))`` (its leading
axis, ``[meta_batch_size, ...]``, split across devices); the ``MetaState`` and the
metrics are replicated (``P()``) through the jit's ``in_shardings`` /
``out_shardings``. XLA's SPMD partitioner turns the mean over tasks into an
all-reduce, so N devices compute the same update as one, up to float summation
order. Multi-host: call ``initialize_distributed`` first (the mesh then spans
``jax.devices()``, every host's devices).
"""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

TASK_AXIS = 'tasks'


def initialize_distributed(enabled: bool, *, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None) -> None:
  """``jax.distributed.initialize`` when ``enabled``: the cluster auto-detected (TPU pods, SLURM, ...), except
  what is given (e.g. ``coordinator_address='localhost:1234', num_processes=2, process_id=0`` on one machine).

  Must run before any other JAX call; a no-op when already initialised.
  """
  if enabled and not jax.distributed.is_initialized():
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def resolve_num_devices(num_devices: int) -> int:
  """``num_devices`` checked against what is available; 0 means every device that can help.

  0 is every device of every host on GPU / TPU. On the CPU backend of a single
  process it is 1: CPU "devices" there (``--xla_force_host_platform_device_count``)
  share the same cores, so splitting the task batch cannot speed a step up and
  adds a cross-device all-reduce rendezvous to every step (~1 ms on 2 cores,
  ``benchmarks/multi_device.py``). An explicit ``num_devices > 1`` still shards
  over simulated devices (to check sharded numbers on a laptop, as the tests do).
  """
  available = jax.device_count()
  if jax.process_count() > 1 and num_devices not in (0, available):
    raise ValueError(f'--config.run.num_devices={num_devices} is invalid on a multi-host run: the mesh spans every '
                     f'process ({jax.process_count()}); use 0 (all {available} devices).')
  if num_devices == 0:
    if jax.default_backend() == 'cpu' and jax.process_count() == 1:
      return 1
    return available
  if num_devices > available:
    raise ValueError(f'--config.num_devices={num_devices} is invalid: only {available} device(s) are available '
                     f'({jax.devices()[0].platform}); use 0 (all) or a number <= {available}.')
  return num_devices


def make_mesh(num_devices: int) -> jax.sharding.Mesh | None:
  """A 1-D ``('tasks',)`` mesh over the first ``num_devices`` devices; None for a single device."""
  num_devices = resolve_num_devices(num_devices)
  if num_devices == 1:
    return None
  return jax.sharding.Mesh(np.asarray(jax.devices()[:num_devices]), (TASK_AXIS,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def task_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (task) axis split across the mesh, the rest of each array whole."""
  return NamedSharding(mesh, P(TASK_AXIS))


def shard_tasks(tasks, mesh: jax.sharding.Mesh):
  """Inside jit: constrains every leaf of a ``TaskBatch`` (``[meta_batch_size, ...]``) to the task sharding."""
  return jax.lax.with_sharding_constraint(tasks, jax.tree.map(lambda _: task_sharding(mesh), tasks))


def jit_shardings(mesh: jax.sharding.Mesh | None) -> dict:
  """``jax.jit`` keyword arguments for ``step(state) -> (state, metrics)``: replicated in and out."""
  if mesh is None:
    return {}
  return {'in_shardings': replicated(mesh), 'out_shardings': replicated(mesh)}


def replicate(tree, mesh: jax.sharding.Mesh | None):
  """Places every array of ``tree`` (e.g. a ``MetaState``) on every device of ``mesh``.

  On a multi-host mesh every process holds the whole (identical) ``tree`` and places it on its own devices.
  """
  if mesh is None:
    return tree
  if jax.process_count() == 1:
    return jax.device_put(tree, replicated(mesh))

  def to_global(leaf):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # Typed keys travel as their raw key data.
      return jax.random.wrap_key_data(to_global(jax.random.key_data(leaf)), impl=jax.random.key_impl(leaf))
    return jax.make_array_from_process_local_data(replicated(mesh), np.asarray(leaf))
  return jax.tree.map(to_global, tree)
