"""Launchers: local CPU runs (launch.local), Cloud TPU VMs and queued resources (launch.tpu), GKE
through XPK (launch.xpk), and config sweeps over any of them (launch.sweep). Every launcher takes
--dry-run, which prints each command it would run."""
