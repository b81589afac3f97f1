"""The export / teacher model spec of a run's config (``metaprune_jax.export.model``'s spec dict)."""

ARCH_OF_TASK = {'sinusoid': 'mlp', 'omniglot': 'conv4'}


def model_spec(config, *, inner: str = 'eval') -> dict:
  """The model spec of a run: architecture, learner, loss and its adaptation.

  Args:
    config: the run's config.
    inner: ``'eval'`` adapts as the run's evaluation does (``eval.inner_lr``,
      ``max(eval.steps)`` steps: what an export reports); ``'train'`` as its
      meta-training does (``inner.inner_lr``, ``inner.num_inner_steps``: a
      distillation teacher).
  """
  task = config.task.name
  arch = ARCH_OF_TASK.get(task, config.model.get('cell'))
  if inner == 'eval':
    inner_lr, steps = float(config.eval.inner_lr), max(int(k) for k in config.eval.steps)
  else:
    inner_lr, steps = float(config.inner.inner_lr), int(config.inner.num_inner_steps)
  spec = {'arch': arch, 'learner': config.algorithm,
          'loss': 'mse' if task in ('sinusoid', 'sequence') else 'cross_entropy',
          'inner_lr': inner_lr, 'num_inner_steps': steps, 'adapt_keys': None}
  if config.algorithm == 'anil':
    spec['adapt_keys'] = ['head'] if task == 'omniglot' else (
        ['readout'] if arch in ('lstm', 'gru') else [f'Dense_{len(tuple(config.model.hidden_sizes))}'])
  if arch == 'mlp':
    spec['activation'] = str(config.model.activation)
  elif arch == 'conv4':
    spec['image_size'] = int(config.task.image_size)
    spec['bn_mode'] = str(config.get('bn_mode', 'transductive'))  # How predict normalises the query images.
    if config.algorithm != 'protonet':  # Per-task adapted weights under vmap: im2col, not a grouped conv.
      spec['conv_method'] = 'patches'
  else:
    spec['last_only'] = True
    spec['expand_output'] = task == 'sequence'
  return spec
