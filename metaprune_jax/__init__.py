"""metaprune_jax: meta-learned pruning in JAX/Flax."""
