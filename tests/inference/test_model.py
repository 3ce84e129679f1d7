"""galmorph.inference.model without training: the output table, the input check, ModelInfo
as stored with a model, and load()'s one-line errors. (A trained model's predictions are
checked against its run in tests/workflows/test_train.py, an ensemble's in test_ensemble.py.)"""

import numpy as np
import pytest

from galmorph.core.errors import GalmorphError
from galmorph.inference.model import ModelInfo, Prediction, check_images, load, table

INFO = ModelInfo(class_names=("E", "S0", "Sp", "Irr+Misc"), image_side=8, pixel_scale=0.7, band="g", network="c2",
                 backend="torch", dataset="nair2010", scheme="4way", temperature=1.5, run_id="abc")


def test_table_names_every_class_and_adds_the_spread_of_an_ensemble():
    p = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])
    single = table(Prediction(p), INFO.class_names)
    assert list(single.columns) == ["p_E", "p_S0", "p_Sp", "p_Irr_Misc", "predicted", "confidence"]
    assert single["predicted"].tolist() == ["Irr+Misc", "E"] and single["confidence"].tolist() == [0.4, 0.7]
    both = table(Prediction(p, p / 10), INFO.class_names)
    assert list(both.columns)[6:] == ["p_E_std", "p_S0_std", "p_Sp_std", "p_Irr_Misc_std"]
    assert both["p_Irr_Misc_std"].tolist() == [0.04, 0.01]
    assert len(table(Prediction(np.zeros((0, 4))), INFO.class_names)) == 0


def test_images_must_have_the_models_side_and_be_8_bit():
    x = np.zeros((2, 8, 8, 3), np.uint8)
    assert check_images(x, 8) is x
    assert check_images(x[0], 8).shape == (1, 8, 8, 3)
    assert check_images(x.astype(np.int64), 8).dtype == np.uint8
    for bad, words in ((np.zeros((2, 9, 9, 3), np.uint8), "8x8"), (np.zeros((2, 8, 8), np.uint8), "8x8"),
                       (np.full((1, 8, 8, 3), 0.5), "uint8"), (np.full((1, 8, 8, 3), 300), "uint8")):
        with pytest.raises(GalmorphError, match=words):
            check_images(bad, 8)


def test_model_info_round_trips_through_its_stored_form():
    stored = INFO.to_dict()
    assert stored["class_names"] == ["E", "S0", "Sp", "Irr+Misc"] and stored["members"] == []
    assert ModelInfo.from_dict(stored) == INFO
    ens = ModelInfo.from_dict({**stored, "kind": "ensemble", "members": ["a", "b"], "pixel_scale": None})
    assert ens.members == ("a", "b") and ens.pixel_scale is None


NOT_GALMORPH = '''
import mlflow.pyfunc
from mlflow.models import set_model


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


set_model(Echo())
'''


def test_load_says_in_one_line_what_is_not_a_galmorph_model(tracking_uri, tmp_path):
    import mlflow

    code = tmp_path / "echo.py"
    code.write_text(NOT_GALMORPH)
    mlflow.set_experiment("load-errors")
    with mlflow.start_run() as other:
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code))
        mlflow.set_tag("model_uri", info.model_uri)
    with mlflow.start_run() as empty:
        pass
    for ref, words in ((other.info.run_id, "not a galmorph model"), (f"runs:/{other.info.run_id}/model",
                                                                      "not a galmorph model"),
                       (empty.info.run_id, "logged no model"), ("0123456789abcdef", "no MLflow run"),
                       ("models:/nope/3", "no such registered model version"), ("models:/nope@champ", "no such")):
        with pytest.raises(GalmorphError, match=words) as caught:
            load(ref)
        assert "\n" not in str(caught.value) and ref in str(caught.value)
