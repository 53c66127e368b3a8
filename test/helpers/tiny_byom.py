"""Writes test/fixtures/tiny-byom.onnx: a tiny torchvision-style classifier as a user would bring it
(Debian's python3-torch 1.13), for the fast end-to-end tests of an imported model (test/import-product).

Two conv + BN + ReLU stages, global average pooling, a Linear classifier: input 'input' [batch, 3, 16, 16]
(ImageNet-normalised, as torchvision expects), output 'logits' [batch, 10]; dynamic batch; opset 13;
exported from eval mode with the BN layers kept (training=PRESERVE, do_constant_folding=False). Seed 0.
Run: /usr/bin/python3 test/helpers/tiny_byom.py test/fixtures/tiny-byom.onnx
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


def main(out):
    torch.manual_seed(0)
    m = Tiny().eval()
    torch.onnx.export(m, torch.rand(2, 3, 16, 16), out, input_names=['input'], output_names=['logits'],
                      dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}}, opset_version=13,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)


if __name__ == '__main__':
    main(sys.argv[1])
