"""metaprune_jax.meta."""
