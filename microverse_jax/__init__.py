"""microverse-jax: micro-world text-to-video diffusion (Wan2.1 / MicroVerse) in JAX."""

__version__ = "0.1.0"
