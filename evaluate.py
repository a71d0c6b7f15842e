"""Evaluate an encoder: python evaluate.py --checkpoint RUN/backbone.pt --protocol knn --dataset NAME"""

from ssl_zoo.jobs.evaluate import cli

if __name__ == "__main__":
    cli()
