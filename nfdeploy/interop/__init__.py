"""Bridges to other model zoos: fold their normalizer-free models by nfdeploy's rules (see interop.timm)."""
