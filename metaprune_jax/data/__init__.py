"""metaprune_jax.data."""
