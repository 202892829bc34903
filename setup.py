from setuptools import find_packages, setup

setup(
    name="sslzoo",
    version="0.1.0",
    description="A comparative zoo of self-supervised learning methods (DINO, BYOL, SimCLR, MoCo v3, iBOT)",
    packages=find_packages(include=["sslzoo", "sslzoo.*"]),
    package_data={"sslzoo": ["defaults.yaml", "eval/protocol.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4,<=2.14.1",
        "torchvision>=0.19,<=0.29.1",
        "timm>=1.0",
        "lightly>=1.5",
        "einops>=0.7",
        "wandb>=0.16",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "numpy>=1.24",
        "matplotlib>=3.7",  # benchmark and teaching-lab figures
        "scikit-learn>=1.3",  # t-SNE embedding maps
    ],
    extras_require={"dev": ["pytest>=7", "ruff>=0.4"]},
)
