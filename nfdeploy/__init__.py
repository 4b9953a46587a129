"""nfdeploy: train Normalizer-Free ResNets, fold them into static weights, export and prove parity."""

__version__ = "0.1.0"
