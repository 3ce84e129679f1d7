"""Packaging beyond what pyproject.toml can say: the top-level experiments/ folder (the
declarative architectures, schemes, paper numbers and search spaces) is installed inside the
package as galmorph/experiments, so an installed wheel finds it as a clone does."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["galmorph", "galmorph.*"]) + ["galmorph.experiments"],
    package_dir={"galmorph.experiments": "experiments"},
    package_data={"galmorph.experiments": ["*.yaml", "search_spaces/*.yaml"]},
)
