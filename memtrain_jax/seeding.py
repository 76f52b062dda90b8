"""Seeds derived from a tuple of integers, so every random choice is a function of where it is made.

`derive_seed(run_seed, step, stream)` gives independent, reproducible streams per training step and
per use (agent sampling, probe choice, mini-batch order), which is what makes a resumed run repeat
the uninterrupted one.
"""

import numpy as np


def derive_seed(*parts: int) -> int:
  """A non-negative int32 seed that depends on every part (numpy's SeedSequence hashing)."""
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)
