"""Weight-decay semantics and LR-schedule granularity, checked step by step.

- ``coupled`` + ``epoch`` against a PyTorch golden (``tests/goldens/sgd_torch_poly.npz``, made
  once by ``tests/goldens/make_sgd_goldens.py`` with ``torch.optim.SGD`` + ``LambdaLR`` poly,
  the reference's ``loss/optimizer.py``): parameters after every step within 1e-6.
- ``coupled`` + ``iteration`` against a NumPy model of ``torch.optim.SGD`` (itself checked
  against the golden).
- The same code path under LossScaleOptimizer, MirroredStrategy (subprocess), frozen layers,
  ``tf.train.Checkpoint`` save/restore and ``.keras`` saving.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "goldens" / "sgd_torch_poly.npz"
TOLERANCE = 1e-6


# ------------------------------------------------------------------------ independent models
def torch_sgd_numpy(init, grads, lrs, momentum, weight_decay):
    """torch.optim.SGD(momentum, weight_decay, dampening=0, nesterov=False) in float64 NumPy:
    d = g + wd * w; buf = d at the first step with a gradient, else mu * buf + d; w -= lr * buf.
    ``grads`` [N, *shape] with NaN rows meaning "no gradient this step" (parameter skipped).
    Returns [N, *shape] parameters after each step."""
    w = init.astype(np.float64)
    buf = None
    out = []
    for g, lr in zip(grads, lrs):
        if not np.isnan(g).any():
            d = g.astype(np.float64) + weight_decay * w
            buf = d if buf is None else momentum * buf + d
            w = w - lr * buf
        out.append(w.copy())
    return np.stack(out)


def poly_lr_numpy(
    step, base, total, power, warmup=0, granularity="iteration", steps_per_epoch=None
):
    """The schedule written out in plain Python (see WarmupPolyDecay's docstring)."""
    if granularity == "epoch":
        epoch = step // steps_per_epoch
        lr = base * max(1.0 - epoch / (total / steps_per_epoch), 0.0) ** power
        return lr * min(1.0, (step + 1) / warmup) if warmup else lr
    if step < warmup:
        return base * (step + 1) / warmup
    return base * max(1.0 - (step - warmup) / (total - warmup), 0.0) ** power


@pytest.fixture(scope="module")
def golden():
    data = np.load(GOLDEN)
    return {k: data[k] for k in data.files}


def _case(golden, case):
    base_lr, momentum, wd, power, epochs, spe = golden[f"{case}/settings"].tolist()
    names = sorted(
        {
            k.split("/", 1)[1].rsplit("/", 1)[0]
            for k in golden
            if k.startswith(case + "/") and k.endswith("/init")
        }
    )
    return dict(
        base_lr=base_lr,
        momentum=momentum,
        wd=wd,
        power=power,
        epochs=int(epochs),
        spe=int(spe),
        names=names,
        lrs=golden[f"{case}/lr"],
        init={n: golden[f"{case}/{n}/init"] for n in names},
        grads={n: golden[f"{case}/{n}/grads"] for n in names},
        after={n: golden[f"{case}/{n}/after"] for n in names},
    )


def _replay(c, optimizer, check_lr=True):
    """Applies the golden gradients step by step; returns {name: [N, *shape]} and the LRs used."""
    import keras

    variables = {n: keras.Variable(c["init"][n], name=n.replace("/", "_")) for n in c["names"]}
    optimizer.build(list(variables.values()))
    out = {n: [] for n in c["names"]}
    lrs = []
    for k in range(len(c["lrs"])):
        lrs.append(float(optimizer.learning_rate))
        pairs = [
            (c["grads"][n][k], v)
            for n, v in variables.items()
            if not np.isnan(c["grads"][n][k]).any()
        ]
        optimizer.apply_gradients(pairs)
        for n, v in variables.items():
            out[n].append(np.asarray(v.numpy()))
    return {n: np.stack(v) for n, v in out.items()}, np.array(lrs)


def _max_diff(got, want):
    return max(float(np.abs(got[n] - want[n]).max()) for n in want)


def _reference_optimizer(c, **overrides):
    from hmsa_keras.training.optimizer import build_optimizer

    kwargs = dict(
        momentum=c["momentum"],
        weight_decay=c["wd"],
        lr_power=c["power"],
        weight_decay_mode="coupled",
        lr_schedule_granularity="epoch",
        steps_per_epoch=c["spe"],
    )
    kwargs.update(overrides)
    return build_optimizer(None, c["base_lr"], c["epochs"] * c["spe"], **kwargs)


# ------------------------------------------------------------------------------- the golden
def test_golden_file_is_what_the_script_says(golden):
    assert str(golden["reference_commit"]) == "7726b144c2cc0b8e09c67eabb78f027efdf3f0fa"
    c = _case(golden, "reference")
    assert (c["base_lr"], c["momentum"], c["wd"], c["power"]) == (5e-3, 0.9, 1e-4, 2.0)
    assert {"bn/gamma", "bn/beta", "conv/bias"} <= set(c["names"])
    # the LR really is stepped per epoch: constant within an epoch, (1 - e/E)^p across
    want = [
        c["base_lr"] * (1 - (k // c["spe"]) / c["epochs"]) ** c["power"]
        for k in range(len(c["lrs"]))
    ]
    np.testing.assert_allclose(c["lrs"], want, rtol=1e-12)


@pytest.mark.parametrize("case", ["reference", "strong_decay"])
def test_numpy_torch_model_reproduces_golden(golden, case):
    c = _case(golden, case)
    for n in c["names"]:
        got = torch_sgd_numpy(c["init"][n], c["grads"][n], c["lrs"], c["momentum"], c["wd"])
        np.testing.assert_allclose(got, c["after"][n], atol=TOLERANCE, rtol=0, err_msg=n)


@pytest.mark.parametrize("case", ["reference", "strong_decay"])
def test_coupled_epoch_mode_reproduces_torch_step_by_step(golden, case):
    c = _case(golden, case)
    got, lrs = _replay(c, _reference_optimizer(c))
    np.testing.assert_allclose(lrs, c["lrs"], rtol=1e-7)
    for n in c["names"]:
        for k in range(len(c["lrs"])):
            np.testing.assert_allclose(
                got[n][k],
                c["after"][n][k],
                atol=TOLERANCE,
                rtol=0,
                err_msg=f"{case}: {n} after step {k + 1}",
            )
    # the skipped parameter really was skipped: no decay, no momentum on its no-gradient steps
    attention = got["attention/kernel"]
    skipped = [k for k in range(len(c["lrs"])) if np.isnan(c["grads"]["attention/kernel"][k]).any()]
    assert skipped and all(np.array_equal(attention[k], attention[k - 1]) for k in skipped)
    diff = _max_diff(got, c["after"])
    print(f"{case}: max |ours - torch| over {len(c['lrs'])} steps = {diff:.3g}")


def test_other_conventions_are_far_from_the_golden(golden):
    """The golden discriminates: Keras' velocity form (LR inside the velocity) and the decoupled
    mode both miss PyTorch's trajectory by far more than the tolerance."""
    import keras

    c = _case(golden, "reference")
    from hmsa_keras.training.optimizer import WarmupPolyDecay

    schedule = WarmupPolyDecay(
        c["base_lr"],
        c["epochs"] * c["spe"],
        c["power"],
        granularity="epoch",
        steps_per_epoch=c["spe"],
    )
    # Keras SGD fed the torch-coupled gradient g + wd * w: right decay, wrong momentum convention
    opt = keras.optimizers.SGD(schedule, momentum=c["momentum"])
    variables = {n: keras.Variable(c["init"][n]) for n in c["names"]}
    opt.build(list(variables.values()))
    out = {n: [] for n in c["names"]}
    for k in range(len(c["lrs"])):
        pairs = [
            (c["grads"][n][k] + c["wd"] * v.numpy(), v)
            for n, v in variables.items()
            if not np.isnan(c["grads"][n][k]).any()
        ]
        opt.apply_gradients(pairs)
        for n, v in variables.items():
            out[n].append(np.asarray(v.numpy()))
    velocity_diff = _max_diff({n: np.stack(v) for n, v in out.items()}, c["after"])
    decoupled, _ = _replay(c, _reference_optimizer(c, weight_decay_mode="decoupled"))
    decoupled_diff = _max_diff(decoupled, c["after"])
    iteration, _ = _replay(c, _reference_optimizer(c, lr_schedule_granularity="iteration"))
    iteration_diff = _max_diff(iteration, c["after"])
    print(
        f"max |x - torch|: Keras velocity {velocity_diff:.3g}, decoupled {decoupled_diff:.3g}, "
        f"per-iteration poly {iteration_diff:.3g}"
    )
    assert min(velocity_diff, decoupled_diff, iteration_diff) > 10 * TOLERANCE


# --------------------------------------------------------------------------- iteration mode
def test_coupled_iteration_mode_matches_numpy_torch_model():
    from hmsa_keras.training.optimizer import build_optimizer

    rng = np.random.default_rng(11)
    steps, base, power, warmup, mu, wd = 14, 0.08, 0.9, 3, 0.9, 0.01
    lrs = [poly_lr_numpy(k, base, steps, power, warmup) for k in range(steps)]
    names = ["conv/kernel", "bn/gamma", "conv/bias"]
    c = dict(
        names=names,
        lrs=lrs,
        init={n: rng.standard_normal((3, 2)).astype(np.float32) for n in names},
        grads={n: (0.1 * rng.standard_normal((steps, 3, 2))).astype(np.float32) for n in names},
    )
    opt = build_optimizer(
        None,
        base,
        steps,
        momentum=mu,
        weight_decay=wd,
        lr_power=power,
        warmup_steps=warmup,
        weight_decay_mode="coupled",
    )
    got, used = _replay(c, opt)
    np.testing.assert_allclose(used, lrs, rtol=1e-6)
    want = {n: torch_sgd_numpy(c["init"][n], c["grads"][n], lrs, mu, wd) for n in names}
    assert _max_diff(got, want) < TOLERANCE


@pytest.mark.parametrize(
    "power, warmup, spe, total",
    [(1.0, 0, 4, 20), (2.0, 0, 3, 12), (0.9, 6, 5, 15), (2.0, 0, 4, 10)],
)
def test_epoch_schedule_matches_formula(power, warmup, spe, total):
    import keras

    from hmsa_keras.training.optimizer import WarmupPolyDecay

    base = 0.01
    schedule = WarmupPolyDecay(
        base, total, power=power, warmup_steps=warmup, granularity="epoch", steps_per_epoch=spe
    )
    for t in list(range(total + 3)):
        want = poly_lr_numpy(t, base, total, power, warmup, "epoch", spe)
        np.testing.assert_allclose(
            float(schedule(t)), want, rtol=1e-7, atol=1e-12, err_msg=f"step {t}"
        )
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(again, WarmupPolyDecay) and again.get_config() == schedule.get_config()
    assert again.get_config()["granularity"] == "epoch"


def test_iteration_schedule_unchanged_by_new_arguments():
    """The default (iteration) path is the pre-existing float32 formula, bit for bit."""
    import tensorflow as tf

    from hmsa_keras.training.optimizer import WarmupPolyDecay

    base, total, power, warmup = 0.05, 256, 1.0, 20
    schedule = WarmupPolyDecay(base, total, power, warmup)
    for t in (0, 5, 19, 20, 21, 100, 255):
        step = tf.constant(float(t))
        progress = tf.clip_by_value((step - warmup) / float(total - warmup), 0.0, 1.0)
        poly = base * (1.0 - progress) ** power
        want = base * (step + 1.0) / warmup if t < warmup else poly
        assert float(schedule(t)) == float(want), t


def test_bad_settings_raise_clear_errors():
    from hmsa_keras.training.optimizer import CoupledSGD, WarmupPolyDecay, build_optimizer

    with pytest.raises(ValueError, match="weight_decay_mode='l2'.*coupled, decoupled"):
        build_optimizer(None, 0.1, 10, weight_decay_mode="l2")
    with pytest.raises(ValueError, match="lr_schedule_granularity='step'"):
        build_optimizer(None, 0.1, 10, lr_schedule_granularity="step")
    with pytest.raises(ValueError, match="needs steps_per_epoch >= 1"):
        WarmupPolyDecay(0.1, 10, granularity="epoch")
    with pytest.raises(ValueError, match="momentum must be in"):
        CoupledSGD(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="l2="):
        CoupledSGD(0.1, weight_decay=1e-4)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        build_optimizer(None, 0.1, 10, weight_decay=-1.0)


# ------------------------------------------------------------------------- model-level uses
def _sce():
    """Sparse softmax cross-entropy on logits."""
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _small_model():
    import keras

    x = inp = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, name="conv_bias")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(2, 1, use_bias=False, name="frozen_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(3, name="dense")(x)
    return keras.Model(inp, x)


def test_coupled_decays_every_trainable_variable_including_bn_and_bias():
    import tensorflow as tf

    from hmsa_keras.training.optimizer import build_optimizer

    model = _small_model()
    for v in model.weights:
        v.assign(np.full(v.shape, 2.0, np.float32))
    lr, wd = 0.5, 0.1
    opt = build_optimizer(
        model, lr, total_steps=10, momentum=0.9, weight_decay=wd, weight_decay_mode="coupled"
    )
    variables = model.trainable_variables
    assert {"bn/gamma", "bn/beta", "conv_bias/bias", "dense/bias"} <= {v.path for v in variables}
    opt.apply_gradients([(tf.zeros_like(v), v) for v in variables])  # first step: buf = wd * w
    for v in variables:
        np.testing.assert_allclose(v.numpy(), 2.0 - lr * wd * 2.0, rtol=1e-6, err_msg=v.path)


def test_frozen_layer_gets_no_update_and_no_decay():
    from hmsa_keras.training.optimizer import build_optimizer

    model = _small_model()
    rng = np.random.default_rng(0)
    for v in model.weights:  # nonzero everywhere, so decay moves even a zero-gradient bias
        v.assign(1.0 + 0.1 * rng.standard_normal(v.shape).astype(np.float32))
    model.get_layer("frozen_conv").trainable = False
    frozen = model.get_layer("frozen_conv").kernel.numpy().copy()
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    opt = build_optimizer(
        model,
        0.1,
        4,
        weight_decay=0.1,
        weight_decay_mode="coupled",
        lr_schedule_granularity="epoch",
        steps_per_epoch=2,
    )
    model.compile(optimizer=opt, loss=_sce())
    model.fit(
        rng.standard_normal((4, 6, 6, 3)).astype(np.float32),
        rng.integers(0, 3, 4),
        batch_size=2,
        epochs=1,
        verbose=0,
    )
    np.testing.assert_array_equal(model.get_layer("frozen_conv").kernel.numpy(), frozen)
    assert all(not np.allclose(v.numpy(), before[v.path]) for v in model.trainable_variables)
    assert int(opt.iterations.numpy()) == 2


def test_loss_scale_optimizer_applies_the_same_update():
    import keras

    from hmsa_keras.training.optimizer import build_optimizer

    rng = np.random.default_rng(5)
    init = rng.standard_normal((4, 3)).astype(np.float32)
    grads = (0.1 * rng.standard_normal((5, 4, 3))).astype(np.float32)

    def run(loss_scaled):
        v = keras.Variable(init)
        opt = build_optimizer(
            None,
            0.05,
            6,
            weight_decay=0.01,
            lr_power=2.0,
            weight_decay_mode="coupled",
            lr_schedule_granularity="epoch",
            steps_per_epoch=2,
        )
        if loss_scaled:
            opt = keras.optimizers.LossScaleOptimizer(opt, initial_scale=2.0**12)
        opt.build([v])
        for g in grads:
            scale = float(opt.dynamic_scale.numpy()) if loss_scaled else 1.0
            opt.apply_gradients([(g * scale, v)])
        return v.numpy()

    np.testing.assert_allclose(run(True), run(False), atol=1e-7)


def test_mixed_float16_training_step_runs_with_float32_buffers():
    import keras

    from hmsa_keras.training.optimizer import build_optimizer

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _small_model()
        opt = keras.optimizers.LossScaleOptimizer(
            build_optimizer(
                model,
                0.01,
                4,
                weight_decay_mode="coupled",
                lr_schedule_granularity="epoch",
                steps_per_epoch=2,
            )
        )
        model.compile(optimizer=opt, loss=_sce())
        rng = np.random.default_rng(1)
        model.fit(
            rng.standard_normal((4, 6, 6, 3)).astype(np.float32),
            rng.integers(0, 3, 4),
            batch_size=2,
            epochs=1,
            verbose=0,
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    buffers = opt.inner_optimizer.momentum_buffers
    assert buffers and all(b.dtype == "float32" for b in buffers)
    assert any(float(np.abs(b.numpy()).max()) > 0 for b in buffers)


def test_checkpoint_restores_momentum_buffers_and_continues_identically(golden, tmp_path):
    """3 steps, save, restore into a fresh optimizer, 9 more steps == 12 uninterrupted steps."""
    import keras
    import tensorflow as tf

    c = _case(golden, "strong_decay")
    names = c["names"]
    half = 3

    def fresh():
        variables = [keras.Variable(c["init"][n]) for n in names]
        opt = _reference_optimizer(c)
        opt.build(variables)
        return variables, opt

    def steps(variables, opt, ks):
        for k in ks:
            opt.apply_gradients(
                [
                    (c["grads"][n][k], v)
                    for n, v in zip(names, variables)
                    if not np.isnan(c["grads"][n][k]).any()
                ]
            )

    variables, opt = fresh()
    steps(variables, opt, range(half))
    path = tf.train.Checkpoint(optimizer=opt, variables=variables).save(str(tmp_path / "ckpt"))
    saved = [b.numpy().copy() for b in opt.momentum_buffers]
    variables2, opt2 = fresh()
    tf.train.Checkpoint(optimizer=opt2, variables=variables2).restore(path).assert_consumed()
    assert int(opt2.iterations.numpy()) == half
    for a, b in zip(saved, opt2.momentum_buffers):
        np.testing.assert_array_equal(b.numpy(), a)
    steps(variables2, opt2, range(half, len(c["lrs"])))
    for n, v in zip(names, variables2):
        np.testing.assert_allclose(v.numpy(), c["after"][n][-1], atol=TOLERANCE, rtol=0, err_msg=n)


def test_keras_file_round_trip_keeps_optimizer_schedule_and_buffers(tmp_path):
    import keras

    from hmsa_keras.training.optimizer import CoupledSGD, WarmupPolyDecay, build_optimizer

    model = _small_model()
    optimizer = build_optimizer(
        model,
        0.02,
        8,
        momentum=0.9,
        weight_decay=1e-3,
        lr_power=2.0,
        weight_decay_mode="coupled",
        lr_schedule_granularity="epoch",
        steps_per_epoch=2,
    )
    model.compile(optimizer=optimizer, loss=_sce())
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((6, 6, 6, 3)).astype(np.float32), rng.integers(0, 3, 6)
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    opt = loaded.optimizer
    assert isinstance(opt, CoupledSGD) and isinstance(opt._learning_rate, WarmupPolyDecay)
    assert opt.get_config() == model.optimizer.get_config()
    assert opt.get_config()["l2"] == 1e-3 and opt._learning_rate.granularity == "epoch"
    assert int(opt.iterations.numpy()) == 3
    for a, b in zip(model.optimizer.momentum_buffers, opt.momentum_buffers):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # and training continues identically from the file
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=2, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)


# ------------------------------------------------------------------------------ distributed
@pytest.mark.slow
def test_mirrored_strategy_with_loss_scaling_matches_numpy_torch_model(tmp_path):
    helpers = REPO / "tests" / "helpers"
    out = tmp_path / "out.npz"
    env = dict(
        os.environ,
        PYTHONPATH=f"{helpers}{os.pathsep}{REPO}",
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
    )
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, str(helpers / "optimizer_driver.py"), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    r = dict(np.load(out))
    assert int(r["replicas"]) == 2 and float(r["scale"]) == 1024.0
    base, mu, wd, power, epochs, spe = r["settings"].tolist()
    steps = len(r["lrs"])
    lrs = [poly_lr_numpy(k, base, epochs * spe, power, 0, "epoch", int(spe)) for k in range(steps)]
    np.testing.assert_allclose(r["lrs"], lrs, rtol=1e-7)
    for n in ("kernel", "gamma", "bias"):
        summed = r[f"{n}/grads"].sum(axis=1)  # the all-reduce of the two replicas' gradients
        want = torch_sgd_numpy(r[f"{n}/init"], summed, lrs, mu, wd)
        np.testing.assert_allclose(r[f"{n}/after"], want, atol=TOLERANCE, rtol=0, err_msg=n)
