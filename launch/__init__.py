"""Launchers: local CPU runs (microverse_jax.launch.local), Cloud TPU VMs and queued resources
(microverse_jax.launch.tpu), GKE through XPK (microverse_jax.launch.xpk), and config sweeps over any of
them (microverse_jax.launch.sweep). Every launcher takes --dry_run, which prints each command it would run."""
