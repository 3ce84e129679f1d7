"""Using a trained galmorph model: the logged MLflow pyfunc model that carries its own
preprocessing (model.py: `load`, `ModelInfo`, `LoadedModel`, `table`; pyfunc.py: the
PythonModel and its logging), and finding a model from a run id or URI (resolve.py).

Backend-neutral: nothing here imports torch, tensorflow or keras at module level; the
network inside a model is loaded by its backend's `load_network`.
"""
