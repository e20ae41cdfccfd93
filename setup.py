"""Build script: pure Python for now; the C++/CUDA extension of csrc/ hooks in here."""

from setuptools import setup

setup()
