"""Using trained models: loading a logged galmorph model (model), reading a user's galaxies
(inputs, fits, catalogue) and the `galmorph predict` pipeline (galmorph.workflows.predict)."""
