"""pytorch-fid's FID InceptionV3 written out in PyTorch from its published architecture (its `FIDInceptionA/C/E_1/E_2`
blocks on torchvision's InceptionV3, with its resize and normalisation), the reference of the parity tests and of
benchmarks/fid.py; pytorch-fid's own module needs torchvision, which does not import beside torch 2.13 here."""
import torch

F = torch.nn.functional


class Conv(torch.nn.Module):
  def __init__(self, cin, cout, **kw):
    super().__init__()
    self.conv = torch.nn.Conv2d(cin, cout, bias=False, **kw)
    self.bn = torch.nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def avg_exclude_pad(x):
  return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class A(torch.nn.Module):
  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = Conv(cin, 64, kernel_size=1)
    self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, kernel_size=1), Conv(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = Conv(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = Conv(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = Conv(96, 96, kernel_size=3, padding=1)
    self.branch_pool = Conv(cin, pool_features, kernel_size=1)

  def forward(self, x):
    return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                      self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                      self.branch_pool(avg_exclude_pad(x))], 1)


class B(torch.nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = Conv(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = Conv(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = Conv(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = Conv(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                      F.max_pool2d(x, 3, 2)], 1)


class C(torch.nn.Module):
  def __init__(self, cin, c7):
    super().__init__()
    row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
    self.branch1x1 = Conv(cin, 192, kernel_size=1)
    self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = Conv(cin, c7, kernel_size=1), Conv(c7, c7, **row), \
        Conv(c7, 192, **col)
    self.branch7x7dbl_1, self.branch7x7dbl_2 = Conv(cin, c7, kernel_size=1), Conv(c7, c7, **col)
    self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5 = Conv(c7, c7, **row), Conv(c7, c7, **col), \
        Conv(c7, 192, **row)
    self.branch_pool = Conv(cin, 192, kernel_size=1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = self.branch7x7dbl_1(x)
    for i in range(2, 6):
      bd = getattr(self, f"branch7x7dbl_{i}")(bd)
    return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(avg_exclude_pad(x))], 1)


class D(torch.nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, kernel_size=1), Conv(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = Conv(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = Conv(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = Conv(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = Conv(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, 2)], 1)


class E(torch.nn.Module):
  def __init__(self, cin, max_pool):
    super().__init__()
    self.max_pool = max_pool
    self.branch1x1 = Conv(cin, 320, kernel_size=1)
    self.branch3x3_1 = Conv(cin, 384, kernel_size=1)
    self.branch3x3_2a = Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = Conv(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = Conv(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = Conv(cin, 192, kernel_size=1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else avg_exclude_pad(x)
    return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class TorchFIDInception(torch.nn.Module):
  """pytorch-fid's InceptionV3 (FID weights, output blocks up to pool3) plus the fc layer, on images in [0, 1]."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = Conv(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = Conv(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = Conv(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = Conv(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = Conv(80, 192, kernel_size=3)
    self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
    self.Mixed_6a = B(288)
    self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = C(768, 128), C(768, 160), C(768, 160), C(768, 192)
    self.Mixed_7a = D(768)
    self.Mixed_7b, self.Mixed_7c = E(1280, False), E(2048, True)
    self.fc = torch.nn.Linear(2048, 1008)

  def forward(self, x01):
    x = F.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False)  # resize_input
    x = 2 * x - 1  # normalize_input
    x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, 2)
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, 2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    pool3 = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
    return pool3, self.fc(pool3)


def random_network(seed=0):
  """The torch network with random weights and batch-norm statistics that keep activations O(1) through its depth,
  and its state dict as numpy arrays."""
  torch.manual_seed(seed)
  net = TorchFIDInception().eval()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.1, 0.1)
        m.running_var.uniform_(0.05, 0.2)
  return net, {k: v.numpy() for k, v in net.state_dict().items()}
