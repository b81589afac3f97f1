"""metaprune_jax.pruning: classic pruning (criteria -> scores, select -> masks, schedules, baselines)."""
