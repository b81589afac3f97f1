"""The sinusoid speed benchmark's hand-written steps compute what they claim (one step each, no timing)."""

import jax
import numpy as np

from benchmarks import meta_step_speed


def _first_loss(step_and_state):
  step, state = step_and_state
  _, value = step(state)
  return float(jax.block_until_ready(value))


def test_layout_matmul_reference_equals_the_plain_reference():
  plain = _first_loss(meta_step_speed._hand_written(False))  # pylint: disable=protected-access
  layout = _first_loss(meta_step_speed._hand_written(False, layout_matmul=True))  # pylint: disable=protected-access
  np.testing.assert_allclose(layout, plain, rtol=1e-5)


def test_per_task_masks_floor_runs_masked_tasks():
  step, state = meta_step_speed._per_task_masks_floor(False)  # pylint: disable=protected-access
  dense = _first_loss(meta_step_speed._hand_written(False, layout_matmul=True))  # pylint: disable=protected-access
  state, value = step(state)
  value = float(value)
  assert np.isfinite(value)
  assert abs(value - dense) > 1e-4  # A tenth of the weights is masked: not the dense loss.
  params = state[0]
  assert set(params) == {'w0', 'b0', 'w1', 'b1', 'w2', 'b2'}  # Nothing but the weights is learned.


def test_library_variants_run_the_library_step():
  for gated in (False, True):
    library = meta_step_speed._library  # pylint: disable=protected-access
    step, state = library(gated, False, 'weight', python_loop=gated, steps_per_call=2)
    state, metrics = step(state)
    assert metrics['outer/query_loss'].shape == (2,) and int(state.step) == 2
    assert np.all(np.isfinite(np.asarray(metrics['outer/query_loss'])))
    assert (state.meta_params['gate_logits'] is not None) == gated
    assert float(metrics['mask/expected_sparsity'][-1]) == 0.0 or gated
