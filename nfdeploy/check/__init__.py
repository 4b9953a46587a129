"""What checks that a deployed model computes the function it was trained as: an export's backends
(backends), parity against float64 (parity), per-block forensics (per_block), the batch-invariance
matrix (batch_matrix), saved outputs and their comparison (saved_outputs), instruction-set caps (isa)
and the model points every check feeds (model_points).

This package imports nothing itself: its modules sit on different floors (isa low enough for the
runtimes to use), so importing one must not load the others."""
