"""Mask makers of the classic pruning baselines: scores from ``criteria``, exact top-k from ``select``.

Each returns a fixed mask tree mirroring ``params``: float32 0/1 arrays of the
full leaf shape at the prunable leaves (``criteria.default_prunable``: kernels of
rank >= 2) and ``None`` elsewhere, with exactly ``floor(sparsity * n + 0.5)``
zeros over the ``n`` prunable weights (``scope='global'``) or per layer
(``scope='layerwise'``, optionally with ERK per-layer sparsities).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from metaprune_jax import types
from metaprune_jax.masks import masking
from metaprune_jax.pruning import criteria
from metaprune_jax.pruning import select


def ones_masks(params: types.Params) -> types.Masks:
  """All-ones float32 masks at the prunable leaves (``criteria.default_prunable``), ``None`` elsewhere."""
  return masking.map_gated(lambda p, _: jnp.ones(jnp.shape(p), jnp.float32), params,
                           criteria.default_prunable(params))


def magnitude_masks(params: types.Params, sparsity: float, *, scope: str = 'global',
                    distribution: str = 'uniform') -> types.Masks:
  """Top-k ``|w|`` masks with exactly ``floor(sparsity * n + 0.5)`` zeros (global, or per layer).

  ``distribution='erk'`` (with ``scope='layerwise'``) gives small layers more
  density (``select.erk_densities``); the total is then exact up to rounding.
  """
  return select.topk_masks(criteria.magnitude_scores(params), sparsity, scope=scope, distribution=distribution)


def filter_masks(params: types.Params, sparsity: float, *, exclude: tuple[str, ...] = ()) -> types.Masks:
  """Structured L1 masks: in every prunable kernel but ``exclude``, the ``sparsity`` share of output units
  (neurons, conv filters) with the smallest L1 norm zeroed whole (Li et al. 2017).

  Args:
    params: parameter pytree.
    sparsity: fraction of output units removed per layer, in ``[0, 1)``.
    exclude: top-level names never pruned (the output head, whose units are the outputs).

  Returns:
    A mask tree with the structure of ``ones_masks(params)`` (biases stay unmasked, ``None``): full-shape
    0/1 arrays at the pruned kernels, all ones at excluded kernels.
  """
  prunable = criteria.default_prunable(params)
  prunable = {name: (jax.tree.map(lambda _: None, tree) if name in exclude else tree)
              for name, tree in prunable.items()}
  masks = select.unit_masks(params, criteria.unit_norm_scores(params, prunable), sparsity, mask_bias=False)
  ones = ones_masks(params)
  return jax.tree.map(lambda o, m: o if m is None else m, ones, masks, is_leaf=lambda x: x is None)


def random_masks(key: types.PRNGKey, params: types.Params, sparsity: float, *, scope: str = 'global',
                 distribution: str = 'uniform') -> types.Masks:
  """Uniformly random masks with the exact sparsity (per layer with ``scope='layerwise'``)."""
  return select.topk_masks(criteria.random_scores(key, params), sparsity, scope=scope, distribution=distribution)


def snip_masks(params: types.Params, loss_fn: Callable[[types.Params], jax.Array], sparsity: float, *,
               scope: str = 'global', distribution: str = 'uniform') -> types.Masks:
  """SNIP (Lee et al. 2019): keep the largest ``|w * dL/dw|``.

  Args:
    params: parameters ``w``, usually the meta-initialisation.
    loss_fn: ``params -> scalar`` loss ``L`` whose gradient scores the weights,
      e.g. the MAML meta-loss (mean query loss after adaptation) on a batch of tasks.
    sparsity: fraction of prunable weights to remove, in ``[0, 1)``.
    scope: 'global' or 'layerwise'.
    distribution: 'uniform' or 'erk' (layerwise only).

  Returns:
    Mask tree mirroring ``params`` with exactly the requested sparsity.
  """
  grads = jax.jit(jax.grad(loss_fn))(params)
  return select.topk_masks(criteria.snip_scores(params, grads), sparsity, scope=scope, distribution=distribution)
