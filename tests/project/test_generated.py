"""Files derived from the config classes (MLproject, docs/parameters.md) match the code."""

import subprocess
import sys

import yaml
from conftest import REPO, check_entry_point

from galmorph.data.nair2010 import PrepareConfig
from galmorph.workflows.convert import ConvertConfig
from galmorph.workflows.explain import ExplainConfig
from galmorph.workflows.hierarchy import HierarchyConfig
from galmorph.workflows.multiseed import MultiseedConfig
from galmorph.workflows.predict import PredictConfig
from galmorph.workflows.report import ReportConfig


def test_committed_mlproject_and_parameter_docs_are_the_generated_ones():
    proc = subprocess.run([sys.executable, "tools/generate.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_entry_point_exposes_its_config_with_the_same_defaults():
    eps = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    for name, cls, skip in (("prepare_nair2010", PrepareConfig, ()), ("multiseed", MultiseedConfig, ()),
                            ("pairs", MultiseedConfig, ()), ("hierarchical", HierarchyConfig, ()),
                            ("report", ReportConfig, ()), ("explain", ExplainConfig, ())):
        check_entry_point(eps[name], cls, skip)
    convert = eps["data_convert"]
    check_entry_point({**convert, "parameters": {k: v for k, v in convert["parameters"].items() if k != "source"}},
                      ConvertConfig, ("source",))
    assert convert["command"].startswith("python -m galmorph data convert {source} --output {output}")
    predict = eps["predict"]
    check_entry_point({**predict, "parameters": {k: v for k, v in predict["parameters"].items()
                                                 if k not in ("model", "inputs")}}, PredictConfig, ("model", "inputs"))
    assert predict["command"].startswith("python -m galmorph predict {model} {inputs} --output {output}")
    assert "default" not in predict["parameters"]["model"] and "default" not in predict["parameters"]["inputs"]
    assert "--schemes pairs:{scheme}" in eps["pairs"]["command"]
    assert "default" not in eps["explain"]["parameters"]["run_id"]
