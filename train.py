"""Train one SSL method centrally: python train.py --config configs/quickstart.yaml [--flag value ...]"""

from ssl_zoo.jobs.train import cli

if __name__ == "__main__":
    cli()
