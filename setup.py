"""tfkd: knowledge distillation from noisy teachers for Keras 3 on TensorFlow."""

from setuptools import find_packages, setup

setup(
    name="tfkd",
    version="0.1.0",
    description="Knowledge distillation from noisy teachers (logit regression with Gaussian logit noise) for Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["tfkd", "tfkd.*"]),
    install_requires=[
        # Lower bounds are the versions the test suite ran on.
        "tensorflow>=2.21",
        "keras>=3.15",
        "tensorflow-datasets>=4.9.10",
        "importlib_resources>=6.0",  # tensorflow-datasets 4.9.10 imports it without declaring it
        "numpy>=2.0",
        "absl-py>=2.1",
    ],
    extras_require={
        "export": ["ai-edge-litert>=2.3"],
        "report": ["matplotlib>=3.8", "scipy>=1.11"],
        "test": ["pytest>=8", "ai-edge-litert>=2.3", "matplotlib>=3.8", "scipy>=1.11"],
    },
)
