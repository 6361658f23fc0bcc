"""PyTorch counterpart of the `mobilenet_v2` workload (see ../shared/bench/README.md and
`cargo bench --bench workloads -- mobilenet_v2`): torchvision.models.mobilenet_v2(weights=None),
1000 classes, on --size x --size images (224). Inference at batch 1 and 16 (eval mode, no_grad),
then one training step at batch 16 (cross-entropy, backward, SGD momentum 0.9); each the median
of --rounds runs after one warm-up. Prints one JSON object per measurement, like the Rust side.

torchvision is installed beside the existing torch without its dependencies:
    pip download --no-deps torchvision && pip install --no-deps torchvision-*.whl  (and pillow)
Usage: python3 benches/pytorch/mobilenet_v2.py [--rounds 5] [--size 224] [--threads 2]
"""
import json, resource

from setup import start, timed

a, torch = start(lambda p: (p.add_argument("--rounds", type=int, default=5), p.add_argument("--size", type=int, default=224)))
import torchvision

net = torchvision.models.mobilenet_v2(weights=None, num_classes=1000)


def rss():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


net.eval()
for batch in (1, 16):
    x = torch.randn(batch, 3, a.size, a.size)

    def infer():
        with torch.no_grad():
            net(x)

    ms = timed(infer, a.rounds)
    print(json.dumps({"workload": "mobilenet_v2", "lib": "torch", "mode": "inference", "batch": batch, "size": a.size,
                      "ms": round(ms, 2), "images_per_second": round(1000 * batch / ms, 2), "peak_rss_mb": rss()}),
          flush=True)

net.train()
sgd = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(16, 3, a.size, a.size)
y = torch.tensor([(i * 37) % 1000 for i in range(16)])


def step():
    loss = torch.nn.functional.cross_entropy(net(x), y)
    sgd.zero_grad()
    loss.backward()
    sgd.step()


print(json.dumps({"workload": "mobilenet_v2", "lib": "torch", "mode": "train", "batch": 16, "size": a.size,
                  "train_step_ms": round(timed(step, a.rounds), 2), "peak_rss_mb": rss()}), flush=True)
