"""FedU (Zhuang et al., ICCV 2021, "Collaborative Unsupervised Visual Representation Learning from
Decentralized Data").

The online network (backbone + projector) is replaced by the global one every round; the predictor
takes the global predictor only while the client's own is close to it,

    W_k^pred <- W_g^pred  if ||W_k^pred - W_g^pred|| < threshold,  else W_k^pred stays,

(Euclidean distance over the predictor's parameters, W_k^pred the client's from its last round);
the target network stays local. The server averages as FedAvg does.
"""

import torch

from ssl_zoo.errors import UserError
from ssl_zoo.federated.algorithms.base import LocalTarget, distance, floats, module_keys


class FedU(LocalTarget):
    name = "fedu"
    paper = "https://arxiv.org/abs/2108.06492"

    def __init__(self, threshold: float = 0.4):
        """threshold: the predictor divergence below which the client takes the server's."""
        super().__init__()
        if not threshold >= 0:
            raise UserError(f"fedu's threshold must be >= 0 (got {threshold})")
        self.threshold = threshold

    def client_start(self, model, global_state, private, received, client):
        keys = module_keys(model, [model.prediction_head])
        if not any(f"fedu/pred.{k}" in private for k in keys):
            return  # the client's first round: it takes the global predictor
        own = {k: private[f"fedu/pred.{k}"] for k in keys}
        params = {name for name, _ in model.named_parameters()}
        divergence = distance(global_state, own, sorted(keys & params))
        keep_own = divergence >= self.threshold
        if keep_own:
            state = model.state_dict()
            with torch.no_grad():
                for key in floats(own, keys):
                    state[key].copy_(own[key])
        return {"fedu_divergence": divergence, "fedu_global_predictor": float(not keep_own)}

    def client_end(self, model, global_state):
        state = model.state_dict()
        keys = module_keys(model, [model.prediction_head])
        return {f"fedu/pred.{k}": state[k].detach().cpu().clone() for k in keys}
