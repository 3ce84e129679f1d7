"""What a user runs: prepare data, train, explain, multiseed, hierarchy, tune, report.

Each workflow is an importable function (`galmorph.workflows.train.run(TrainConfig)`);
the CLI and the MLproject entry points are thin shells around them.
"""
