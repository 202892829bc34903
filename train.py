"""Train a self-supervised method: ``python train.py recipe=dino_fmnist [key=value ...]``."""

from sslzoo.cli import main

if __name__ == "__main__":
    main()
