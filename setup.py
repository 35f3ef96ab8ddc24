"""Build script: metadata lives in pyproject.toml; this file adds the C++ extensions in csrc/ (pybind11)."""

from pathlib import Path

from setuptools import setup

ext_modules = []
sources = sorted(str(p) for p in Path("csrc").glob("*.cpp"))
if sources:
    from pybind11.setup_helpers import Pybind11Extension

    ext_modules.append(
        Pybind11Extension("hetero._csrc", sources, cxx_std=17, extra_compile_args=["-O3"])
    )

setup(ext_modules=ext_modules)
