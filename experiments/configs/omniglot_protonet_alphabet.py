"""The dense ProtoNet recipe on an alphabet split, evaluated on within-alphabet episodes.

``omniglot_protonet.py`` (60-way 1-shot episodes with 2-pixel shifts, 5,000
meta-steps) with whole alphabets held out (``task.split_by='alphabet'``,
``task.split_sizes=(5, 1, 2)`` alphabets, ``task.split_seed=0``), so no test
alphabet is seen in meta-training:

- meta-train: Greek, Japanese_(katakana), Korean, Latin, Sanskrit (179 characters);
- validation: Balinese (24 characters);
- test: Early_Aramaic (22 characters) and Tagalog (17 characters).

Each split adds its characters' 90/180/270-degree rotations as extra classes.
``eval.protocol='within_alphabet'``: every class of an evaluation episode comes
from one held-out alphabet (Lake et al. 2015), drawn uniformly among the
alphabets with at least N classes; a rotated copy of a character is a class of
its alphabet, so the test alphabets hold 88 and 68 classes and both hold 20-way
episodes (without rotations Tagalog's 17 characters could not, and every 20-way
episode would come from Early_Aramaic). Evaluated at 5- and 20-way, 1- and
5-shot on ``eval.split``; the test alphabets:
``python -m experiments.evaluate --workdir=RUN --split=test``, and the mixed
protocol on the same alphabets with ``--override=eval.protocol=mixed``.
Run: ``python -m experiments.maml_prune --config=experiments/configs/omniglot_protonet_alphabet.py``.
"""

from experiments.configs import omniglot_protonet


def get_config():
  config = omniglot_protonet.get_config()
  config.task.split_by = 'alphabet'
  config.task.split_sizes = (5, 1, 2)   # Alphabets: meta-train, validation, test (see above for which).
  config.task.split_seed = 0
  config.eval.protocol = 'within_alphabet'
  return config
