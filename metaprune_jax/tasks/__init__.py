"""metaprune_jax.tasks."""
