"""Type aliases shared across metaprune_jax.

Conventions (the whole library follows them):

* ``Params`` is a Flax parameter pytree (nested dicts of arrays), e.g.
  ``{'Dense_0': {'kernel': [in, out], 'bias': [out]}, ...}``.
* ``Masks`` mirrors ``Params``: each leaf is ``None`` (the parameter stays dense)
  or an array that broadcasts onto the parameter leaf (same shape for
  unstructured masks; ``[out]`` for output-unit masks, ``[in, 1]`` for input-unit
  masks of a ``[in, out]`` kernel).
* ``GateLogits`` (hard-concrete ``log_alpha``) mirror ``Params`` the same way.
"""

from typing import Any, NamedTuple, Optional

import jax

PRNGKey = jax.Array
Array = jax.Array
Params = Any
Masks = Any
GateLogits = Any
Metrics = dict[str, Array]


class TaskBatch(NamedTuple):
  """A batch of few-shot tasks.

  Attributes:
    support_inputs: ``[tasks, support_size, ...]``.
    support_targets: ``[tasks, support_size, ...]``.
    query_inputs: ``[tasks, query_size, ...]``.
    query_targets: ``[tasks, query_size, ...]``.
  """
  support_inputs: Array
  support_targets: Array
  query_inputs: Array
  query_targets: Array


OptionalArray = Optional[Array]
