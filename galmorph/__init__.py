"""galmorph: CNN galaxy morphology experiments (Cavanagh, Bekki & Groves 2021) in Keras and PyTorch.

Importing this package loads no deep-learning framework; the backends import theirs
when a model is built.
"""

__version__ = "0.1.0"
