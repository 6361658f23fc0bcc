"""Writes mobilenet_reference.json: torchvision's MobileNetV2 (10 classes) in
evaluation mode, every parameter and buffer set by a formula of its name's
rank among the sorted state_dict names and its element index (no weights
are stored), on a deterministic (2, 3, 64, 64) input: the logits, in float64.
../mobilenet.rs sets its own model by the same formula and compares.

Run here:  PYTHONPATH=<unzipped torchvision wheel> python3 make_mobilenet.py
(`pip download --no-deps torchvision`, unzip; it needs torch and pillow)."""
import json, math
import torch
import torchvision

torch.set_default_dtype(torch.float64)


def values(k, shape):
    n = math.prod(shape)
    return torch.tensor([math.sin(0.37 * i + 0.11 + k) for i in range(n)]).reshape(shape)


def formula(name, k, shape):
    v = values(k, shape)
    if name.endswith("running_mean"):
        return 0.1 * v
    if name.endswith("running_var"):
        return 1.0 + 0.25 * (v + 1.0)
    if len(shape) == 4:  # convolution weights, He-scaled
        return v * 2.0 / math.sqrt(math.prod(shape[1:]))
    if len(shape) == 2:  # the classifier
        return v / math.sqrt(shape[1])
    if name.endswith("weight"):  # BatchNorm scale
        return 1.0 + 0.1 * v
    return 0.1 * v  # biases


model = torchvision.models.mobilenet_v2(weights=None, num_classes=10).double().eval()
state = model.state_dict()
with torch.no_grad():
    for k, name in enumerate(sorted(state)):
        if name.endswith("num_batches_tracked"):
            continue
        state[name].copy_(formula(name, k, tuple(state[name].shape)))
x = values(0, (2, 3, 64, 64))
with torch.no_grad():
    logits = model(x)
    features = model.features(x)
json.dump({"torch": torch.__version__, "torchvision": torchvision.__version__, "logits": logits.reshape(-1).tolist(),
           "features_sum": float(features.sum()), "names": sorted(state)},
          open("mobilenet_reference.json", "w"), indent=1)
print("wrote mobilenet_reference.json", logits[0, :4].tolist())
