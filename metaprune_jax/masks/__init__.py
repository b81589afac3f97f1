"""metaprune_jax.masks: the ground floor (masking, hard-concrete gates, noise, sparsity counters, harden, L0).

Imports only jax, numpy, ``metaprune_jax.types`` and other ``masks`` modules
(``tests/masks/test_floor.py``); nets, meta-learners and tasks build on it.
"""
