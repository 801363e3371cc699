"""Denoising-step state: which step the pipeline is in, and whether a layer runs dense or sparse there."""

from .schedule import AttentionPlan, StepTracker, calling_pipeline

__all__ = ["AttentionPlan", "StepTracker", "calling_pipeline"]
