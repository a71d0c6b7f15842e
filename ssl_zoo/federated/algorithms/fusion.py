"""Feature fusion and neighbourhood matching (Wu et al., IJCAI 2022, "Decentralized Unsupervised
Learning of Visual Representations"), for SimCLR. No code was published; these are the losses
chosen here from the paper's description.

What is shared: after its round, each client uploads the L2-normalised projector embeddings of up
to `shared_features` of its images (a random subset each round, un-augmented). The server sends every
sampled client the latest features of all clients; a client uses the others' as the remote set R
(M x d). Features leave the clients: choose this algorithm only where that is acceptable. They are
counted in bytes up and down.

With z_1..z_2B the normalised embeddings of the batch's two views, i+ the other view of image i
and T the method's temperature:

  Feature fusion: the remote features are extra negatives of NT-Xent,
    L_fusion = mean_i -log[ e^{z_i.z_i+/T} / (sum_{j != i} e^{z_i.z_j/T} + sum_r e^{z_i.R_r/T}) ]
  (with no remote features this is SimCLR's loss).
  Neighbourhood matching: each view's similarities to the remote features are pulled toward the
  other view's, sharpened, so an image lands near the same remote neighbours from either view,
    L_match = mean_i H( q_i+, softmax_r(z_i.R_r / T) ),  q_i+ = softmax_r(z_i+.R_r / (T/2)),
  the target q without gradient (sharpened by half the temperature, as a teacher).

  L = L_fusion + match_weight * L_match.
In round 1 no client has shared yet: the loss is SimCLR's.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_zoo.errors import UserError
from ssl_zoo.federated.algorithms.base import FedAlgorithm

PREFIX = "fusion/features."


def fusion_loss(z: Tensor, remote: Tensor | None, temperature: float) -> Tensor:
    """NT-Xent of 2B embeddings (view 0 then view 1) with the remote features as extra negatives."""
    z = F.normalize(z, dim=1)
    n = len(z)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), float("-inf"))
    if remote is not None and len(remote):
        logits = torch.cat([logits, z @ remote.T / temperature], dim=1)
    targets = (torch.arange(n, device=z.device) + n // 2) % n
    return F.cross_entropy(logits, targets)


def matching_loss(z: Tensor, remote: Tensor, temperature: float) -> Tensor:
    """Cross-entropy between each view's similarity distribution over the remote features and
    the other view's, sharpened and without gradient."""
    z = F.normalize(z, dim=1)
    logits = z @ remote.T
    n = len(z)
    other = logits.roll(n // 2, dims=0).detach()  # row i holds i+'s similarities
    target = (other / (temperature / 2)).softmax(dim=1)
    return -(target * (logits / temperature).log_softmax(dim=1)).sum(dim=1).mean()


class Fusion(FedAlgorithm):
    name = "fusion"
    paper = "https://www.ijcai.org/proceedings/2022/0323.pdf"
    requires = frozenset({"pair", "ntxent"})

    def __init__(self, shared_features: int = 1024, match_weight: float = 1.0):
        """shared_features: how many normalised features of its images a client uploads per
        round; match_weight: the weight of the neighbourhood-matching loss."""
        super().__init__()
        if shared_features < 1 or match_weight < 0:
            raise UserError("fusion needs shared_features >= 1 and match_weight >= 0 (got "
                            f"{shared_features}, {match_weight})")  # fmt: skip
        self.shared_features, self.match_weight = shared_features, match_weight

    def client_start(self, model, global_state, private, received, client):
        others = [v for k, v in sorted(received.items()) if k.startswith(PREFIX)
                  and int(k[len(PREFIX):]) != client]  # fmt: skip
        self.remote = torch.cat(others) if others else None

    def client_loss(self, model, views, out, loss):
        # Replaces SimCLR's NT-Xent (the `loss` given) by the same loss over more negatives.
        z = torch.cat(out.pair)
        temperature = model.criterion.temperature
        remote = None if self.remote is None else self.remote.to(z.device, z.dtype)
        fused = fusion_loss(z, remote, temperature)
        if remote is None:
            return fused
        return fused + self.match_weight * matching_loss(z, remote, temperature)

    @torch.no_grad()
    def upload(self, model, images):
        x = images()
        chosen = torch.randperm(len(x))[: self.shared_features]
        was_training = model.training
        model.eval()
        z = torch.cat([model.embed(x[part].to(model.device)) for part in chosen.split(256)])
        model.train(was_training)
        return {"fusion/features": F.normalize(z.float(), dim=1).cpu()}

    def receive(self, client, upload):
        if "fusion/features" in upload:
            self.server_state.setdefault("features", {})[client] = upload["fusion/features"]

    def broadcast(self):
        features = self.server_state.get("features", {})
        return {f"{PREFIX}{client}": f for client, f in sorted(features.items())}
