import collections
import os
import re
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, "benchmarks")
sys.path.insert(0, ".")
import common
import tensorflow as tf
import train_cost as T
from tensorflow.python.framework import ops as tfops


def parts(cf):
    g = cf.graph
    agg = collections.Counter()
    for op in g.get_operations():
        if op.type in common._BACKPROP:
            f = common._backprop_flops(op)
        else:
            try:
                f = tfops.get_stats_for_node_def(g, op.node_def, "flops").value or 0
            except ValueError:
                f = 0
        if not f:
            continue
        n = op.name
        m = re.search(r"(attn_|attention)", n)
        agg["attention head" if m else "rest"] += f
    return agg


for name in sys.argv[1:]:
    cfg = T.CONFIGS[name]
    h, w = cfg["crop"]
    b = cfg["batch"]
    for v in ("single", "hierarchical"):
        m = T.build(cfg, v)
        specs = (tf.TensorSpec([b, h, w, 3]), tf.TensorSpec([b, h, w], tf.int32))
        a = parts(tf.function(m.train_step).get_concrete_function(specs))
        print(name, v, {k: round(x / 1e9, 1) for k, x in a.items()}, flush=True)
