"""Verification: the inputs every artifact runs on (drawn from the model's domain or read
from data), the original's reference outputs and noise floor, the checks and budgets an
artifact passes, each artifact built and checked, the trace of where one diverges, and the
automatic choice of a quantization mode."""
