r"""The issue's PyTorch yardstick: second-order MAML on Conv-4 with ``torch.func``.

Issue 4's speed bar quotes "a PyTorch ``torch.func`` implementation of that
configuration runs at about 2.2 meta-steps/s" on a 2-core CPU. This script is
such an implementation, so the bar's reference can be timed on the machine at
hand, beside ``benchmarks/omniglot_step_speed.py`` (the library's step):

* the same configuration: 5-way 1-shot, 1 query per class, 28x28x1 images,
  Conv-4 with 64 channels (3x3 conv, batch norm with the task's own batch
  statistics, ReLU, 2x2 max-pool), a linear head, meta-batch 32, one inner
  SGD step (lr 0.4), second order, Adam (1e-3) on the meta-parameters;
* per-task adapted weights through ``torch.func.vmap`` over the task batch of
  ``torch.func.grad`` (the inner step) inside ``torch.func.grad_and_value``
  (the outer step): PyTorch turns the vmapped convolution over per-task
  kernels into a grouped convolution, as XLA does;
* random images (speed only), fixed for the run; eager mode, no
  ``torch.compile``;
* batch norm written from mean / variance ops (``--batch_norm=ops``, default):
  ``F.batch_norm`` (``--batch_norm=fused``) is available for timing, but its
  second-order gradients under ``torch.func`` are not trusted (see ``batch_norm``).

It prints JSON: the median seconds per meta-step over ``--steps`` timed steps
after ``--warmup`` untimed ones (the update included), meta-steps/s, and the
torch version and thread count. ``meta_loss_and_grads`` returns the meta-loss
and meta-gradient of NumPy arrays, for the cross-check in
``tests/benchmarks/test_torch_func_reference.py`` (same maths as the library's
``--config.algorithm=maml`` task loss).

PyTorch is not a dependency of this project; run it from its own environment::

  python -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch==2.13.0 numpy absl-py
  /tmp/torchenv/bin/python -m benchmarks.torch_func_reference --steps=10
"""

import json
import os
import statistics
import time

from absl import app
from absl import flags
import numpy as np
import torch
from torch.nn import functional as F

_STEPS = flags.DEFINE_integer('steps', 10, 'Timed meta-steps (median reported).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed meta-steps first.')
_META_BATCH_SIZE = flags.DEFINE_integer('meta_batch_size', 32, 'Tasks per meta-step.')
_WAYS = flags.DEFINE_integer('ways', 5, 'Classes per task (1 support and --queries query images each).')
_QUERIES = flags.DEFINE_integer('queries', 1, 'Query images per class.')
_DEVICE = flags.DEFINE_string('device', 'cpu', "torch device, e.g. 'cpu' or 'cuda'.")
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the parameters and the random images.')
_BATCH_NORM = flags.DEFINE_enum('batch_norm', 'ops', ['ops', 'fused'], "Batch norm from mean / variance ops, or "
                                "F.batch_norm ('fused'; see batch_norm()).")

WIDTH, DEPTH, IMAGE_SIZE, INNER_LR, OUTER_LR, EPSILON = 64, 4, 28, 0.4, 1e-3, 1e-5


def init_params(generator: torch.Generator, ways: int, device: str) -> dict[str, torch.Tensor]:
  """Conv-4 parameters, He-normal kernels ``[out, in, 3, 3]``, unit BN scales, Glorot head ``[ways, 64]``."""
  params, channels = {}, 1
  for i in range(DEPTH):
    std = (2.0 / (9 * channels)) ** 0.5
    params[f'conv_{i}'] = torch.randn(WIDTH, channels, 3, 3, generator=generator) * std
    params[f'scale_{i}'] = torch.ones(WIDTH)
    params[f'offset_{i}'] = torch.zeros(WIDTH)
    channels = WIDTH
  limit = (6.0 / (WIDTH + ways)) ** 0.5
  params['head_kernel'] = (torch.rand(ways, WIDTH, generator=generator) * 2 - 1) * limit
  params['head_bias'] = torch.zeros(ways)
  return {k: v.to(device) for k, v in params.items()}


def batch_norm(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, method: str) -> torch.Tensor:
  """Normalises ``[batch, channels, H, W]`` with its own batch statistics (biased variance), then scale and offset.

  ``method='ops'`` writes it from mean / variance ops; ``'fused'`` calls
  ``F.batch_norm(..., training=True)``, whose second-order gradient under
  ``torch.func`` disagrees with the ops version and with JAX (the finding is in
  ``docs/notes/omniglot_speed.md``), so ``'ops'`` is the default.
  """
  if method == 'fused':
    return F.batch_norm(x, None, None, weight=scale, bias=offset, training=True, eps=EPSILON)
  mean = x.mean(dim=(0, 2, 3), keepdim=True)
  variance = (x - mean).square().mean(dim=(0, 2, 3), keepdim=True)
  return (x - mean) * torch.rsqrt(variance + EPSILON) * scale[:, None, None] + offset[:, None, None]


def conv4_logits(params: dict[str, torch.Tensor], images: torch.Tensor, norm: str = 'ops') -> torch.Tensor:
  """``[batch, 1, 28, 28]`` -> ``[batch, ways]``: conv, batch-statistics BN, ReLU, max-pool, x4; linear head."""
  x = images
  for i in range(DEPTH):
    x = F.conv2d(x, params[f'conv_{i}'], padding=1)
    x = batch_norm(x, params[f'scale_{i}'], params[f'offset_{i}'], norm)
    x = F.max_pool2d(F.relu(x), 2)
  return F.linear(x.flatten(1), params['head_kernel'], params['head_bias'])


def task_query_loss(params, support_images, support_labels, query_images, query_labels, norm='ops'):
  """One task: one SGD step on the support loss, then the query loss at the adapted weights (second order)."""
  def support_loss(p):
    return F.cross_entropy(conv4_logits(p, support_images, norm), support_labels)
  grads = torch.func.grad(support_loss)(params)
  adapted = {k: params[k] - INNER_LR * grads[k] for k in params}
  return F.cross_entropy(conv4_logits(adapted, query_images, norm), query_labels)


def meta_loss(params, batch, norm='ops'):
  """Mean query loss over the task batch; ``batch`` is four tensors with a leading task axis."""
  per_task = torch.func.vmap(lambda *task: task_query_loss(params, *task, norm=norm))
  return per_task(*batch).mean()


meta_grad_and_loss = torch.func.grad_and_value(meta_loss)


def random_batch(generator, meta_batch_size, ways, queries, device):
  """Images ``[tasks, ways * n, 1, 28, 28]`` and labels ``[tasks, ways * n]`` (n = 1 support, ``queries`` query)."""
  def images(n):
    return torch.randn(meta_batch_size, ways * n, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(device)
  def labels(n):
    return torch.arange(ways).repeat_interleave(n).expand(meta_batch_size, -1).contiguous().to(device)
  return images(1), labels(1), images(queries), labels(queries)


def main(argv):
  del argv
  generator = torch.Generator().manual_seed(_SEED.value)
  params = init_params(generator, _WAYS.value, _DEVICE.value)
  batch = random_batch(generator, _META_BATCH_SIZE.value, _WAYS.value, _QUERIES.value, _DEVICE.value)
  optimizer = torch.optim.Adam(list(params.values()), lr=OUTER_LR)

  def meta_step():
    grads, loss = meta_grad_and_loss(params, batch, _BATCH_NORM.value)
    for name, tensor in params.items():
      tensor.grad = grads[name]
    optimizer.step()
    if _DEVICE.value.startswith('cuda'):
      torch.cuda.synchronize()
    return float(loss)

  load_average = list(os.getloadavg()) if _DEVICE.value == 'cpu' else None
  times, losses = [], []
  for i in range(_WARMUP.value + _STEPS.value):
    start = time.perf_counter()
    losses.append(meta_step())
    if i >= _WARMUP.value:
      times.append(time.perf_counter() - start)
  median = statistics.median(times)
  print(json.dumps({
      'implementation': 'torch.func: grad_and_value(vmap over tasks of (grad inner step -> query loss)), eager',
      'config': {'ways': _WAYS.value, 'shots': 1, 'queries_per_class': _QUERIES.value, 'image': [28, 28, 1],
                 'width': WIDTH, 'depth': DEPTH, 'meta_batch_size': _META_BATCH_SIZE.value, 'inner_steps': 1,
                 'inner_lr': INNER_LR, 'second_order': True, 'outer_optimizer': 'adam', 'outer_lr': OUTER_LR},
      'batch_norm': _BATCH_NORM.value, 'device': _DEVICE.value, 'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
      'load_average_before': load_average,
      'timed_steps': len(times), 'median_step_s': round(median, 4), 'meta_steps_per_s': round(1.0 / median, 3),
      'first_last_meta_loss': [round(losses[0], 4), round(losses[-1], 4)]}, indent=2))


def meta_loss_and_grads(params: dict[str, np.ndarray], batch: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
  """Meta-loss (``'loss'``) and meta-gradient (torch names and layouts) of NumPy params and a ``random_batch``-like batch."""
  grads, loss = meta_grad_and_loss({k: torch.tensor(v) for k, v in params.items()},
                                   tuple(torch.tensor(x) for x in batch), 'ops')
  return {'loss': loss.detach().numpy(), **{k: v.detach().numpy() for k, v in grads.items()}}


if __name__ == '__main__':
  app.run(main)
