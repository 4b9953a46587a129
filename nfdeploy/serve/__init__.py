"""Serving: one checked backend behind a real Triton server (server), a standard Triton model
repository for Triton's own container (repository), and a load test that proves every response
equals the same sample served alone (loadtest). PyTriton and tritonclient are imported lazily
(`pip install 'nfdeploy[serve]'`)."""
