"""Run by test_radreg.py under `torch.distributed.run --nproc_per_node 2` (gloo): one RadReg step through a DDP
model; rank 0 writes the encoder's gradient and how many downstream images each process encoded."""

import os
import sys

import numpy as np
import torch

from gentune.regularizers.radreg import RadReg


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3 * 8 * 8, 6)
        self.encoded = 0

    def forward_features(self, x):
        self.encoded += len(x)
        return torch.tanh(self.lin(x.flatten(1)))

    def forward(self, x):
        return self.forward_features(x).sum(-1)


def grads(head: str, ddp: bool) -> tuple[torch.Tensor, int]:
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    enc = Encoder()
    model = torch.nn.parallel.DistributedDataParallel(enc) if ddp else enc
    reg = RadReg(weight=1.0, images=images, head=head, samples=3, batch_size=8, mean=[0.5] * 3, std=[0.25] * 3)
    for _ in range(2):  # the second step: mlp heads have ascended once
        model.zero_grad()
        # the loop's own forward goes through DDP (what makes it reduce the gradients); it adds nothing here
        main = model(torch.zeros(2, 3, 8, 8)).sum() * 0.0
        (main + reg(model, {}, None)["radreg"]).backward()
    return torch.cat([p.grad.flatten() for p in enc.parameters()]), enc.encoded - 4  # less the main forwards


if __name__ == "__main__":
    torch.distributed.init_process_group("gloo")
    out = {}
    for head in ("linear", "mlp"):
        g, encoded = grads(head, ddp=True)
        out[head] = {"grad": g, "encoded": encoded}
    if torch.distributed.get_rank() == 0:
        torch.save(out, sys.argv[1])
    torch.distributed.barrier()  # neither process tears gloo down while the other still uses it
    torch.distributed.destroy_process_group()
    # Interpreter teardown after gloo sometimes aborts ("terminate called without an active exception", about 1
    # run in 10 here) once everything above is done; the result is written, so leave without it.
    os._exit(0)
