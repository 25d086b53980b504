"""Composition of the stages into verdicts: batching across videos and video-level aggregation."""
