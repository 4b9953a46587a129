"""What checks that a deployed model computes the function it was trained as: an export's backends
(backends), parity against float64 (parity: its entry and measurement; parity_options, parity_result and
parity_render: what a run is asked, what it found, and the files that show it), per-block forensics
(per_block), the batch-invariance matrix (batch_matrix), saved outputs and their comparison (saved_outputs),
instruction-set caps (isa) and the model points every check feeds (model_points).

This package imports nothing itself: its modules sit on different floors (isa and parity_options low enough for
the runtimes to use), so importing one must not load the others."""
