"""The backend-neutral core: settings, network specs, training semantics, metrics, I/O.

Nothing here imports a deep-learning framework or a workflow; every other room builds on it.
"""
