"""Packaging beyond pyproject.toml: the top-level ``search_spaces/`` folder ships inside the
package as ``nasproxy.search_spaces`` (package data), so a wheel carries the space files."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["nasproxy*"]), "nasproxy.search_spaces"],
    package_dir={"nasproxy.search_spaces": "search_spaces"},
    package_data={"nasproxy.search_spaces": ["*.yaml"]},
)
