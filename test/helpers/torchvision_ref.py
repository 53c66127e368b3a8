"""PyTorch side of test/import-torch.test.ts (Debian's python3-torch 1.13 / torchvision 0.14), one
process per model (importing torch is the slow part).

case NAME SIZE VIEWS BATCH OUTDIR
    A torchvision model, random init from seed 0, eval mode, exported to OUTDIR/model.onnx at SIZE px
    with a dynamic batch (opset 13, training=PRESERVE and do_constant_folding=False: BatchNormalization
    nodes stay). Then one training step of the same model (BN in training mode) on a batch of
    VIEWS x BATCH crops (OUTDIR/crops.f32) through a linear projector (OUTDIR/projector.f32 + .json)
    under the loss ssocl's step computes (tools/losses: multiCrop + mcc, tau 0.2), in float64 and in
    float32: OUTDIR/ref.json + ref.f64 and ref32.json + ref32.f64 (values stored as float64) hold the
    loss, every parameter's gradient and every BN running statistic after the step, by torch name.
    float32 says how close float32 arithmetic itself gets to float64 on this batch.

export NAME SIZE OUT.onnx kept|folded
    Only the export; folded: the default export (BN folded into the convolutions).
"""
import json
import sys

import torch
import torchvision


def model_of(name):
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def export(name, size, out, mode):
    m = model_of(name)
    x = torch.rand(2, 3, size, size)
    kw = dict(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False) if mode == 'kept' else {}
    torch.onnx.export(m, x, out, input_names=['input'], output_names=['logits'],
                      dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}}, opset_version=13, **kw)


def l2n(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-12)


MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
TAU = 0.2


def reference(name, d, dtype, crops, w, b):
    dt = torch.float64 if dtype == 'float64' else torch.float32
    m = model_of(name).to(dt)
    # The feature is what the classifier reads: drop the classifier head.
    if name.startswith('resnet') or name.startswith('regnet') or name.startswith('shufflenet'):
        m.fc = torch.nn.Identity()
    else:
        m.classifier = torch.nn.Identity()
    m.train()  # batch statistics, running statistics updated (momentum 0.1, unbiased variance)
    # Dropout and stochastic depth as the eval-mode export has them (off); only BN trains.
    for mod in m.modules():
        if isinstance(mod, (torch.nn.Dropout, torchvision.ops.StochasticDepth)):
            mod.eval()
    w = w.to(dt).clone().requires_grad_(True)
    b = b.to(dt).clone().requires_grad_(True)
    n, bs = crops.shape[0], crops.shape[1]
    x = crops.reshape(n * bs, *crops.shape[2:]).to(dt)
    mean = torch.tensor(MEAN, dtype=dt).reshape(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=dt).reshape(1, 3, 1, 1)
    h = m((x - mean) / std) @ w.T + b
    # tools/losses: multiCrop, then mcc.
    z = l2n(h)
    dz = z.shape[1]
    zbar = z.reshape(n, bs, dz).mean(0)
    zn = l2n(zbar)
    logits = (z @ zn.T) / TAU
    lse = torch.logsumexp(logits, 1)
    pos = (z.reshape(n, bs, dz) * zn).sum(2) / TAU
    loss = lse.mean() - pos.mean()
    loss.backward()
    index, chunks, off = {}, [], 0
    def put(key, t):
        nonlocal off
        t = t.detach().double().reshape(-1)
        index[key] = [off, t.numel()]
        chunks.append(t)
        off += t.numel()
    for k, p in m.named_parameters():
        put(f'grad:{k}', p.grad)
    put('grad:projector.0.linear.weight', w.grad)
    put('grad:projector.0.linear.bias', b.grad)
    for k, v in m.named_buffers():
        if 'running' in k:
            put(f'buffer:{k}', v)
    out = 'ref' if dtype == 'float64' else 'ref32'
    torch.cat(chunks).numpy().tofile(f'{d}/{out}.f64')
    json.dump({'loss': loss.item(), 'index': index}, open(f'{d}/{out}.json', 'w'))


def case(name, size, views, batch, d):
    export(name, size, f'{d}/model.onnx', 'kept')
    g = torch.Generator().manual_seed(7)
    crops = torch.rand(views, batch, 3, size, size, generator=g)
    with torch.no_grad():
        feat = model_of(name)
        if hasattr(feat, 'fc'):
            dim = feat.fc.in_features
        else:
            dim = [l for l in feat.classifier.modules() if isinstance(l, torch.nn.Linear)][0].in_features
    bound = dim ** -0.5
    w = (torch.rand(32, dim, generator=g) * 2 - 1) * bound
    b = (torch.rand(32, generator=g) * 2 - 1) * bound
    crops.numpy().tofile(f'{d}/crops.f32')
    torch.cat([w.reshape(-1), b]).numpy().tofile(f'{d}/projector.f32')
    json.dump({'dim': dim, 'out': 32, 'mean': MEAN, 'std': STD, 'tau': TAU}, open(f'{d}/projector.json', 'w'))
    for dtype in ['float64', 'float32']:
        reference(name, d, dtype, crops.double(), w.double(), b.double())


if __name__ == '__main__':
    if sys.argv[1] == 'export':
        export(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        case(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
