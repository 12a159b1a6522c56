import os
import time

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf


def bench(f, *a, n=7):
    f(*a)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f(*a).numpy()
        ts.append(time.perf_counter() - t)
    return np.median(ts) * 1e3


def dk_taps(x, dy, kh, kw, r):
    ci = tf.shape(x)[-1]
    co = tf.shape(dy)[-1]
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    ph, pw = (kh // 2) * r[0], (kw // 2) * r[1]
    xp = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
    dy2 = tf.reshape(dy, [-1, co])
    taps = []
    for i in range(kh):
        for j in range(kw):
            xs = xp[:, i * r[0] : i * r[0] + h, j * r[1] : j * r[1] + w, :]
            taps.append(tf.matmul(tf.reshape(xs, [-1, ci]), dy2, transpose_a=True))
    return tf.reshape(tf.stack(taps), [kh, kw, ci, co])


for b, h, w, ci, co, r in [
    (2, 16, 32, 320, 256, 18),
    (1, 16, 32, 2048, 256, 6),
    (1, 16, 32, 2048, 256, 12),
    (1, 16, 32, 2048, 256, 18),
    (1, 16, 32, 512, 512, 2),
    (1, 32, 64, 2048, 256, 18),
    (1, 8, 16, 2048, 256, 18),
]:
    x = tf.random.normal([b, h, w, ci])
    dy = tf.random.normal([b, h, w, co])
    k = tf.random.normal([3, 3, ci, co])

    @tf.function
    def tape_dk(x, dy, k):
        with tf.GradientTape() as t:
            t.watch(k)
            y = tf.nn.convolution(x, k, padding="SAME", dilations=r)
        return t.gradient(y, k, output_gradients=dy)

    mm = tf.function(lambda x, dy: dk_taps(x, dy, 3, 3, (r, r)))
    a = tape_dk(x, dy, k)
    c = mm(x, dy)
    print(
        (b, h, w, ci, co, r),
        "dk ms: s2b %.1f taps-matmul %.1f reldiff %.1e"
        % (
            bench(tape_dk, x, dy, k),
            bench(mm, x, dy),
            float(tf.reduce_max(tf.abs(a - c)) / tf.reduce_max(tf.abs(a))),
        ),
        flush=True,
    )
