"""PyTorch side of bench/byom-peer.ts: ms per training step of a torchvision model (random init, seed 0,
BN in training mode, classifier head dropped) on the step ssocl's import compiles with byom-peer's
settings: VIEWS x BATCH crops at SIZE px, ImageNet normalisation, a linear projector to 32, the MCC loss
(tools/losses: multiCrop + mcc, tau 0.2), plain SGD.

    python3 torchvision_step.py NAME SIZE VIEWS BATCH THREADS STEPS WARMUP
prints one JSON line: {"name", "threads", "ms": [per timed step]}.
"""
import json
import sys
import time

import torch
import torchvision


def main(name, size, views, batch, threads, steps, warmup):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None)
    if hasattr(m, 'fc'):
        dim = m.fc.in_features
        m.fc = torch.nn.Identity()
    else:
        dim = [l for l in m.classifier.modules() if isinstance(l, torch.nn.Linear)][0].in_features
        m.classifier = torch.nn.Identity()
    m.train()
    proj = torch.nn.Linear(dim, 32)
    params = list(m.parameters()) + list(proj.parameters())
    opt = torch.optim.SGD(params, lr=0.01)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    g = torch.Generator().manual_seed(7)
    crops = torch.rand(views * batch, 3, size, size, generator=g)

    def l2n(x):
        return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-12)

    ms = []
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        z = l2n(proj(m((crops - mean) / std)))
        d = z.shape[1]
        zn = l2n(z.reshape(views, batch, d).mean(0))
        loss = torch.logsumexp(z @ zn.T / 0.2, 1).mean() - ((z.reshape(views, batch, d) * zn).sum(2) / 0.2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k >= warmup:
            ms.append((time.perf_counter() - t0) * 1000)
    print(json.dumps({'name': name, 'threads': threads, 'ms': ms}))


if __name__ == '__main__':
    main(sys.argv[1], *[int(x) for x in sys.argv[2:]])
