"""Run by test_radreg.py under `torch.distributed.run --nproc_per_node 2` (gloo): one RadReg step through a DDP
model (image batches, and text batches as dicts); rank 0 writes the encoder's gradient and how many downstream
examples each process encoded."""

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


class TextEncoder(torch.nn.Module):
    """Token embeddings and a layer: what RadReg on text reads through a task's ``features`` (masked mean)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.lin = torch.nn.Embedding(12, 5), torch.nn.Linear(5, 6)
        self.encoded = 0

    def hidden(self, input_ids, attention_mask, **_):
        self.encoded += len(input_ids)
        return torch.tanh(self.lin(self.emb(input_ids)))

    def forward(self, input_ids):
        return self.lin(self.emb(input_ids)).sum()


def masked_mean(model, batch) -> torch.Tensor:
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (model.hidden(**batch) * mask).sum(1) / mask.sum(1)


def grads(head: str, ddp: bool) -> tuple[torch.Tensor, int]:
    """``head``: linear, mlp (images) or text (token-id batches as dicts of padded tensors, MLP heads)."""
    if head == "text":
        from gentune.data.streams import TextStream

        rng = np.random.default_rng(0)
        pool = [{"input_ids": rng.integers(1, 12, int(rng.integers(2, 7))).tolist()} for _ in range(20)]
        enc = TextEncoder()
        stream = TextStream(pool, 8, torch.Generator().manual_seed(5), pad_id=0)
        reg = RadReg(weight=1.0, head="mlp", samples=3, batch_size=8, stream=stream, features=masked_mean)
        main_input = torch.zeros(2, 3, dtype=torch.long)
    else:
        images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
        enc = Encoder()
        reg = RadReg(weight=1.0, images=images, head=head, samples=3, batch_size=8, mean=[0.5] * 3, std=[0.25] * 3)
        main_input = torch.zeros(2, 3, 8, 8)
    model = torch.nn.parallel.DistributedDataParallel(enc) if ddp else enc
    for _ in range(2):  # the second step: mlp heads have ascended once
        model.zero_grad()
        # the loop's own forward goes through DDP (what makes it reduce the gradients); it adds nothing here
        main = model(main_input).sum() * 0.0
        (main + reg(model, {}, None)["radreg"]).backward()
    main_forwards = 0 if head == "text" else 4  # the image encoder counts the main forwards too
    return torch.cat([p.grad.flatten() for p in enc.parameters()]), enc.encoded - main_forwards


if __name__ == "__main__":
    torch.distributed.init_process_group("gloo")
    out = {}
    for head in ("linear", "mlp", "text"):
        g, encoded = grads(head, ddp=True)
        out[head] = {"grad": g, "encoded": encoded}
    if torch.distributed.get_rank() == 0:
        torch.save(out, sys.argv[1])
    torch.distributed.barrier()  # neither process tears gloo down while the other still uses it
    torch.distributed.destroy_process_group()
    # Interpreter teardown after gloo sometimes aborts ("terminate called without an active exception", about 1
    # run in 10 here) once everything above is done; the result is written, so leave without it.
    os._exit(0)
