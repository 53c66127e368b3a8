"""PyTorch side of test/import-torch.test.ts (Debian's python3-torch 1.13 / torchvision 0.14).

export NAME SIZE OUT.onnx kept|folded
    A torchvision model, random init from seed 0, eval mode, exported at SIZE px with a dynamic batch
    (opset 13). kept: training=PRESERVE, do_constant_folding=False (BatchNormalization nodes stay);
    folded: the default export (BN folded into the convolutions).

reference NAME DIR float64|float32
    One training step of the same model (BN kept, in training mode) in that precision on DIR/crops.f32 with
    the projector weights DIR/projector.json + .f32, the loss the ssocl step computes (the MCC loss of
    tools/losses: multiCrop + mcc). Writes DIR/ref.json (loss, tensor index) and DIR/ref.f64: every
    parameter's gradient and every BN running statistic after the step, by the torch name. float32
    writes DIR/ref32.json and DIR/ref32.f64 (values stored as float64): how far float32 itself is
    from float64 on this batch, the floor of what a float32 implementation can agree to.
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


def reference(name, d, dtype):
    dt = torch.float64 if dtype == 'float64' else torch.float32
    cfg = json.load(open(f'{d}/projector.json'))
    flat = torch.frombuffer(bytearray(open(f'{d}/projector.f32', 'rb').read()), dtype=torch.float32).to(dt)
    m = model_of(name).to(dt)
    # The feature is what the classifier reads: drop the classifier head.
    if name.startswith('resnet'):
        m.fc = torch.nn.Identity()
    else:
        m.classifier = torch.nn.Identity()
    m.train()  # batch statistics, running statistics updated (momentum 0.1, unbiased variance)
    proj = {}
    for k, (off, shape) in cfg['tensors'].items():
        n = 1
        for s in shape:
            n *= s
        proj[k] = flat[off:off + n].reshape(shape).clone().requires_grad_(True)
    n, b, s = cfg['views'], cfg['batch'], cfg['size']
    crops = torch.frombuffer(bytearray(open(f'{d}/crops.f32', 'rb').read()), dtype=torch.float32).to(dt).reshape(n * b, 3, s, s)
    mean = torch.tensor(cfg['mean'], dtype=dt).reshape(1, 3, 1, 1)
    std = torch.tensor(cfg['std'], dtype=dt).reshape(1, 3, 1, 1)
    h = m((crops - mean) / std)
    for i in range(cfg['layers']):
        h = h @ proj[f'projector.{i}.linear.weight'].T + proj[f'projector.{i}.linear.bias']
        if i < cfg['layers'] - 1:
            h = torch.relu(h)
    # tools/losses: multiCrop, then mcc.
    z = l2n(h)
    dz = z.shape[1]
    zbar = z.reshape(n, b, dz).mean(0)
    zn = l2n(zbar)
    logits = (z @ zn.T) / cfg['tau']
    lse = torch.logsumexp(logits, 1)
    pos = (z.reshape(n, b, dz) * zn).sum(2) / cfg['tau']
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
    for k, p in proj.items():
        put(f'grad:{k}', p.grad)
    for k, v in m.named_buffers():
        if 'running' in k:
            put(f'buffer:{k}', v)
    out = 'ref' if dtype == 'float64' else 'ref32'
    torch.cat(chunks).numpy().tofile(f'{d}/{out}.f64')
    json.dump({'loss': loss.item(), 'index': index}, open(f'{d}/{out}.json', 'w'))


if __name__ == '__main__':
    if sys.argv[1] == 'export':
        export(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        reference(sys.argv[2], sys.argv[3], sys.argv[4])
