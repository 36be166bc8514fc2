"""Helpers shared by the Pallas flash-attention kernels (TPU and GPU)."""

from __future__ import annotations

from typing import Mapping, TypeVar

import jax
import jax.numpy as jnp

T = TypeVar("T")


def lookup_block_sizes(table: Mapping[str, T], default: T, device_kind: str | None = None) -> T:
  """The first entry of `table` whose key occurs in `device_kind` (default: the local device's)."""
  kind = (jax.devices()[0].device_kind if device_kind is None else device_kind).lower()
  return next((sizes for key, sizes in table.items() if key in kind), default)


def round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def pad_axis(x, axis: int, length: int):
  """Zero-pads `axis` of x up to `length`."""
  if x.shape[axis] == length:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, widths)
