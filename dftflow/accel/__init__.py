"""SCF acceleration from predicted densities: ``dftflow accel-eval`` (see docs/accel.md)."""

DEFAULT_ARMS = ("default", "ml", "ml-true-occ", "oracle")
