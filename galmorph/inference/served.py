"""The code MLflow runs to rebuild a logged galmorph model ("models from code": no pickled
Python object in the model; MLflow 3 refuses to unpickle those by default). The model's
ModelInfo and networks reach it as its artifacts (info.json, member<k>/)."""

from mlflow.models import set_model

from galmorph.inference.pyfunc import GalmorphModel

set_model(GalmorphModel())
