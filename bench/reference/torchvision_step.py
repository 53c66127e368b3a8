"""PyTorch side of bench/byom-peer.ts: ms per training step of a torchvision model (random init, seed 0,
BN in training mode, classifier head dropped, Dropout off as in the eval-mode export) on the step
ssocl's import compiles with byom-peer's settings: VIEWS x BATCH crops at SIZE px, ImageNet
normalisation, a linear projector to 32, the MCC loss (tools/losses: multiCrop + mcc, tau 0.2), plain
SGD at lr 0.01.

    python3 torchvision_step.py NAME SIZE VIEWS BATCH THREADS STEPS WARMUP [CROPS.f32 PROJECTOR.f32]

CROPS.f32: VIEWS*BATCH*3*SIZE*SIZE float32 (view-major, as ours reads them); PROJECTOR.f32: the
projector's starting weight [32, dim] then bias [32], float32 (byom-peer writes both, so the two sides
start from the same weights on the same crops). Without them: torch.rand crops and torch's own init.
Prints one JSON line: {"ms": [per timed step], "medianMs", "losses": [every step], "peakRssMB",
"info": {torch, threads, blas}}.
"""
import json
import resource
import sys
import time

import numpy as np
import torch
import torchvision


def main(name, size, views, batch, threads, steps, warmup, crops_file=None, proj_file=None):
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
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.eval()
    proj = torch.nn.Linear(dim, 32)
    if proj_file:
        p = torch.from_numpy(np.fromfile(proj_file, dtype=np.float32))
        with torch.no_grad():
            proj.weight.copy_(p[: 32 * dim].reshape(32, dim))
            proj.bias.copy_(p[32 * dim:])
    params = list(m.parameters()) + list(proj.parameters())
    opt = torch.optim.SGD(params, lr=0.01)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    if crops_file:
        crops = torch.from_numpy(np.fromfile(crops_file, dtype=np.float32)).reshape(views * batch, 3, size, size)
    else:
        crops = torch.rand(views * batch, 3, size, size, generator=torch.Generator().manual_seed(7))

    def l2n(x):
        return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-12)

    ms, losses = [], []
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        z = l2n(proj(m((crops - mean) / std)))
        d = z.shape[1]
        zn = l2n(z.reshape(views, batch, d).mean(0))
        loss = torch.logsumexp(z @ zn.T / 0.2, 1).mean() - ((z.reshape(views, batch, d) * zn).sum(2) / 0.2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if k >= warmup:
            ms.append((time.perf_counter() - t0) * 1000)
    blas = next((l.strip() for l in torch.__config__.show().split('\n') if 'BLAS' in l), '?')
    print(json.dumps({'ms': ms, 'medianMs': sorted(ms)[len(ms) // 2], 'losses': losses,
                      'peakRssMB': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      'info': {'torch': torch.__version__, 'threads': threads, 'blas': blas}}))


if __name__ == '__main__':
    a = sys.argv[1:]
    main(a[0], *[int(x) for x in a[1:7]], *a[7:9])
