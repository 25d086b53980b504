"""Clients of the worker: submit requests, read verdicts from Redis or the results topic."""
