"""Writes test/fixtures/tiny-byom.onnx: a tiny torchvision-style classifier as a user would bring it
(Debian's python3-torch 1.13), for the fast end-to-end tests of an imported model (test/import-product).

Two conv + BN + ReLU stages, global average pooling, a Linear classifier: input 'input' [batch, 3, 16, 16]
(ImageNet-normalised, as torchvision expects), output 'logits' [batch, 10]; dynamic batch; opset 13;
exported from eval mode with the BN layers kept (training=PRESERVE, do_constant_folding=False). Seed 0.
Run: /usr/bin/python3 test/helpers/tiny_byom.py test/fixtures/tiny-byom.onnx
With --fixed-batch: the same model exported without dynamic_axes (torch's default: batch fixed at 1),
test/fixtures/tiny-byom-b1.onnx, which the import refuses.
"""
import sys

import torch


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False), torch.nn.BatchNorm2d(12), torch.nn.ReLU(inplace=True),
        )
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(12, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def main(out, fixed):
    torch.manual_seed(0)
    m = Tiny().eval()
    axes = {} if fixed else dict(dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})
    torch.onnx.export(m, torch.rand(1 if fixed else 2, 3, 16, 16), out, input_names=['input'], output_names=['logits'],
                      opset_version=13, training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, **axes)


if __name__ == '__main__':
    main(sys.argv[1], '--fixed-batch' in sys.argv[2:])
