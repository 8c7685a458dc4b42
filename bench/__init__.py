"""lockbench's harness. Importing any of its modules pins the CPU code path first (bench.numerics),
because torch reads it when it first computes, and a recorded number must not depend on the machine."""

from bench.numerics import pin_numerics

pin_numerics()

__version__ = "0.1.0"
