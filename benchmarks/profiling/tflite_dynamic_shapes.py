import os
import sys
import time

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, "benchmarks")
sys.path.insert(0, ".")
import inference
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from hmsa_keras.export import tflite
from hmsa_keras.export.saved_model import HMSAExportModule

size = (256, 512)
model, _ = inference.build_model(False)
module = HMSAExportModule(model, (1.0,), False)
x = np.random.default_rng(1).integers(0, 256, (1, *size, 3), dtype=np.uint8)
for fixed in (size, None):
    flat = tflite.convert(module, "float32", fixed_size=fixed)
    for resolver in (OpResolverType.AUTO, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES):
        it = Interpreter(model_content=flat, num_threads=2, experimental_op_resolver_type=resolver)
        inp = it.get_input_details()[0]
        if fixed is None:
            it.resize_tensor_input(inp["index"], [1, *size, 3])
        it.allocate_tensors()
        it.set_tensor(inp["index"], x)
        it.invoke()
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            it.set_tensor(inp["index"], x)
            it.invoke()
            ts.append(time.perf_counter() - t)
        print(
            "fixed" if fixed else "dynamic",
            resolver.name,
            "median %.3f s" % np.median(ts),
            flush=True,
        )
