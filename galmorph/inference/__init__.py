"""Using a trained galmorph model: the logged MLflow pyfunc model that carries its own
preprocessing (model.py: `load`, `ModelInfo`, `LoadedModel`, `table`; pyfunc.py: the
PythonModel and its logging), and finding a model from a run id or URI (resolve.py). Reading a user's galaxies for
`galmorph predict` (galmorph.workflows.predict): inputs.py (images, folders, .h5 files),
fits.py (the asinh stretch) and catalogue.py (SkyServer cutouts).

Backend-neutral: nothing here imports torch, tensorflow or keras at module level; the
network inside a model is loaded by its backend's `load_network`.
"""
