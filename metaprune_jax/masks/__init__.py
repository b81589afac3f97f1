"""metaprune_jax.masks."""
