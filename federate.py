"""Federated SSL: python federate.py --config configs/federated/quickstart.yaml [--engine flower]"""

from ssl_zoo.jobs.federate import cli

if __name__ == "__main__":
    cli()
