"""Serving: a Triton model repository holding a Python-backend model that runs the export's
checked backend (repository, python_model, choice), the tritonserver binary from PyTriton's wheel
run on that repository (tritonserver, server), and a load test that proves every response equals
the same sample run alone: loadtest (the entry point and the concurrency sweep) measures with client,
expectation, faults and speed into the results of loadtest_result, which loadtest_report renders.
tritonclient is imported lazily (`pip install 'nfdeploy[serve]'`)."""
