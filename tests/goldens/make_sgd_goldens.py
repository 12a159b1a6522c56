"""Writes tests/goldens/sgd_torch_poly.npz: parameters after every step of torch.optim.SGD +
LambdaLR poly stepped once per epoch, the reference's optimiser and schedule
(NVIDIA/semantic-segmentation @ 7726b144c2cc0b8e09c67eabb78f027efdf3f0fa, ``loss/optimizer.py:
get_optimizer`` and ``train.py: main``). Run once with PyTorch (not needed by the tests):

    /work/venv-torch/bin/python tests/goldens/make_sgd_goldens.py

For each case, fixed float32 parameters (a conv kernel and its bias, a BatchNorm gamma and
beta, a dense kernel, and an "attention" kernel that gets no gradient on some steps) receive
fixed random gradients; the file holds the initial parameters, the gradients, the LR of each
step and the parameters after each step. ``tests/test_optimizer.py`` replays the gradients
through ``CoupledSGD`` + ``WarmupPolyDecay(granularity="epoch")``.

Key layout: ``{case}/{name}/init`` [shape], ``{case}/{name}/grads`` [N, *shape] (NaN rows: no
gradient that step), ``{case}/{name}/after`` [N, *shape], ``{case}/lr`` [N] (float64),
``{case}/settings`` [base_lr, momentum, weight_decay, power, epochs, steps_per_epoch].
"""

import math
import os

import numpy as np
import torch

SHAPES = {
    "conv/kernel": (3, 3, 2, 4),
    "conv/bias": (4,),
    "bn/gamma": (4,),
    "bn/beta": (4,),
    "dense/kernel": (4, 3),
    "attention/kernel": (2, 3),
}
NO_GRAD = {"attention/kernel": (2, 3)}  # steps (0-based) where this parameter has no gradient

# name: (base_lr, momentum, weight_decay, poly power, epochs, steps per epoch)
CASES = {
    # the reference's Cityscapes settings (scripts/train_cityscapes.yml + train.py defaults)
    "reference": (5e-3, 0.9, 1e-4, 2.0, 3, 4),
    # strong decay and LR so that a wrong decay or momentum convention is far outside 1e-6
    "strong_decay": (0.1, 0.9, 0.02, 1.0, 4, 3),
}


def run_case(case, base_lr, momentum, weight_decay, power, epochs, steps_per_epoch, rng):
    out = {
        f"{case}/settings": np.array(
            [base_lr, momentum, weight_decay, power, epochs, steps_per_epoch], np.float64
        )
    }
    steps = epochs * steps_per_epoch
    params, grads = {}, {}
    for name, shape in SHAPES.items():
        init = rng.standard_normal(shape).astype(np.float32)
        if name == "bn/gamma":
            init = 1.0 + 0.1 * init
        g = (0.1 * rng.standard_normal((steps, *shape))).astype(np.float32)
        for s in NO_GRAD.get(name, ()):
            g[s] = np.nan
        params[name] = torch.nn.Parameter(torch.from_numpy(init.copy()))
        grads[name] = g
        out[f"{case}/{name}/init"] = init
        out[f"{case}/{name}/grads"] = g
        out[f"{case}/{name}/after"] = np.zeros((steps, *shape), np.float32)
    opt = torch.optim.SGD(
        list(params.values()),
        lr=base_lr,
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=False,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda=lambda e: math.pow(1 - e / epochs, power)
    )
    lrs = []
    step = 0
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            opt.zero_grad(set_to_none=True)
            for name, p in params.items():
                g = grads[name][step]
                p.grad = None if np.isnan(g).any() else torch.from_numpy(g.copy())
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            for name, p in params.items():
                out[f"{case}/{name}/after"][step] = p.detach().numpy()
            step += 1
        scheduler.step()
    out[f"{case}/lr"] = np.array(lrs, np.float64)
    return out


def main():
    rng = np.random.default_rng(20250519)
    data = {
        "torch_version": np.array(torch.__version__),
        "reference_commit": np.array("7726b144c2cc0b8e09c67eabb78f027efdf3f0fa"),
    }
    for case, settings in CASES.items():
        data.update(run_case(case, *settings, rng))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sgd_torch_poly.npz")
    np.savez_compressed(path, **data)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, torch {torch.__version__})")


if __name__ == "__main__":
    main()
