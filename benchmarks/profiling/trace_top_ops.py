import collections
import glob
import os
import sys

from tensorflow.tsl.profiler.protobuf import xplane_pb2

for v in sys.argv[1:]:
    path = glob.glob(
        os.path.join(
            os.environ.get("HMSA_PROFILE_DIR", "/tmp/hmsa_profile"), f"tr_{v}", "**", "*.xplane.pb"
        ),
        recursive=True,
    )[0]
    xs = xplane_pb2.XSpace()
    xs.ParseFromString(open(path, "rb").read())
    p = xs.planes[0]
    md = {k: v.name for k, v in p.event_metadata.items()}
    durs = collections.Counter()
    tot = 0
    for line in p.lines:
        if not line.name.startswith("tf_Compute"):
            continue
        for ev in line.events:
            n = md[ev.metadata_id]
            if ":" not in n:
                continue
            durs[n] += ev.duration_ps
            tot += ev.duration_ps
    print("==", v, "op time per step %.2f s" % (tot / 2e12))
    for k, d in durs.most_common(int(sys.argv[0] and 14)):
        print("   %.3f" % (d / 2e12), k[:130])
