# PyTorch side of bench/grad-vs-torch: a MobileNet-style block in training mode (1x1 conv, BN, ReLU6,
# depthwise 3x3, BN, ReLU6, 1x1 conv, BN, residual; grouped stride-2 conv with bias, Hardswish; mean
# pool, GELU, Linear), loss sum(out * R); writes inputs, parameters, their gradients and the BN running
# statistics as JSON to argv[1].
import sys, json, torch, numpy as np
torch.manual_seed(0)
N, C, E, H = 4, 8, 24, 8
x = torch.randn(N, C, H, H)
m = torch.nn.Sequential(
  torch.nn.Conv2d(C, E, 1, bias=False), torch.nn.BatchNorm2d(E), torch.nn.ReLU6(),
  torch.nn.Conv2d(E, E, 3, 1, 1, groups=E, bias=False), torch.nn.BatchNorm2d(E), torch.nn.ReLU6(),
  torch.nn.Conv2d(E, C, 1, bias=False), torch.nn.BatchNorm2d(C))
s2 = torch.nn.Sequential(torch.nn.Conv2d(C, C, 3, 2, 1, groups=2, bias=True), torch.nn.Hardswish())
fc = torch.nn.Linear(C, 5)
for p in list(m.parameters()) + list(s2.parameters()) + list(fc.parameters()):
  with torch.no_grad(): p.copy_(torch.randn_like(p) * 0.5)
R = torch.randn(N, 5)
m.train()
y = s2(m(x) + x)
out = fc(torch.nn.functional.gelu(y.mean(dim=(2, 3))))
loss = (out * R).sum()
loss.backward()
params = {n: p for n, p in list(m.named_parameters()) + [('s2.' + k, v) for k, v in s2.named_parameters()] + [('fc.' + k, v) for k, v in fc.named_parameters()]}
json.dump({'x': x.flatten().tolist(), 'R': R.flatten().tolist(), 'loss': loss.item(),
  'params': {k: {'shape': list(v.shape), 'data': v.detach().flatten().tolist(), 'grad': v.grad.flatten().tolist()} for k, v in params.items()},
  'running': {k: v.flatten().tolist() for k, v in m.state_dict().items() if 'running' in k}}, open(sys.argv[1], 'w'))
