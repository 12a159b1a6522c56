import collections
import glob
import os
import re
import shutil
import sys
import time

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, "benchmarks")
sys.path.insert(0, ".")
import tensorflow as tf
import train_cost as T
from tensorflow.tsl.profiler.protobuf import xplane_pb2

cfg = T.CONFIGS[sys.argv[1]]
data = T.batch(cfg)


def classify(name):
    grad = "bwd" if "gradient" in name.lower() else "fwd"
    mm = re.search(r"(trunk|aspp|decoder|seg_|attn_|attention|logits|SGD|sgd)", name)
    return (grad, mm.group(1) if mm else "other")


for v in sys.argv[2].split(","):
    m = T.build(cfg, v)
    fn = tf.function(m.train_step)
    fn(data)
    fn(data)
    logdir = os.path.join(os.environ.get("HMSA_PROFILE_DIR", "/tmp/hmsa_profile"), f"tr_{v}")
    shutil.rmtree(logdir, ignore_errors=True)
    tf.profiler.experimental.start(logdir)
    t = time.perf_counter()
    for _ in range(2):
        float(fn(data)["loss"])
    wall = (time.perf_counter() - t) / 2
    tf.profiler.experimental.stop()
    path = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]
    xs = xplane_pb2.XSpace()
    xs.ParseFromString(open(path, "rb").read())
    agg = collections.Counter()
    types = collections.Counter()
    for plane in xs.planes:
        md = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if (
                "tf_op" not in line.name.lower()
                and "TensorFlow Ops" not in line.name
                and "tf op" not in line.name.lower()
            ):
                continue
            for ev in line.events:
                name = md.get(ev.metadata_id, "")
                agg[classify(name)] += ev.duration_ps
                types[name.split(":")[-1]] += ev.duration_ps
    print("==", v, "wall/step %.3f s; op time/step %.3f s" % (wall, sum(agg.values()) / 2e12))
    for k, d in sorted(agg.items()):
        print("   ", k, "%.3f s" % (d / 2e12))
    for k, d in types.most_common(12):
        print("   ", k, "%.3f s" % (d / 2e12))
    if v == sys.argv[2].split(",")[0]:
        for plane in xs.planes:
            print("plane", plane.name, [l.name for l in plane.lines][:8])
