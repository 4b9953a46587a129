"""Training: single process, gradient accumulation and torchrun data-parallel; resumable."""

from nfdeploy.train.loop import TrainError, TrainResult, build_model, resume_training, train

__all__ = ["TrainError", "TrainResult", "build_model", "resume_training", "train"]
