"""``x @ w`` whose gradients are matmuls in the layout XLA:CPU runs fastest.

Reverse-mode autodiff of ``y = x @ w`` computes the weight gradient as a
contraction over the *leading* (row) axis of ``x``: ``'mk,mn->kn'``. Under a
``vmap`` over tasks with per-task weights that is a batched dot contracting a
non-minor axis of its left operand, which XLA:CPU runs several times slower
than the canonical ``'tkm,tmn->tkn'`` form. XLA folds an ordinary transpose back into the
dot's dimension numbers, so :func:`matmul` materialises it behind
``lax.optimization_barrier``: the weight gradient transposes whichever of ``x``
and the output cotangent is narrower, then runs a canonical matmul. The
backward pass is itself built from :func:`matmul`, so every order of
differentiation (second-order MAML differentiates the inner gradient) keeps the
fast layout. Values and gradients equal those of ``x @ w`` up to float
summation order. The MLP's ``Dense`` layers use it (``dot_general``);
``benchmarks/meta_step_speed.py`` times a hand-written step with and without it.
The Conv-4's large patch matmuls do not use it: for them XLA's own GEMM packing
handles the layout, and a materialised transpose of the patches only adds work.

Reverse mode only (``custom_vjp``): ``jax.jvp`` / ``jacfwd`` / ``jax.hessian`` through it raise;
``nets.mlp.MLP(layout_matmul=False)`` gives plain Flax ``Dense`` layers for forward mode.
"""

import jax


def _pinned(a: jax.Array) -> jax.Array:
  """``a`` as XLA must materialise it on CPU: no transpose folds across this point.

  Other backends' dot emitters take any operand layout, so there it is the
  identity and XLA may fold freely. The choice is ``lax.platform_dependent``:
  made when the step is lowered for the device it runs on, not from the
  default backend at trace time.
  """
  return jax.lax.platform_dependent(a, cpu=jax.lax.optimization_barrier, default=lambda x: x)


def _materialised_transpose(a: jax.Array) -> jax.Array:
  """``a.T`` for a 2-D ``a``, kept as a real copy on CPU (not folded into the next dot)."""
  return _pinned(a.T)


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """``[..., k] @ [k, n] -> [..., n]``."""
  return x @ w


def _matmul_fwd(x, w):
  return x @ w, (x, w)


def _matmul_bwd(residuals, g):
  x, w = residuals
  k, n = w.shape
  x2, g2 = x.reshape(-1, k), g.reshape(-1, n)
  dx = matmul(g, w.T)  # an unpinned transpose: XLA folds it and runs the dot as "rhs contracting its minor axis", fast
  if k <= n:  # [k, m] @ [m, n]: transpose x
    dw = matmul(_materialised_transpose(x2), g2)
  else:  # ([n, m] @ [m, k]).T: transpose the narrower cotangent; pinning the product stops XLA
    dw = _pinned(matmul(_materialised_transpose(g2), x2)).T  # from folding .T back as dot(x, g) over rows
  return dx, dw


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """``lax.dot_general`` that routes the plain ``[..., k] x [k, n]`` case to :func:`matmul`.

  Pass as ``flax.linen.Dense(dot_general=...)``; other contractions, or a
  requested precision / element type, go to ``lax.dot_general`` unchanged.
  """
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  plain = (tuple(lhs_contract) == (lhs.ndim - 1,) and tuple(rhs_contract) == (0,)
           and not tuple(lhs_batch) and not tuple(rhs_batch))
  if plain and rhs.ndim == 2 and precision is None and preferred_element_type is None:
    return matmul(lhs, rhs)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type)
