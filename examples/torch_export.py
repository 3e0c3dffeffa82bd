"""Export a PyTorch MLP to ONNX, get its training graph, and check one step against torch.

    python examples/torch_export.py [OUT_DIR]

Needs PyTorch (optional for lincompile itself): without it, this says so and exits.
"""

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

import lincompile as lc


def main(out: Path) -> int:
    try:
        import torch
    except ImportError:
        print("this example needs PyTorch (pip install torch); skipping")
        return 0
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    model_path = out / "mlp.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter warns that it is legacy
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(2, 64),), str(model_path), dynamo=False,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})

    # The model file -> its training step, as a standard ONNX file.
    model = lc.load_onnx(model_path)
    train = lc.training_graph(model, loss="cross-entropy", optimizer=lc.SGD(0.1, momentum=0.9))
    train_path = lc.save_onnx(train, out / "mlp_train.onnx")
    print(f"wrote {model_path} and {train_path}")
    print("training inputs: ", ", ".join(v.name for v in train.inputs))
    print("training outputs:", ", ".join(v.name for v in train.outputs))

    # One step in onnxruntime vs one step of torch.optim.SGD on the same batch.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 64)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    step = lc.compile(train, target="onnx")
    out_lc = step.run({"x": x, "target": y, "lr": np.float32(0.1), **train.initial_state})
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    opt.step()
    diff = max(np.abs(out_lc[f"{k}.next"] - p.detach().numpy()).max()
               for k, p in net.state_dict().items())
    print(f"loss: lincompile {float(out_lc['loss']):.6f}, torch {loss.item():.6f}; "
          f"max |parameter difference| after one step: {diff:.1e}")
    return 0 if diff < 1e-5 else 1


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="lincompile-"))
    out.mkdir(parents=True, exist_ok=True)
    sys.exit(main(out))
