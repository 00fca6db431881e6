"""BackLink across pipeline ranks: the paper's multi-device scheme (Guo et al., Fig. 3).

When module k (the last module of stage s) has a backward link into module k+1 (the first of
stage s+1), the linked layers are duplicated on stage s+1:

    stage s     forward/backward of module k with its local loss; the local weight gradients of
                the linked layers are kept; their input, random state and current weights go
                downstream with the activations (`outgoing`).
    stage s+1   loads the weights into its copy of the linked layers, recomputes their forward,
                and back-propagates module k+1's error at its input through the copy only; the
                weight gradients go back upstream (`incoming` -> RemoteLink.reply).
    stage s     mixes alpha * local + (1 - alpha) * remote and takes module k's step (`finish`).

Schedules: `sync` waits for the remote gradients of the same batch, so the updates are those of
the single-process engine with --link-recompute. `async` does not wait: module k steps at batch t
with the remote gradients of batch t - S (S = --max-staleness, a fixed lag, hence reproducible;
the first S batches get the local part alone). At every epoch end the gradients still in flight
are received and dropped, so that no rank waits on another across the evaluation.
"""
from __future__ import annotations

import torch

from ..rules.backlink import LINK, Link, RemoteLink, split_body
from .comm import recv_message, send_message

INPUTS, RNG, RNG_CUDA, PARAM, GRAD = "backlink/inputs", "backlink/rng", "backlink/rng_cuda", "backlink/param/", "grad/"


class LinkExchange:
    def __init__(self, coupling, net, owned: range, prev_rank: int | None, next_rank: int | None, group,
                 device: torch.device, lag: int):
        """`coupling`: the rule's BackLink coupling (backlink, backlink+sgr)."""
        self.coupling, self.prev_rank, self.next_rank = coupling, prev_rank, next_rank
        self.group, self.device, self.lag = group, device, lag
        self.in_flight = 0  # links sent downstream whose gradients have not come back
        self.copy = self.copy_params = None
        if prev_rank is not None and coupling.has_link(net[owned.start - 1]):
            # this rank's own copy of the previous stage's linked layers (every rank builds the whole model)
            _, self.copy = split_body(net[owned.start - 1], coupling.link_length)
            self.copy_params = [p for p in self.copy.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ module k's side (stage s)
    def outgoing(self, message: dict) -> tuple[Link | None, dict]:
        """Take the Link out of the message; the tensors stage s+1 needs to play its part."""
        link: Link | None = message.pop(LINK, None)
        if link is None:
            return None, {}
        tensors = {INPUTS: link.inputs, RNG: link.rng["cpu"]}
        if "cuda" in link.rng:
            tensors[RNG_CUDA] = link.rng["cuda"]
        # cloned: module k steps (in place) while an async sender may still be sending
        tensors.update({f"{PARAM}{i}": p.detach().clone() for i, p in enumerate(link.params)})
        return link, tensors

    def finish(self, link: Link) -> None:
        """After the link went downstream: mix in the remote gradients `lag` batches old, step."""
        self.in_flight += 1
        remote = self._receive(len(link.params)) if self.in_flight > self.lag else [None] * len(link.params)
        self.coupling.finish_link(link, remote)

    def drain(self) -> None:
        """Receive (and drop) the gradients still in flight."""
        while self.in_flight:
            self._receive(0)

    def _receive(self, n: int) -> list[torch.Tensor | None]:
        tensors, _ = recv_message(self.next_rank, self.group, self.device)
        self.in_flight -= 1
        return [tensors.get(f"{GRAD}{i}") for i in range(n)]

    # ------------------------------------------------------------------ module k+1's side (stage s+1)
    def incoming(self, tensors: dict) -> RemoteLink | None:
        """The RemoteLink for the first module of this stage, from the tensors of a message."""
        if INPUTS not in tensors:
            return None
        rng = {"cpu": tensors.pop(RNG).cpu()}
        if RNG_CUDA in tensors:
            rng["cuda"] = tensors.pop(RNG_CUDA).cpu()
        with torch.no_grad():
            for i, p in enumerate(self.copy_params):
                p.copy_(tensors.pop(f"{PARAM}{i}"))
        return RemoteLink(self.copy, self.copy_params, tensors.pop(INPUTS), rng, self._reply)

    def _reply(self, gradients: list[torch.Tensor | None]) -> None:
        send_message({f"{GRAD}{i}": g for i, g in enumerate(gradients) if g is not None}, {}, self.prev_rank,
                     self.group, self.device)
