"""metaprune_jax.nets."""
