"""Offline training: labelled videos to a tuned model bundle that the worker loads."""
