"""PyTorch counterpart of the `cnn_int8` workload: the seed CNN trained --epochs (Adam 1e-3, batch 32),
then PyTorch's eager-mode static quantization (torch.ao.quantization): QuantStub/DeQuantStub around the
model, conv+ReLU pairs fused (fuse_modules), the engine's default qconfig (x86: HistogramObserver on
activations, per-channel min-max on weights), prepare, calibration on the first --calibration training
images in batches of 100, convert. One JSON line, as `cargo bench --bench workloads -- cnn_int8`:
    {"workload": "cnn_int8", "lib": "torch", "fp32_accuracy", "int8_accuracy", "fp32_images_per_s",
     "int8_images_per_s", "fp32_bytes", "int8_bytes", ...}
The byte counts are the files torch.save writes for each state dict.
Usage: python3 benches/pytorch/cnn_int8.py [--epochs 5] [--calibration 1000] [--data DIR] [--threads 2]
"""
import io, json

from setup import start
from fashion import accuracy, fit, images_per_s, load


def args(p):
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--calibration", type=int, default=1000)
    p.add_argument("--engine", default="x86", help="torch.backends.quantized.engine (x86, fbgemm, onednn)")
    p.add_argument("--data", default=None)


a, torch = start(args)
import torch.nn as nn
import torch.ao.quantization as tq


def saved_bytes(model):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


class Quantizable(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.quant, self.body, self.dequant = tq.QuantStub(), body, tq.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.body(self.quant(x)))


xtr, ytr, xte, yte = load(a, torch, (1, 28, 28))
body = nn.Sequential(
    nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(3136, 10))
fit(body, xtr, ytr, a.epochs)
fp32_acc, fp32_speed, fp32_bytes = accuracy(body, xte, yte), images_per_s(body, xte), saved_bytes(body)

torch.backends.quantized.engine = a.engine
model = Quantizable(body).eval()
tq.fuse_modules(model.body, [["0", "1"], ["3", "4"]], inplace=True)
model.qconfig = tq.get_default_qconfig(a.engine)
tq.prepare(model, inplace=True)
with torch.no_grad():
    for i in range(0, a.calibration, 100):
        model(xtr[i:i + 100])
tq.convert(model, inplace=True)
int8_acc, int8_speed, int8_bytes = accuracy(model, xte, yte), images_per_s(model, xte), saved_bytes(model)
print(json.dumps({
    "workload": "cnn_int8", "lib": "torch", "engine": a.engine, "epochs": a.epochs,
    "calibration_images": a.calibration,
    "fp32_accuracy": round(fp32_acc, 4), "int8_accuracy": round(int8_acc, 4),
    "fp32_images_per_s": round(fp32_speed), "int8_images_per_s": round(int8_speed),
    "speedup": round(int8_speed / fp32_speed, 2),
    "fp32_bytes": fp32_bytes, "int8_bytes": int8_bytes, "size_ratio": round(fp32_bytes / int8_bytes, 2)}), flush=True)
