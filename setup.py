"""dpn-gluon: Dual Path Networks in MXNet Gluon, and a converter for the authors' checkpoints."""
import re

from setuptools import find_packages, setup

# the one home of the version is dpn_gluon/version.py (read, not imported: no dependencies yet)
VERSION = re.search(r'__version__ = "([^"]+)"',
                    open("dpn_gluon/version.py", encoding="utf-8").read()).group(1)

# MXNet 1.9.1 is the last release; it imports only with numpy 1.23.2-1.23.5, on Python <= 3.11.
# Every extra carries that ceiling there too, so that installing extras one after another
# (".[mxnet]", later ".[torch,onnx]") can never upgrade numpy past it. On Python 3.12+, where
# MXNet does not run, the other extras take any numpy.
MXNET_NUMPY = "numpy>=1.23.2,<1.24; python_version < '3.12'"

setup(
    name="dpn-gluon",
    version=VERSION,
    description="The authors' Dual Path Networks in MXNet Gluon, and their checkpoints "
                "converted to PyTorch, safetensors, timm and ONNX with layer-by-layer parity",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["dpn_gluon", "dpn_gluon.*"]),
    # data/places365_categories.txt: CSAILVision/places365 (MIT licence; data/README.md)
    package_data={"dpn_gluon": ["data/*.txt", "data/*.md"]},
    python_requires=">=3.9",
    # The converter needs no MXNet and no torch: conversions to and from the original
    # format, safetensors and timm folders run on numpy alone.
    install_requires=["numpy>=1.23.2", "click>=8.0", "tqdm>=4.60", "safetensors>=0.4", "Pillow>=9.0"],
    extras_require={
        "mxnet": ["mxnet==1.9.1", "numpy>=1.23.2,<1.24"],
        # Pin torch yourself first (e.g. torch==2.13.0 for the CPU build) to avoid the CUDA wheels.
        "torch": ["torch>=2.1", MXNET_NUMPY],
        "onnx": ["onnx>=1.16", "onnxruntime>=1.17", MXNET_NUMPY],
        # --runtime openvino (it compiles the ONNX graph onnx builds) and --to openvino; pinned:
        # the version whose CPU kernels docs/openvino.md measured
        "openvino": ["openvino==2026.4.1", "onnx>=1.16", MXNET_NUMPY],
        # --precision int8: NNCF's post-training quantization (ONNX backend, onnxruntime
        # collects the statistics); 2.14.1 is the last NNCF that installs beside numpy 1.23
        "int8": ["nncf==2.14.1", "openvino==2026.4.1", "onnx>=1.16", "onnxruntime>=1.17",
                 MXNET_NUMPY],
        "report": ["matplotlib>=3.5", MXNET_NUMPY],
        # the authors' bicubic resize (dpn-evaluate/dpn-predict --protocol authors); 4.12+ needs numpy 2
        "opencv": ["opencv-python-headless>=4.5,<4.12", MXNET_NUMPY],
        # huggingface_hub: the model card's metadata is parsed as the Hub does
        "test": ["pytest>=7", "hypothesis>=6", "matplotlib>=3.5", "huggingface_hub>=0.20",
                 "ruff>=0.6", MXNET_NUMPY],
        # PaddleClas's own DPN as the tests' reference (tests/paddle_reference.py, run in a
        # process of its own); dpn-convert reads and writes .pdparams without it
        "paddle": ["paddlepaddle==3.3.1", MXNET_NUMPY],
        # long fuzz runs by hand (fuzz/fuzz_params.py); CI fuzzes with hypothesis
        "fuzz": ["atheris>=2.3"],
    },
    entry_points={
        "console_scripts": [
            "dpn-convert=dpn_gluon.convert.cli:main",
            "dpn-evaluate=dpn_gluon.evaluate.cli:evaluate_main",
            "dpn-predict=dpn_gluon.evaluate.cli:predict_main",
            "dpn-train=dpn_gluon.train.cli:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
