"""The three jobs, each a config class and a run function: train (centralized pre-training),
federate (a federation or a comparison of several) and evaluate (an encoder's protocols). The
scripts train.py, federate.py and evaluate.py call their `cli`; `ssl_zoo.train(...)`,
`ssl_zoo.federate(...)` and `ssl_zoo.evaluate(...)` their run functions."""
