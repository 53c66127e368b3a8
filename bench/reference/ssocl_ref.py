#!/usr/bin/env python3
# bench/reference/ssocl_ref.py: a PyTorch reference of ssocl's compiled training step, for one artifact
# directory. It reads manifest.json's preset, builds the same network (ResNet encoder, projector, optional
# predictor) with modules named like the state tensors, loads init.safetensors (parsed by hand), and runs
# the same loss and optimizer on the same crops. Prints JSON lines: one "config", optionally one "embed"
# (eval-mode inference timing), one "step" per step (loss, terms, grad norm, ms), one "summary".
#
#   python3 bench/reference/ssocl_ref.py --artifacts training-artifacts/edge --crops crops.npy \
#       --steps 12 --warmup 2 --threads 2 [--device cpu|cuda] [--embed-iters 10]
#
# Standard library and torch only (PyTorch 1.13 or newer). The semantics it mirrors, and where they live:
# tools/nn/{encoders,layers,heads}.ts (BN in training mode, PyTorch running statistics), tools/losses
# (MCC, TCR, ...), tools/optim (SGD momentum + coupled weight decay, LARS, AdamW), tools/artifacts/build.ts
# (input normalisation inside the graph, loss = sum of weight x term).

import argparse
import json
import math
import os
import resource
import statistics
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------- files

def read_safetensors(path):
    """8-byte little-endian header length, a JSON header, then raw little-endian tensor bytes."""
    with open(path, 'rb') as f:
        raw = f.read()
    (n,) = struct.unpack('<Q', raw[:8])
    header = json.loads(raw[8:8 + n].decode('utf8'))
    base = 8 + n
    dtypes = {'F32': torch.float32, 'F64': torch.float64, 'I64': torch.int64, 'U8': torch.uint8}
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        a, b = info['data_offsets']
        # bytearray: a writable copy, so torch.frombuffer does not warn and the tensor owns its memory.
        t = torch.frombuffer(bytearray(raw[base + a:base + b]), dtype=dtypes[info['dtype']])
        out[name] = t.reshape(info['shape'])
    return out


def read_npy(path):
    """A float32 C-order .npy (format 1.x/2.x), without numpy."""
    with open(path, 'rb') as f:
        raw = f.read()
    if raw[:6] != b'\x93NUMPY':
        raise ValueError(f'{path}: not a .npy file')
    major = raw[6]
    if major == 1:
        (hlen,) = struct.unpack('<H', raw[8:10])
        start = 10
    else:
        (hlen,) = struct.unpack('<I', raw[8:12])
        start = 12
    header = raw[start:start + hlen].decode('latin1')
    # The header is a Python dict literal; read its three fields without eval.
    descr = header.split("'descr':")[1].split(',')[0].strip().strip("'\"")
    if descr not in ('<f4', '=f4', 'f4'):
        raise ValueError(f'{path}: dtype {descr}, expected little-endian float32')
    if 'True' in header.split("'fortran_order':")[1].split(',')[0]:
        raise ValueError(f'{path}: Fortran order is not supported')
    shape_txt = header.split("'shape':")[1].split(')')[0].strip().lstrip('(')
    shape = [int(s) for s in shape_txt.split(',') if s.strip()]
    data = bytearray(raw[start + hlen:])
    return torch.frombuffer(data, dtype=torch.float32).reshape(shape)


# ---------------------------------------------------------------- network (names = state tensor names)

class Act(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        # ReLU in place as torchvision does (the peer should be an ordinary, reasonably tuned PyTorch model).
        return F.relu(x, inplace=True) if self.kind == 'relu' else F.softplus(x)


def bn2d(c, mom):
    return nn.BatchNorm2d(c, eps=1e-5, momentum=mom)


class BasicBlock(nn.Module):
    def __init__(self, cin, out, stride, act, mom):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, out, 3, stride, 1, bias=False)
        self.bn1 = bn2d(out, mom)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = bn2d(out, mom)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, 0, bias=False), bn2d(out, mom))
        self.act = act

    def forward(self, x):
        h = self.act(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        short = self.downsample(x) if self.downsample is not None else x
        return self.act(h + short)


class ResNet(nn.Module):
    """tools/nn/encoders.ts: CIFAR stem (3x3/1, no max-pool) or ImageNet stem (7x7/2 + max-pool)."""

    def __init__(self, enc, act, mom):
        super().__init__()
        w0 = enc['widths'][0]
        self.imagenet = enc['stem'] == 'imagenet'
        self.conv1 = nn.Conv2d(3, w0, 7 if self.imagenet else 3, 2 if self.imagenet else 1, 3 if self.imagenet else 1, bias=False)
        self.bn1 = bn2d(w0, mom)
        self.act = act
        cin = w0
        self.stages = []
        for stage, (w, nb) in enumerate(zip(enc['widths'], enc['blocks'])):
            blocks = []
            for b in range(nb):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(BasicBlock(cin, w, stride, act, mom))
                cin = w
            layer = nn.Sequential(*blocks)
            setattr(self, f'layer{stage + 1}', layer)
            self.stages.append(layer)
        self.dim = cin

    def forward(self, x):
        h = self.act(self.bn1(self.conv1(x)))
        if self.imagenet:
            h = F.max_pool2d(h, 3, 2, 1)
        for layer in self.stages:
            h = layer(h)
        return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)


class MlpLayer(nn.Module):
    def __init__(self, fin, spec, act, mom):
        super().__init__()
        self.linear = nn.Linear(fin, spec['out'], bias=spec.get('bias', True))
        bn = spec.get('bn', False)
        self.bn = nn.BatchNorm1d(spec['out'], eps=1e-5, momentum=mom, affine=(bn != 'no-affine')) if bn else None
        self.act = act if spec.get('act', False) else None

    def forward(self, x):
        h = self.linear(x)
        if self.bn is not None:
            h = self.bn(h)
        return self.act(h) if self.act is not None else h


def mlp(fin, specs, act, mom):
    layers = []
    for s in specs:
        layers.append(MlpLayer(fin, s, act, mom))
        fin = s['out']
    return nn.Sequential(*layers)


class Net(nn.Module):
    def __init__(self, p):
        super().__init__()
        act = Act(p['activation'])
        mom = p['bnMomentum']
        self.encoder = ResNet(p['encoder'], act, mom)
        self.projector = mlp(self.encoder.dim, p['projector'], act, mom)
        self.predictor = mlp(p['projector'][-1]['out'], p['predictor'], act, mom) if p.get('predictor') else None
        # Normalisation is part of the compiled graph (tools/artifacts/build.ts normalizeInput): (x - mean) * (1/std).
        self.register_buffer('mean', torch.tensor(p['image']['mean'], dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer('inv_std', torch.tensor([1 / s for s in p['image']['std']], dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        feats = self.encoder((x - self.mean) * self.inv_std)
        proj = self.projector(feats)
        pred = self.predictor(proj) if self.predictor is not None else None
        return feats, proj, pred


def load_state(net, tensors, state):
    """params.X / buffers.X -> module tensor X, shaped as the manifest's state list says (init.safetensors
    stores them flat); every module tensor must be given (BN's step counter aside)."""
    sd = {}
    for s in state:
        if s['init'] != 'file':
            continue
        t = tensors.get(s['name'])
        if t is None or t.numel() != math.prod(s['shape']):
            raise SystemExit(f"init.safetensors has no {s['name']} of {s['shape']}")
        sd[s['name'].split('.', 1)[1]] = t.reshape(s['shape'])
    own = net.state_dict()
    for k in own:
        if k.endswith('num_batches_tracked'):
            sd[k] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    if missing or extra:
        raise SystemExit(f'state does not match the architecture: missing {missing[:5]}, unexpected {extra[:5]}')
    for k, v in sd.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise SystemExit(f'{k}: shape {list(v.shape)} in init.safetensors, {list(own[k].shape)} in the network')
    net.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------- losses (tools/losses/index.ts)

def l2n(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-12)


def swap_views(x, b):
    return torch.cat([x[b:2 * b], x[:b]], 0)


def loss_terms(p, proj, pred, n, b):
    d = proj.shape[1]
    z = l2n(proj)
    zr = z.reshape(n, b, d)
    zbar = zr.mean(0)
    terms = {}
    for spec in p['losses']:
        name = spec['name']
        if name == 'mcc':
            # Author's code: every crop an anchor, logits against the b normalised image means.
            zn = l2n(zbar)
            inv_tau = 1.0 / p['tau']
            lse = torch.logsumexp(z @ zn.t() * inv_tau, 1)
            pos = (zr * zn).sum(2) * inv_tau
            terms[name] = lse.mean() - pos.mean()
        elif name == 'mcc-paper':
            inv_tau = 1.0 / p['tau']
            lse = torch.logsumexp(zbar @ z.t() * inv_tau, 1)
            pos = (zr * zbar).sum(2) * inv_tau
            terms[name] = lse.mean() - pos.mean()
        elif name == 'tcr':
            # -1/2 logdet(I + d/(b eps) Z_i Z_i^T), b x b form, mean over crop index i.
            c = d / (b * p['tcrEps'])
            a = torch.eye(b, dtype=z.dtype, device=z.device) + c * (zr @ zr.transpose(1, 2))
            logdet = 2 * torch.log(torch.diagonal(torch.linalg.cholesky(a), dim1=1, dim2=2)).sum(1)
            terms[name] = -0.5 * logdet.mean()
        elif name == 'empssl-inv':
            terms[name] = -((zr * l2n(zbar)).sum(2)).mean()
        elif name == 'nt-xent':
            rows = proj.shape[0]
            inv_tau = 1.0 / p['ntXentTau']
            mask = torch.zeros(rows, rows, dtype=z.dtype, device=z.device)
            mask.fill_diagonal_(-1e4)
            s = z @ z.t() * inv_tau + mask
            pos = (z * swap_views(z, rows // 2)).sum(1) * inv_tau
            terms[name] = torch.logsumexp(s, 1).mean() - pos.mean()
        elif name == 'simsiam':
            rows = proj.shape[0]
            target = l2n(swap_views(proj.detach(), rows // 2))
            terms[name] = -((l2n(pred) * target).sum(1)).mean()
        else:
            raise SystemExit(f'unknown loss {name}')
    total = None
    for spec in p['losses']:
        wt = terms[spec['name']] * spec['weight']
        total = wt if total is None else total + wt
    return total, terms, zbar


# ---------------------------------------------------------------- optimizer (tools/optim/index.ts)

def decayed(name, t):
    # tools/nn/layers.ts: weight decay and LARS apply to conv and linear weights only (not biases, not norms).
    return name.endswith('.weight') and t.dim() >= 2


class Optimizer:
    """SGD (+ coupled weight decay, + LARS) with heavy-ball momentum, or AdamW; torch.optim where it is the
    same update, by hand for LARS (EMP-SSL's wrapper: trust ratio from the raw gradient's norm)."""

    def __init__(self, cfg, named):
        self.cfg = cfg
        self.type = cfg['type']
        self.named = named
        dec = [t for n, t in named if decayed(n, t)]
        rest = [t for n, t in named if not decayed(n, t)]
        if self.type == 'sgd':
            self.wd = cfg.get('weightDecay', 1e-4)
            self.mu = cfg.get('momentum', 0.9)
            self.lars = cfg.get('lars', True)
            self.eta = cfg.get('eta', 0.005)
            self.clip = cfg.get('clip', True)
            if not self.lars:
                groups = [{'params': dec, 'weight_decay': self.wd}, {'params': rest, 'weight_decay': 0.0}]
                self.opt = torch.optim.SGD(groups, lr=0.0, momentum=self.mu, dampening=0, nesterov=False)
            else:
                self.bufs = [torch.zeros_like(t) for _, t in named]
        elif self.type == 'adamw':
            wd = cfg.get('weightDecay', 1e-2)
            groups = [{'params': dec, 'weight_decay': wd}, {'params': rest, 'weight_decay': 0.0}]
            self.opt = torch.optim.AdamW(groups, lr=0.0, betas=(cfg.get('beta1', 0.9), cfg.get('beta2', 0.999)), eps=cfg.get('eps', 1e-8))
        else:
            raise SystemExit(f"unknown optimizer {self.type}")

    def zero_grad(self):
        for _, t in self.named:
            t.grad = None

    @torch.no_grad()
    def step(self, lr):
        if self.type == 'sgd' and self.lars:
            for (name, p), buf in zip(self.named, self.bufs):
                g = p.grad
                if decayed(name, p):
                    u = g + self.wd * p
                    pn = torch.linalg.vector_norm(p)
                    gn = torch.linalg.vector_norm(g)
                    ratio = pn * self.eta / (gn + self.wd * pn + 1e-8)
                    if self.clip:
                        ratio = torch.clamp(ratio / lr, max=1.0)
                    u = u * torch.where(pn * gn > 0, ratio, torch.ones_like(ratio))
                else:
                    u = g
                buf.mul_(self.mu).add_(u)
                p.add_(buf, alpha=-lr)
            return
        for grp in self.opt.param_groups:
            grp['lr'] = lr
        self.opt.step()


# ---------------------------------------------------------------- run

def loaded_blas():
    """The BLAS library this process really uses (Debian's torch links libblas.so.3, which may be the slow
    reference implementation or OpenBLAS, depending on what is installed or on LD_LIBRARY_PATH)."""
    torch.ones(8, 8) @ torch.ones(8, 8)
    try:
        with open('/proc/self/maps') as f:
            libs = sorted({line.split()[-1] for line in f if 'blas' in line.lower() or 'mkl' in line.lower()})
        return ', '.join(libs) or 'linked statically or not found'
    except OSError:
        return 'unknown'


def sync(dev):
    if dev.type == 'cuda':
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description='PyTorch reference of an ssocl training step (JSON lines on stdout).')
    ap.add_argument('--artifacts', required=True, help='artifact directory (manifest.json, init.safetensors)')
    ap.add_argument('--crops', help='.npy float32 [K, rows, 3, H, W] or [rows, 3, H, W]; step s uses batch (s-1) mod K')
    ap.add_argument('--seed', type=int, default=1, help='without --crops: uniform [0,1) crops from this seed')
    ap.add_argument('--steps', type=int, default=12, help='steps in all, warm-up included')
    ap.add_argument('--warmup', type=int, default=2, help='first steps left out of the median')
    ap.add_argument('--lr', type=float, help="learning rate (default: the preset's)")
    ap.add_argument('--threads', type=int, default=0, help='torch.set_num_threads (0: leave as is)')
    ap.add_argument('--device', default='cpu', help='cpu, cuda or auto (cuda when available)')
    ap.add_argument('--tf32', choices=['default', 'on', 'off'], default='default', help='CUDA: TF32 in convolutions and matmuls')
    ap.add_argument('--dtype', choices=['float32', 'float64'], default='float32',
                    help='float64: how far float32 rounding alone moves the results (ours is float32)')
    ap.add_argument('--embed-batch', type=int, default=256)
    ap.add_argument('--embed-iters', type=int, default=0, help='timed eval-mode inference runs of --embed-batch images (0: none)')
    a = ap.parse_args()

    if a.threads > 0:
        torch.set_num_threads(a.threads)
        # Like ORT's interOpNumThreads 1 in agent/trainer/backend.ts.
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
    dev = torch.device('cuda' if a.device == 'cuda' or (a.device == 'auto' and torch.cuda.is_available()) else 'cpu')
    if dev.type == 'cuda':
        # A fixed shape: let cuDNN pick its fastest algorithms (warm-up steps absorb the search).
        torch.backends.cudnn.benchmark = True
        if a.tf32 != 'default':
            torch.backends.cuda.matmul.allow_tf32 = a.tf32 == 'on'
            torch.backends.cudnn.allow_tf32 = a.tf32 == 'on'

    with open(os.path.join(a.artifacts, 'manifest.json')) as f:
        man = json.load(f)
    p = man['preset']
    cs = man['trainStep']['crops']
    rows, n, b = cs['shape'][0], cs['views'], cs['images']
    size = p['image']['size']
    lr = a.lr if a.lr is not None else p['lr']

    net = Net(p)
    load_state(net, read_safetensors(os.path.join(a.artifacts, man['init'])), man['state'])
    dtype = torch.float64 if a.dtype == 'float64' else torch.float32
    net.to(dev, dtype)

    if a.crops:
        crops = read_npy(a.crops)
        if crops.dim() == 4:
            crops = crops.unsqueeze(0)
    else:
        gen = torch.Generator().manual_seed(a.seed)
        crops = torch.rand((2, rows, 3, size, size), generator=gen)
    if list(crops.shape[1:]) != [rows, 3, size, size]:
        raise SystemExit(f'crops {list(crops.shape)}: the artifact takes [K, {rows}, 3, {size}, {size}]')

    named = [(k, t) for k, t in net.named_parameters()]
    opt = Optimizer(p['optimizer'], named)
    print(json.dumps({'event': 'config', 'preset': p['name'], 'torch': torch.__version__, 'device': str(dev),
                      'gpu': torch.cuda.get_device_name(0) if dev.type == 'cuda' else None,
                      'threads': torch.get_num_threads(), 'dtype': a.dtype, 'rows': rows, 'views': n, 'images': b, 'lr': lr,
                      'params': sum(t.numel() for _, t in named), 'batches': crops.shape[0],
                      'glibc_tunables': os.environ.get('GLIBC_TUNABLES'), 'blas': loaded_blas()}), flush=True)

    if a.embed_iters > 0:
        # Eval-mode inference as embed.onnx: backbone features and the normalised embedding.
        flat = crops.reshape(-1, 3, size, size)
        idx = torch.arange(a.embed_batch) % flat.shape[0]
        imgs = flat[idx].contiguous()
        net.eval()
        times = []
        with torch.inference_mode():
            for i in range(a.embed_iters + 2):
                t0 = time.perf_counter()
                feats, proj, _ = net(imgs.to(dev, dtype))
                emb = l2n(proj)
                sync(dev)
                if i >= 2:
                    times.append((time.perf_counter() - t0) * 1000)
                if i == 0:
                    fd = feats.double()
                    check = {'features_sum': fd.sum().item(), 'features_sumsq': (fd * fd).sum().item(), 'embedding_sum': emb.double().sum().item()}
        med = statistics.median(times)
        print(json.dumps({'event': 'embed', 'batch': a.embed_batch, 'ms': times, 'median_ms': med,
                          'frames_per_s': a.embed_batch / med * 1000, **check}), flush=True)
        net.train()

    times = []
    finite = True
    for s in range(1, a.steps + 1):
        x_host = crops[(s - 1) % crops.shape[0]]
        before = [t.detach().clone() for _, t in named] if s == 1 else None
        t0 = time.perf_counter()
        x = x_host.to(dev, dtype)
        opt.zero_grad()
        _, proj, pred = net(x)
        total, terms, _ = loss_terms(p, proj, pred, n, b)
        total.backward()
        gn = torch.sqrt(sum((t.grad * t.grad).sum() for _, t in named))
        opt.step(lr)
        vals = torch.stack([total.detach(), gn, *[t.detach() for t in terms.values()]]).tolist()  # one device sync
        ms = (time.perf_counter() - t0) * 1000
        finite = finite and all(math.isfinite(v) for v in vals)
        if s > a.warmup:
            times.append(ms)
        print(json.dumps({'event': 'step', 'step': s, 'loss': vals[0], 'grad_norm': vals[1],
                          'terms': dict(zip(terms.keys(), vals[2:])), 'ms': ms, 'warmup': s <= a.warmup}), flush=True)
        if before is not None:
            # Size of the first update per tensor: checks the optimizer (decay masks, LARS, lr) against ours.
            with torch.no_grad():
                norms = {f'params.{k}': torch.linalg.vector_norm((t - b).double()).item() for (k, t), b in zip(named, before)}
            print(json.dumps({'event': 'update', 'step': 1, 'norms': norms}), flush=True)
    med = statistics.median(times) if times else float('nan')
    print(json.dumps({'event': 'summary', 'median_ms': med, 'crops_per_s': rows / med * 1000 if times else None,
                      'steps': len(times), 'finite': finite,
                      'max_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


if __name__ == '__main__':
    main()
