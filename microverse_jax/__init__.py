"""microverse-jax: micro-world text-to-video diffusion (Wan2.1 / MicroVerse) in JAX."""

import sys

__version__ = "0.1.0"

if sys.argv[:1] == ["-m"]:  # `python -m microverse_jax.X` (argv[0] is "-m" while the module is found)
  from microverse_jax import dependencies

  dependencies.install_excepthook()  # a module missing at import time: one line, exit status 2
