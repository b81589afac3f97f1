"""A policy-gradient controller of per-layer sparsity under a global budget (the AMC family, REINFORCE).

An *allocation* is a vector ``counts [L]`` of kept weights per prunable layer.
The controller learns a distribution over allocations that spend one global
budget, rewarded by whatever the caller measures (e.g. a pruned network's
validation loss after a brief fine-tune):

* ``LayerBudget`` describes the layers (sizes ``n_l``, cost of one kept weight
  ``c_l``, lower bounds ``lo_l``) and the budget ``B``; ``params_budget`` (every
  kept weight costs 1) and ``flops_budget`` (a kept weight costs its forward
  FLOPs) build one from a sparsity.
* ``project(logits, budget)`` maps a proposal to an allocation on the budget:
  layer ``l`` keeps ``n_l * sigmoid(logits_l + shift)`` weights (clipped to
  ``[lo_l, n_l]``) with one ``shift`` found by bisection so that the total cost
  meets ``B``, then rounds to integers and repairs the total greedily. Only
  differences between logits matter (a common offset is absorbed by ``shift``);
  equal logits give every layer the same keep ratio (uniform).
* The policy is a diagonal Gaussian over the logits (``{'mean': [L], 'log_std': [L]}``).
* ``reinforce(budget, optimizer, ...)`` returns a ``Controller`` (optax style: a
  NamedTuple of pure functions over an explicit ``ControllerState``):
  ``propose`` samples candidates, ``update`` takes one REINFORCE step with a
  moving-average reward baseline, ``allocation`` projects the policy mean;
  ``episode(controller, reward_fn)`` chains them.

Everything is jittable and ``vmap``-able over candidates: an allocation is an
int32 array of fixed shape ``[L]``, so per-layer masks of fixed shapes follow
from it (``select.count_masks``).

References: He et al., "AMC: AutoML for Model Compression", ECCV 2018; Williams,
"Simple statistical gradient-following algorithms", Machine Learning 1992.
"""

import math
from collections.abc import Callable
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaprune_jax import types

BUDGETS = ('params', 'flops')  # What a global budget counts: kept weights, or their forward FLOPs.
_BISECTION_STEPS = 60
_SHIFT_MARGIN = 40.0  # sigmoid(-40) * n is below one weight for any n < 1e17.


class LayerBudget(NamedTuple):
  """Layers and the global budget of an allocation (static: tuples of Python ints, hashable).

  Attributes:
    sizes: ``n_l``, prunable weights of each layer.
    costs: ``c_l``, cost of one kept weight of layer ``l`` (1 for a parameter
      budget; its forward FLOPs for a FLOPs budget), positive ints.
    min_kept: ``lo_l``, the fewest weights layer ``l`` keeps (1: no layer cut off).
    total: ``B``, the cost the kept weights spend: ``sum_l c_l * counts_l``.
  """
  sizes: tuple[int, ...]
  costs: tuple[int, ...]
  min_kept: tuple[int, ...]
  total: int


def _ints(values, name: str) -> tuple[int, ...]:
  out = tuple(int(v) for v in values)
  if any(float(v) != o for v, o in zip(values, out)):
    raise ValueError(f'{name} must be integers, got {tuple(values)!r}.')
  return out


def layer_budget(sizes: Sequence[int], costs: Sequence[int], total: int, *,
                 min_kept: int | Sequence[int] = 1) -> LayerBudget:
  """A validated ``LayerBudget``.

  Raises:
    ValueError: no layer, a non-positive size or cost, ``min_kept`` outside
      ``[0, n_l]``, or a total no allocation within the bounds can spend.
  """
  sizes, costs = _ints(sizes, 'sizes'), _ints(costs, 'costs')
  if not sizes or len(costs) != len(sizes):
    raise ValueError(f'sizes and costs need one entry per layer, got {sizes!r} and {costs!r}.')
  if min(sizes) < 1 or min(costs) < 1:
    raise ValueError(f'sizes and costs must be positive, got {sizes!r} and {costs!r}.')
  lower = _ints((min_kept,) * len(sizes) if isinstance(min_kept, (int, float)) else min_kept, 'min_kept')
  if len(lower) != len(sizes) or any(not 0 <= lo <= n for lo, n in zip(lower, sizes)):
    raise ValueError(f'min_kept must be in [0, size] for every layer, got {lower!r} for sizes {sizes!r}.')
  floor = sum(c * lo for c, lo in zip(costs, lower))
  ceiling = sum(c * n for c, n in zip(costs, sizes))
  if not floor <= int(total) <= ceiling:
    raise ValueError(f'the budget {int(total)} is outside [{floor}, {ceiling}]: the cost of keeping min_kept '
                     'weights per layer and of keeping every weight. Lower the sparsity or min_kept.')
  return LayerBudget(sizes, costs, lower, int(total))


def params_budget(sizes: Sequence[int], sparsity: float, *, min_kept: int | Sequence[int] = 1) -> LayerBudget:
  """Keep ``sum(n) - floor(sparsity * sum(n) + 0.5)`` weights (the count of ``select.topk_masks``)."""
  if not 0.0 <= float(sparsity) < 1.0:
    raise ValueError(f'sparsity must be in [0, 1), got {sparsity!r}.')
  n = sum(int(s) for s in sizes)
  return layer_budget(sizes, (1,) * len(sizes), n - min(int(math.floor(sparsity * n + 0.5)), n),
                      min_kept=min_kept)


def flops_budget(sizes: Sequence[int], flops_per_weight: Sequence[int], sparsity: float, *,
                 fixed_flops: int = 0, min_kept: int | Sequence[int] = 1) -> LayerBudget:
  """Spend at most ``(1 - sparsity)`` of the dense forward FLOPs.

  Args:
    sizes: prunable weights per layer.
    flops_per_weight: forward FLOPs of one kept weight per layer (2 for a Dense
      kernel: a multiply-add; ``2 * H * W`` for a conv kernel on ``H x W`` outputs).
    sparsity: the share of the dense FLOPs removed, in ``[0, 1)``.
    fixed_flops: FLOPs no mask removes (bias adds), counted in the dense total.
    min_kept: per-layer lower bounds.

  Returns:
    A budget whose ``total`` is ``floor((1 - sparsity) * dense) - fixed_flops``
    kernel FLOPs, ``dense = sum(c * n) + fixed_flops``.
  """
  if not 0.0 <= float(sparsity) < 1.0:
    raise ValueError(f'sparsity must be in [0, 1), got {sparsity!r}.')
  dense = sum(int(c) * int(n) for c, n in zip(flops_per_weight, sizes)) + int(fixed_flops)
  return layer_budget(sizes, flops_per_weight, int(math.floor((1.0 - sparsity) * dense)) - int(fixed_flops),
                      min_kept=min_kept)


def keep_ratios_logits(densities: Sequence[float]) -> jax.Array:
  """``[L]`` logits of per-layer densities (clipped to ``[1e-4, 1 - 1e-4]``), e.g. ERK's, as a policy mean."""
  d = jnp.clip(jnp.asarray(densities, jnp.float32), 1e-4, 1.0 - 1e-4)
  return jnp.log(d) - jnp.log1p(-d)


# ---------------------------------------------------------------------------
# The projection onto the budget.


def _continuous_counts(logits: jax.Array, shift: jax.Array, sizes, lower) -> jax.Array:
  return jnp.clip(sizes * jax.nn.sigmoid(logits + shift), lower, sizes)


def project(logits: jax.Array, budget: LayerBudget) -> jax.Array:
  """The allocation of a proposal: per-layer kept counts on the budget.

  Args:
    logits: ``[L]`` proposal; layer ``l`` keeps ``n_l * sigmoid(logits_l + shift)``.
    budget: the layers and the budget.

  Returns:
    ``[L]`` int32 counts with ``lo_l <= counts_l <= n_l`` and total cost
    ``C = sum_l c_l * counts_l <= B`` with ``B - C`` smaller than the cost of one
    more weight of any layer that is not full: with equal costs (a parameter
    budget, or the FLOPs of an MLP) exactly ``B``.
  """
  sizes = jnp.asarray(budget.sizes, jnp.float32)
  lower = jnp.asarray(budget.min_kept, jnp.float32)
  costs = jnp.asarray(budget.costs, jnp.float32)
  logits = jnp.asarray(logits, jnp.float32)

  def spent(shift):
    return jnp.sum(costs * _continuous_counts(logits, shift, sizes, lower))

  def bisect(_, bracket):
    low, high = bracket
    middle = 0.5 * (low + high)
    over = spent(middle) > budget.total
    return jnp.where(over, low, middle), jnp.where(over, middle, high)

  bracket = (-jnp.max(logits) - _SHIFT_MARGIN, -jnp.min(logits) + _SHIFT_MARGIN)
  shift, _ = jax.lax.fori_loop(0, _BISECTION_STEPS, bisect, bracket)  # spent(shift) <= total.
  target = _continuous_counts(logits, shift, sizes, lower)
  counts = jnp.clip(jnp.floor(target), lower, sizes).astype(jnp.int32)
  return _repair(counts, target, budget)


def _repair(counts: jax.Array, target: jax.Array, budget: LayerBudget) -> jax.Array:
  """Adds (or removes) one weight at a time where rounding lost (or gained) the most, until the total fits.

  Integer arithmetic: costs and totals are int32, so the result is exact.
  """
  sizes = jnp.asarray(budget.sizes, jnp.int32)
  lower = jnp.asarray(budget.min_kept, jnp.int32)
  costs = jnp.asarray(budget.costs, jnp.int32)
  total = jnp.asarray(budget.total, jnp.int32)

  def left(c):
    return total - jnp.sum(costs * c)

  def can_add(c):
    return (c < sizes) & (costs <= left(c))

  def can_remove(c):
    return c > lower

  def needs_work(c):
    return (left(c) < 0) | jnp.any(can_add(c))

  def fix(c):
    gap = target - c.astype(jnp.float32)  # Positive: rounding kept too few.
    add = jnp.argmax(jnp.where(can_add(c), gap, -jnp.inf))
    remove = jnp.argmin(jnp.where(can_remove(c), gap, jnp.inf))
    return jnp.where(left(c) < 0, c.at[remove].add(-1), c.at[add].add(1))

  return jax.lax.while_loop(needs_work, fix, counts)


# ---------------------------------------------------------------------------
# The policy: a diagonal Gaussian over the logits.


def init_policy(mean: jax.Array, std: float) -> dict:
  """``{'mean': [L], 'log_std': [L]}`` with every standard deviation ``std``."""
  mean = jnp.asarray(mean, jnp.float32)
  return {'mean': mean, 'log_std': jnp.full_like(mean, math.log(float(std)))}


def _std(policy: dict, min_std: float) -> jax.Array:
  return jnp.maximum(jnp.exp(policy['log_std']), min_std)


def sample_logits(policy: dict, key: types.PRNGKey, num: int, *, min_std: float = 0.0) -> jax.Array:
  """``[num, L]`` proposals drawn from the policy."""
  noise = jax.random.normal(key, (int(num),) + policy['mean'].shape, jnp.float32)
  return policy['mean'] + _std(policy, min_std) * noise


def log_prob(policy: dict, logits: jax.Array, *, min_std: float = 0.0) -> jax.Array:
  """Log-density of ``logits [L]`` under the policy (a scalar)."""
  std = _std(policy, min_std)
  z = (logits - policy['mean']) / std
  return jnp.sum(-0.5 * z * z - jnp.log(std) - 0.5 * math.log(2.0 * math.pi))


# ---------------------------------------------------------------------------
# REINFORCE.


class ControllerState(NamedTuple):
  """Everything the controller changes, one pytree.

  Attributes:
    policy: ``{'mean': [L], 'log_std': [L]}``.
    opt_state: the optax state of the policy's optimiser.
    baseline: moving average of the mean episode reward (scalar).
    episode: episodes taken (int32 scalar; at 0 the baseline is not yet set).
    key: PRNG key of the next proposal.
  """
  policy: dict
  opt_state: optax.OptState
  baseline: jax.Array
  episode: jax.Array
  key: types.PRNGKey


class Controller(NamedTuple):
  """The controller's pure functions (``reinforce``).

  Attributes:
    init: ``(key, mean [L]) -> ControllerState``.
    propose: ``(state) -> (state, logits [C, L], counts [C, L])``: C candidates and their allocations.
    update: ``(state, logits [C, L], rewards [C]) -> (state, metrics)``: one REINFORCE step.
    allocation: ``(state) -> counts [L]``: the projection of the policy mean (the controller's choice).
  """
  init: Callable
  propose: Callable
  update: Callable
  allocation: Callable


def reinforce(budget: LayerBudget, optimizer: optax.GradientTransformation, *, num_candidates: int,
              init_std: float = 1.0, min_std: float = 0.05, baseline_decay: float = 0.8,
              normalize: bool = True) -> Controller:
  """REINFORCE with a moving-average baseline over allocations on ``budget``.

  The loss of one episode is ``-mean_c[A_c * log pi(logits_c)]`` with advantage
  ``A_c = (R_c - b)`` (divided by the candidates' reward standard deviation when
  ``normalize``), where ``b`` is the baseline before the episode (the episode's
  mean reward at the first one). After the step
  ``b <- baseline_decay * b + (1 - baseline_decay) * mean_c R_c``.

  Args:
    budget: the layers and the budget every candidate spends.
    optimizer: optax optimiser of the policy (e.g. ``optax.adam(0.1)``).
    num_candidates: ``C``, allocations sampled per episode.
    init_std: initial standard deviation of every logit.
    min_std: floor of the standard deviation when sampling and scoring.
    baseline_decay: in ``[0, 1)``; 0 uses the last episode's mean only.
    normalize: scale advantages to unit standard deviation within an episode
      (the step then does not depend on the reward's units).

  Returns:
    A ``Controller``.
  """
  if int(num_candidates) < 2:
    raise ValueError(f'num_candidates must be >= 2 (the advantage compares candidates), got {num_candidates!r}.')
  if not 0.0 <= float(baseline_decay) < 1.0:
    raise ValueError(f'baseline_decay must be in [0, 1), got {baseline_decay!r}.')
  if not float(init_std) > 0.0:
    raise ValueError(f'init_std must be > 0, got {init_std!r}.')
  project_all = jax.vmap(lambda z: project(z, budget), in_axes=(0,))

  def init(key: types.PRNGKey, mean: jax.Array) -> ControllerState:
    mean = jnp.asarray(mean, jnp.float32)
    if mean.shape != (len(budget.sizes),):
      raise ValueError(f'mean must have shape [{len(budget.sizes)}] (one logit per layer), got {mean.shape}.')
    policy = init_policy(mean, init_std)
    return ControllerState(policy, optimizer.init(policy), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32),
                           key)

  def propose(state: ControllerState):
    key, sample_key = jax.random.split(state.key)
    logits = sample_logits(state.policy, sample_key, num_candidates, min_std=min_std)
    return state._replace(key=key), logits, project_all(logits)

  def update(state: ControllerState, logits: jax.Array, rewards: jax.Array):
    rewards = jnp.asarray(rewards, jnp.float32)
    mean_reward = jnp.mean(rewards)
    baseline = jnp.where(state.episode == 0, mean_reward, state.baseline)
    advantages = rewards - baseline
    if normalize:
      advantages = advantages / (jnp.std(rewards) + 1e-8)

    def loss(policy):
      scores = jax.vmap(lambda z: log_prob(policy, z, min_std=min_std), in_axes=(0,))(logits)
      return -jnp.mean(jax.lax.stop_gradient(advantages) * scores)

    value, grads = jax.value_and_grad(loss)(state.policy)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.policy)
    policy = optax.apply_updates(state.policy, updates)
    new_baseline = baseline_decay * baseline + (1.0 - baseline_decay) * mean_reward
    metrics = {'controller/reward_mean': mean_reward, 'controller/reward_max': jnp.max(rewards),
               'controller/reward_std': jnp.std(rewards), 'controller/baseline': baseline,
               'controller/loss': value, 'controller/std': jnp.mean(_std(policy, min_std))}
    return ControllerState(policy, opt_state, new_baseline, state.episode + 1, state.key), metrics

  def allocation(state: ControllerState) -> jax.Array:
    return project(state.policy['mean'], budget)

  return Controller(init, propose, update, allocation)


def episode(controller: Controller, reward_fn: Callable[[jax.Array], jax.Array]) -> Callable:
  """``(state) -> (state, metrics)``: propose, reward every candidate, update.

  Args:
    controller: from ``reinforce``.
    reward_fn: ``counts [C, L] -> rewards [C]`` (higher is better), e.g. a
      ``vmap`` over candidates of a pruned network's validation score.

  Returns:
    A pure function; its metrics add ``controller/counts`` (``[C, L]``),
    ``controller/rewards`` (``[C]``) and ``controller/allocation`` (``[L]``,
    the projected mean after the update).
  """
  def step(state: ControllerState):
    state, logits, counts = controller.propose(state)
    rewards = reward_fn(counts)
    state, metrics = controller.update(state, logits, rewards)
    return state, {**metrics, 'controller/counts': counts, 'controller/rewards': rewards,
                   'controller/allocation': controller.allocation(state)}
  return step
