"""FedEMA (Zhuang et al., ICLR 2022, "Divergence-aware Federated Self-Supervised Learning").

A client keeps its own model between rounds. When selected again, its online network (backbone +
projector) and predictor start from an exponential moving average of its own weights W_k and the
global W_g, more local the further they have drifted apart:

    W_k <- mu * W_k + (1 - mu) * W_g,   mu = min(lambda_k * ||W_g - W_k||, 1)

with ||.|| the Euclidean distance over the online network's parameters, and lambda_k set once per
client, at its first such merge, to tau / ||W_g - W_k|| (so that merge uses mu = tau). The target
network is never taken from the server: it stays local. The server averages as FedAvg does.

EasyFL's implementation measures the divergence differently (the mean over conv layers of the
change during the client's previous round); this follows the paper's equation.
"""

import torch

from ssl_zoo.errors import UserError
from ssl_zoo.federated.algorithms.base import LocalTarget, distance, floats, module_keys


def online_keys(model) -> tuple[set[str], set[str]]:
    """(online backbone + projector keys, predictor keys)."""
    online = module_keys(model, [model.backbone, model.projection_head])
    return online, module_keys(model, [model.prediction_head])


class FedEMA(LocalTarget):
    name = "fedema"
    paper = "https://arxiv.org/abs/2204.04385"

    def __init__(self, tau: float = 0.7):
        """tau: the EMA weight of a client's first merge (lambda = tau / divergence)."""
        super().__init__()
        if not tau > 0:
            raise UserError(f"fedema's tau must be > 0 (got {tau})")
        self.tau = tau

    def client_start(self, model, global_state, private, received, client):
        if not any(k.startswith("fedema/w.") for k in private):
            return  # the client's first round: it starts from the global model
        online, predictor = online_keys(model)
        own = {k: private[f"fedema/w.{k}"] for k in online | predictor}
        params = {name for name, _ in model.named_parameters()}
        divergence = distance(global_state, own, sorted(online & params))
        scale = private.get("fedema/lambda")
        if scale is None:
            scale = torch.tensor(self.tau / max(divergence, 1e-12), dtype=torch.float64)
            private["fedema/lambda"] = scale
        mu = min(float(scale) * divergence, 1.0)
        state = model.state_dict()
        with torch.no_grad():
            for key in floats(own, online | predictor):
                merged = mu * own[key].double() + (1 - mu) * global_state[key].double()
                state[key].copy_(merged.to(state[key].dtype))
        return {"fedema_mu": mu, "fedema_divergence": divergence}

    def client_end(self, model, global_state):
        online, predictor = online_keys(model)
        state = model.state_dict()
        return {f"fedema/w.{k}": state[k].detach().cpu().clone() for k in online | predictor}
