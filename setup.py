"""Packaging for fedcmd_plugin: FedCMD and FedUReID as EasyFL plugins."""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PROTOBUF_PTH = "fedcmd_plugin_protobuf.pth"


class BuildWithProtobufSwitch(build_py):
    """Ships the .pth file that lets easyfl 0.1.2's old protobuf modules import (see README, "protobuf"). An
    editable install (`editable_mode`, setuptools' documented flag for build subcommands) ignores build_lib, so
    there the file goes straight to the wheel's site-packages root (the install command's install_lib)."""

    def run(self):
        super().run()
        self.copy_file(PROTOBUF_PTH, os.path.join(self.build_lib, PROTOBUF_PTH))
        if getattr(self, "editable_mode", False):
            self.copy_file(PROTOBUF_PTH, os.path.join(self.get_finalized_command("install").install_lib, PROTOBUF_PTH))

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PROTOBUF_PTH)]


setup(
    name="fedcmd-plugin",
    version="0.1.0",
    description="FedCMD and FedUReID as EasyFL plugins: personalized and unsupervised federated learning",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["fedcmd_plugin", "fedcmd_plugin.*"]),
    package_data={"fedcmd_plugin": ["defaults.yaml"]},
    install_requires=[
        "easyfl==0.1.2",
        "torch>=2.0",
        "torchvision>=0.15",
        "pot>=0.9",
        "omegaconf",  # easyfl pins 2.0.0; the plugin uses only its API
        "tensorboard>=2.10",
        "numpy>=1.23",
        "scikit-learn>=1.1",  # the embedded digits data set and NMI
        "scipy>=1.7",  # SVHN's .mat files
        "matplotlib>=3.5",  # PNG plots in each run folder
        "pillow>=9",  # ReID images
        "grpcio>=1.50",
        "pyyaml>=5",
        "cryptography>=41",  # `fedcmd-plugin remote certs`: a development CA and certificates for TLS
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6"],
        "bench": ["flwr[simulation]>=1.20"],  # benchmarks/throughput.py's Flower configuration
    },
    entry_points={
        "console_scripts": ["fedcmd-plugin=fedcmd_plugin.cli:main"],
    },
    cmdclass={"build_py": BuildWithProtobufSwitch},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
